"""`train predict`, the Python API, Grad-CAM and the video path, with a tiny random-weight model.

The model is untrained: these tests check structure (faces found, boxes, probabilities,
files written, errors reported with the rest of the batch processed), never which label wins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.images import encode

SIZE = 32
FER = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def tiny_checkpoint(run_dir: Path, channels: int = 1) -> Path:
    import torch

    from train.checkpoint import save_checkpoint
    from train.models.registry import build_model
    from train.transforms import Preprocess

    torch.manual_seed(0)
    model = build_model("vgg", num_classes=7, in_chans=channels, input_size=SIZE, width=0.125, fc_dim=16,
                        stages=(64, 128))
    side = {"labels": {"label_set": "fer2013", "label_names": list(FER), "preset": "7", "class_names": list(FER)},
            "preprocess": Preprocess.default_for(SIZE, channels).to_dict()}
    return save_checkpoint(run_dir, model, side)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    tiny_checkpoint(d)
    return d


@pytest.fixture(scope="module")
def astronaut():
    from skimage.data import astronaut

    return astronaut()


@pytest.fixture(scope="module")
def predictor(ckpt):
    import torch

    torch.set_num_threads(1)
    from train.api import EmotionPredictor

    return EmotionPredictor.from_checkpoint(ckpt, fallback=False)  # "auto": MTCNN when installed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, astronaut):
    d = tmp_path_factory.mktemp("in")
    (d / "sub").mkdir()
    (d / "sub" / "astronaut.png").write_bytes(encode(astronaut))
    (d / "blank.png").write_bytes(encode(np.full((120, 160), 128, np.uint8)))
    return d


def _check_face(f, shape):
    assert f.label in FER
    assert 0.0 <= f.prob <= 1.0
    assert len(f.topk) == 3 and f.topk[0] == (f.label, f.prob)
    assert [p for _, p in f.topk] == sorted((p for _, p in f.topk), reverse=True)
    x, y, w, h = f.box
    assert 0 <= x and 0 <= y and x + w <= shape[1] and y + h <= shape[0] and w > 20 and h > 20


def test_api_astronaut_one_face(predictor, astronaut):
    faces = predictor.predict(astronaut)
    assert len(faces) == 1
    _check_face(faces[0], astronaut.shape)
    x, y, w, h = faces[0].box
    assert 120 < x + w / 2 < 260 and 20 < y + h / 2 < 160  # her face, not the flag or the suit
    top = predictor.top_k(astronaut, k=5)
    assert len(top) == 5 and abs(sum(p for _, p in predictor.top_k(astronaut, k=7)) - 1) < 1e-5


def test_api_batch_matches_single_and_no_face(predictor, astronaut):
    blank = np.full((100, 100, 3), 200, np.uint8)
    batch = predictor.predict_batch([astronaut, blank, astronaut])
    assert [len(b) for b in batch] == [1, 0, 1]
    single = predictor.predict(astronaut)[0]
    assert batch[0][0].label == single.label and batch[0][0].prob == pytest.approx(single.prob, abs=1e-5)
    assert predictor.top_k(blank) == []


def test_api_detector_none_and_inputs_of_every_kind(ckpt, inputs, astronaut):
    from PIL import Image

    from train.api import EmotionPredictor, PredictError

    p = EmotionPredictor.from_checkpoint(ckpt, detector="none")
    noise = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)  # a synthetic "crop"
    for src in (noise, Image.fromarray(noise), encode(noise)):
        (f,) = p.predict(src)
        assert f.box == (0, 0, 48, 48) and f.face_score is None
    assert p.predict(inputs / "sub" / "astronaut.png")[0].box == (0, 0, 512, 512)
    with pytest.raises(PredictError, match="detector 'dlib' unknown"):
        EmotionPredictor.from_checkpoint(ckpt, detector="dlib")
    with pytest.raises(PredictError, match="retinaface"):
        EmotionPredictor.from_checkpoint(ckpt, detector="retinaface")
    with pytest.raises(PredictError, match="cannot use dict {} as an image"):
        p.predict({})
    with pytest.raises(PredictError, match="a folder; pass its image files"):  # not "no such file"
        p.predict(inputs / "sub")
    with pytest.raises(PredictError, match="with pixels"):  # was a ZeroDivisionError
        p.predict(np.zeros((0, 0), np.uint8))


def test_bad_inputs_reported_and_batch_goes_on(predictor, inputs, tmp_path):
    from train.predict import PredictConfig, run

    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.jpg").write_text("<html>not a jpeg</html>")
    good = (inputs / "sub" / "astronaut.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 3])
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "notes.txt"), str(tmp_path / "fake.jpg"), str(tmp_path / "truncated.png"),
            str(tmp_path / "missing.png"), str(tmp_path / "empty"), str(inputs)]
    recs = {Path(r.source).name: r for r in run(predictor, args, PredictConfig())}
    assert recs["missing.png"].status == "error" and "no such file" in recs["missing.png"].message
    assert recs["empty"].status == "error" and "no image or video" in recs["empty"].message
    for name in ("notes.txt", "fake.jpg", "truncated.png"):
        assert recs[name].status == "error" and "not a readable image" in recs[name].message, name
    assert recs["blank.png"].status == "no_face" and "no face found" in recs["blank.png"].message
    assert recs["astronaut.png"].status == "ok" and len(recs["astronaut.png"].faces) == 1


def test_gradcam_shape_range_and_overlays(predictor, astronaut, inputs, tmp_path):
    from train.gradcam import grad_cam, overlay
    from train.predict import PredictConfig, run

    from features.faces import crop_face, detect_faces

    # the random model's map at this crop is not flat (at some crops ReLU leaves all zeros)
    face = type("F", (), {"crop": crop_face(astronaut, detect_faces(astronaut, "haar")[0], pad=0.2)})
    x = predictor.inputs([face.crop])
    cam, cls = grad_cam(predictor.model, x)
    assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.max() == pytest.approx(1.0)
    assert cls == int(predictor.model(x).argmax())
    assert all(p.grad is None for p in predictor.model.parameters())  # no gradients left behind
    ov = overlay(face.crop, cam)
    assert ov.shape == (*face.crop.shape[:2], 3) and ov.dtype == np.uint8
    recs = run(predictor, [str(inputs)], PredictConfig(gradcam_dir=tmp_path / "cam"))
    (ok,) = [r for r in recs if r.status == "ok"]
    (png,) = ok.gradcam
    assert Path(png).is_file() and Path(png).read_bytes()[:4] == b"\x89PNG" and ok.faces[0].label in png


def _write_video(path: Path, frames: list[np.ndarray], fourcc: str = "MJPG", fps: float = 10.0) -> Path:
    import cv2

    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def test_video_smoothing_and_annotated_output(predictor, astronaut, tmp_path):
    """The camera path, driven by a video file: per-frame faces, a moving-window mean of logits."""
    import cv2

    from train.metrics import softmax
    from train.video import predict_stream

    small = cv2.resize(astronaut, (256, 256))
    frames = [np.roll(small, 3 * i, axis=1) for i in range(6)]
    frames[3] = np.full_like(small, 90)  # a frame with no face
    video = _write_video(tmp_path / "clip.avi", frames)
    out = tmp_path / "annotated.mp4"
    res = predict_stream(predictor, video, window=3, out_video=out)
    assert [len(r.faces) for r in res] == [1, 1, 1, 0, 1, 1]
    assert res[1].time_s == pytest.approx(0.1)
    # frames 0-2 share one track; the face leaves at frame 3, so frame 4 starts a new window
    assert res[0].track_ids == res[2].track_ids and res[4].track_ids != res[2].track_ids
    cap = cv2.VideoCapture(str(video))
    raw = []
    for _ in range(3):
        ok, bgr = cap.read()
        crop = predictor.faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))[0].crop
        raw.append(predictor.logits([crop])[0])
    cap.release()
    want = np.mean(raw, axis=0)
    assert np.allclose(res[2].faces[0].logits, want, atol=1e-5)
    assert res[2].faces[0].prob == pytest.approx(float(softmax(want[None]).max()), abs=1e-5)
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()


def test_video_that_cannot_be_opened(predictor, inputs, tmp_path):
    from train.predict import PredictConfig, run

    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    recs = run(predictor, [str(tmp_path / "broken.mp4"), str(inputs / "sub")], PredictConfig())
    by = {Path(r.source).name: r for r in recs}
    assert by["broken.mp4"].status == "error" and "cannot open it as a video" in by["broken.mp4"].message
    assert by["astronaut.png"].status == "ok"


def test_cli_json_csv_table(ckpt, inputs, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(inputs), "--checkpoint", str(ckpt), "--json", "--top-k", "2"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    by = {Path(d["source"]).name: d for d in data}
    # no face in blank.png: its central square is classified, and every output says so
    assert by["blank.png"]["status"] == "ok" and by["blank.png"]["faces"][0]["face_source"] == "whole_image"
    assert by["astronaut.png"]["faces"][0]["face_source"] == "detector"
    assert len(by["astronaut.png"]["faces"][0]["topk"]) == 2 and "logits" not in by["astronaut.png"]["faces"][0]
    r = runner.invoke(app, ["predict", str(inputs), "--checkpoint", str(ckpt), "--csv"])
    assert r.exit_code == 0
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("source,frame,time_s,status,face,face_source,face_score,label,prob,box,topk") and len(lines) == 3
    assert sum(",whole_image," in line for line in lines) == 1
    assert "2 inputs/frames, 2 faces (1 face_source=whole_image" in r.stderr
    r = runner.invoke(app, ["predict", str(inputs), "--checkpoint", str(ckpt), "--json", "--no-fallback"])
    assert r.exit_code == 0 and {d["status"] for d in json.loads(r.stdout)} == {"ok", "no_face"}
    r = runner.invoke(app, ["predict", str(inputs / "sub"), "--checkpoint", str(ckpt)])
    assert r.exit_code == 0 and "1 input/frame, 1 face, 0 without a face" in r.stderr  # no "(0 whole_image)"
    assert "box (x,y,w,h)" in r.stdout and any(name in r.stdout for name in FER)
    # the table marks the whole-image fallback as JSON and CSV do, shows no frame column for
    # photos, heads top-k with what a 7-class model can show, and folds nothing into a pipe
    r = runner.invoke(app, ["predict", str(inputs), "--checkpoint", str(ckpt), "--top-k", "10"])
    rows = [ln for ln in r.stdout.splitlines() if "blank.png" in ln or "astronaut.png" in ln]
    assert r.exit_code == 0 and len(rows) == 2, r.stdout
    assert sum("(whole image)" in ln for ln in rows) == 1 and "(whole image)" in next(ln for ln in rows if "blank.png" in ln)
    assert "top-7" in r.stdout and "top-10" not in r.stdout and "frame" not in r.stdout
    r = runner.invoke(app, ["predict", str(tmp_path / "nothing.png"), "--checkpoint", str(ckpt)])
    assert r.exit_code == 2 and "no such file" in r.stderr


def test_cli_without_checkpoint_says_what_to_do(inputs, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import train.checkpoint
    from train.cli import app

    monkeypatch.setattr(train.checkpoint, "WEIGHTS_DIR", tmp_path / "weights")
    r = CliRunner().invoke(app, ["predict", str(inputs)])
    assert r.exit_code == 2 and "no shipped model" in r.stderr and "--checkpoint" in r.stderr


def test_describe_missing_weights_is_clear(predictor, inputs, monkeypatch, tmp_path):
    from train.api import PredictError
    from train.predict import PredictConfig, run

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PredictError, match="--describe needs BLIP weights.*not in the Hugging Face cache"):
        run(predictor, [str(inputs)], PredictConfig(describe=True))


def test_describe_with_tiny_blip(predictor, inputs, tmp_path):
    from tiny_models import tiny_blip_captioner, tiny_blip_vqa
    from train.predict import VQA_QUESTIONS, PredictConfig, run, to_csv

    cap = tiny_blip_captioner(tmp_path / "cap")
    vqa = tiny_blip_vqa(tmp_path / "vqa")
    cfg = PredictConfig(describe=True, caption_model=str(cap), vqa_model=str(vqa))
    (ok,) = [r for r in run(predictor, [str(inputs / "sub")], cfg) if r.status == "ok"]
    (d,) = ok.description
    assert isinstance(d["caption"], str) and list(d["vqa"]) == list(VQA_QUESTIONS)
    assert "caption" in to_csv([ok]).splitlines()[0]


def test_camera_index_is_a_source_and_a_missing_camera_is_reported(predictor, inputs, capfd):
    import cv2

    from train.predict import PredictConfig, Source, collect, run

    sources, errors = collect(["0", 3, str(inputs / "sub")])
    assert sources[:2] == [Source("camera", 0), Source("camera", 3)] and not errors
    assert sources[2] == Source("image", str(inputs / "sub" / "astronaut.png"))
    recs = run(predictor, ["97", str(inputs / "sub")], PredictConfig(max_frames=2))
    by = {r.source: r for r in recs}
    assert by["camera:97"].status == "error" and by["camera:97"].message.startswith("camera:97: cannot open it")
    assert by[str(inputs / "sub" / "astronaut.png")].status == "ok"
    # OpenCV's own warnings about the missing camera stay quiet (the record says it), and its
    # log level is given back afterwards
    assert "WARN" not in capfd.readouterr().err
    assert cv2.utils.logging.getLogLevel() != cv2.utils.logging.LOG_LEVEL_ERROR


def test_gradcam_on_a_per_frame_clip_model(tmp_path, astronaut):
    """dfew-2d sees a face as a 1-frame clip; Grad-CAM explains its 2-D backbone."""
    import torch

    from train.api import EmotionPredictor
    from train.checkpoint import save_checkpoint
    from train.gradcam import grad_cam
    from train.models.registry import build_model
    from train.transforms import Preprocess

    torch.manual_seed(0)
    model = build_model("dfew-2d", num_classes=7, in_chans=3, input_size=SIZE, backbone="resnet18", frames=4)
    side = {"labels": {"label_set": "fer2013", "preset": "7", "class_names": list(FER)},
            "preprocess": Preprocess.default_for(SIZE, 3).to_dict()}
    save_checkpoint(tmp_path, model, side)
    p = EmotionPredictor.from_checkpoint(tmp_path)
    (face,) = p.faces(astronaut)
    x = p.inputs([face.crop])
    assert x.shape == (1, 1, 3, SIZE, SIZE)
    cam, _ = grad_cam(p.model, x)
    assert cam.shape == (SIZE, SIZE) and 0.0 <= cam.min() and cam.max() <= 1.0
    assert len(p.predict(astronaut)) == 1


def test_flip_tta_is_the_mean_of_the_face_and_its_mirror(ckpt, astronaut):
    """Default TTA 'flip' = mean logits of x and x.flip(-1), by hand; 'none' = one pass; a bad
    mode is refused in one line (API and CLI)."""
    import torch
    from typer.testing import CliRunner

    from train.api import EmotionPredictor, PredictError
    from train.cli import app

    flip = EmotionPredictor.from_checkpoint(ckpt, detector="none")
    once = EmotionPredictor.from_checkpoint(ckpt, detector="none", tta="none")
    assert flip.tta == "flip"
    crops = [astronaut[:200, 100:300], astronaut[100:400, 150:450]]
    x = flip.inputs(crops)
    assert not torch.equal(x, x.flip(-1))  # the mirror is another input, so the test can fail
    with torch.inference_mode():
        model = flip.model
        by_hand = ((model(x) + model(x.flip(-1))) / 2).numpy()
        single = model(x).numpy()
    np.testing.assert_allclose(flip.logits(crops), by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(once.logits(crops), single, rtol=1e-5, atol=1e-6)
    assert np.abs(by_hand - single).max() > 1e-6
    with pytest.raises(PredictError, match="tta 'vertical' unknown"):
        EmotionPredictor.from_checkpoint(ckpt, detector="none", tta="vertical")
    r = CliRunner().invoke(app, ["predict", "x.png", "--checkpoint", str(ckpt), "--tta", "vertical"])
    assert r.exit_code == 2 and "--tta 'vertical' unknown" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["predict", "x.png", "--checkpoint", str(ckpt), "--crop", "eyes"])
    assert r.exit_code == 2 and "--crop 'eyes' unknown" in r.stderr and "Traceback" not in r.output


def test_crop_box_is_the_default_and_landmarks_is_the_template_crop(ckpt, astronaut):
    """crop 'box' (default) cuts the padded box with levelled eyes, 'landmarks' maps the five
    landmarks onto FER2013's mean face: each equals features.faces.crop_face with that template;
    an unknown crop is refused in one line."""
    from features.faces import FER_TEMPLATE, crop_face, detect_faces_batch, mtcnn_available
    from train.api import EmotionPredictor, PredictError

    if not mtcnn_available():
        pytest.skip("facenet-pytorch not installed (make setup installs it)")
    box = EmotionPredictor.from_checkpoint(ckpt, detector="mtcnn")
    (face,) = detect_faces_batch([astronaut], backend="mtcnn", min_size=box.min_face)[0]
    marks = EmotionPredictor.from_checkpoint(ckpt, detector="mtcnn", crop="landmarks")
    assert box.crop == "box"
    got_box, got_marks = box.faces(astronaut)[0].crop, marks.faces(astronaut)[0].crop
    np.testing.assert_array_equal(got_box, crop_face(astronaut, face, pad=box.pad, align=True, template=None))
    np.testing.assert_array_equal(got_marks, crop_face(astronaut, face, pad=box.pad, align=True, template=FER_TEMPLATE))
    assert got_box.shape != got_marks.shape or not np.array_equal(got_box, got_marks)
    with pytest.raises(PredictError, match="crop 'eyes' unknown"):
        EmotionPredictor.from_checkpoint(ckpt, detector="none", crop="eyes")
    # a negative pad tightens the crop (docs/predict.md reports pads -0.1 and -0.05) ...
    tight = EmotionPredictor.from_checkpoint(ckpt, detector="mtcnn", pad=-0.1)
    np.testing.assert_array_equal(tight.faces(astronaut)[0].crop,
                                  crop_face(astronaut, face, pad=-0.1, align=True, template=None))
    # ... down to a limit named in one line, by the API and by the CLI
    with pytest.raises(PredictError, match="pad -0.5 leaves no face to crop"):
        EmotionPredictor.from_checkpoint(ckpt, detector="none", pad=-0.5)
    from typer.testing import CliRunner

    from train.cli import app
    r = CliRunner().invoke(app, ["predict", "x.png", "--checkpoint", str(ckpt), "--pad", "-0.5"])
    assert r.exit_code == 2 and r.stderr.strip() == ("train predict: --pad -0.5 leaves no face to crop; use a "
                                                     "value above -0.5 (0: the box itself)")


def test_a_photo_named_twice_is_predicted_once_and_one_bad_input_is_one_line(ckpt, inputs, tmp_path):
    """A photo given and also inside a given folder is one record (no crash, no overlay with
    another photo's label); predict_images keeps a repeated path apart by position; a lone
    unreadable input is one line naming it once, exit 2."""
    from typer.testing import CliRunner

    from train.api import EmotionPredictor
    from train.cli import app
    from train.predict import PredictConfig, predict_images

    photo = inputs / "sub" / "astronaut.png"
    r = CliRunner().invoke(app, ["predict", str(photo), str(inputs), str(photo), "--checkpoint", str(ckpt), "--json"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    sources = [d["source"] for d in json.loads(r.stdout)]
    assert sources.count(str(photo)) == 1 and len(sources) == 2  # the photo and blank.png
    p = EmotionPredictor.from_checkpoint(ckpt, detector="none")
    recs = predict_images(p, [str(photo), str(inputs / "blank.png"), str(photo)], PredictConfig())
    assert [r.status for r in recs] == ["ok"] * 3 and recs[0].faces == recs[2].faces
    bad = tmp_path / "text.jpg"
    bad.write_text("not a photo")
    r = CliRunner().invoke(app, ["predict", str(bad), "--checkpoint", str(ckpt)])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"train predict: {bad}: ")
    assert lines[0].count(str(bad)) == 1 and "Traceback" not in r.output


def test_unwritable_outputs_are_refused_first_in_one_line_naming_the_option(ckpt, inputs, tmp_path):
    """--gradcam on a file, --gradcam or --out-video where nothing can be written: one line naming
    the option, exit 2, before any input is read (no folder left behind)."""
    from typer.testing import CliRunner

    from train.cli import app

    a_file = tmp_path / "photo.jpg"
    a_file.write_bytes(b"x")
    blocked = a_file / "sub"  # a folder under a file cannot exist
    cases = [(["--gradcam", str(a_file)], f"train predict: --gradcam {a_file} is a file; pass a folder for the overlays"),
             (["--gradcam", str(blocked)],
              f"train predict: --gradcam {blocked / 'overlay.png'}: {a_file} is a file, not a folder"),
             (["--out-video", str(blocked / "a.mp4")],
              f"train predict: --out-video {blocked / 'a.mp4'}: {a_file} is a file, not a folder")]
    for extra, line in cases:
        r = CliRunner().invoke(app, ["predict", str(inputs), "--checkpoint", str(ckpt), *extra])
        assert r.exit_code == 2 and r.stderr.strip().startswith(line), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    ok = tmp_path / "cams" / "deep"
    r = CliRunner().invoke(app, ["predict", str(inputs / "sub"), "--checkpoint", str(ckpt), "--gradcam", str(ok)])
    assert r.exit_code == 0 and any(ok.iterdir())


def test_out_video_on_photos_is_refused_not_announced(ckpt, inputs, tmp_path):
    """--out-video with photos only: it used to end with "annotated video: o.mp4" and write nothing."""
    from typer.testing import CliRunner

    from train.cli import app

    out = tmp_path / "o.mp4"
    r = CliRunner().invoke(app, ["predict", str(inputs / "sub"), "--checkpoint", str(ckpt), "--out-video", str(out)])
    assert r.exit_code == 2 and not out.exists()
    assert r.stderr.strip().startswith("train predict: --out-video annotates a video or camera input")
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_parquet_table_given_as_a_photo_says_what_reads_it(ckpt, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    table = tmp_path / "wild_dev.parquet"
    table.write_bytes(b"PAR1 not really")
    r = CliRunner().invoke(app, ["predict", str(table), "--checkpoint", str(ckpt)])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "a Parquet table, not an image" in r.stderr and "make wild-folder" in r.stderr
