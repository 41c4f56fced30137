"""The photo path of `train predict`: fallback to the whole image, face_source in every output,
labelled folders scored, skipped files counted, overlays unique per input, video frame times and
Grad-CAM on video frames, and bad input reported one record at a time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from features.images import encode

sys.path.insert(0, str(Path(__file__).parent))
# the tiny checkpoint and the astronaut photo are test_predict's fixtures
from test_predict import FER, _write_video, astronaut, ckpt  # noqa: E402,F401


@pytest.fixture(scope="module")
def predictor(ckpt):
    """Unlike test_predict's, this one keeps the whole-image fallback (the default)."""
    import torch

    from train.api import EmotionPredictor

    torch.set_num_threads(1)
    return EmotionPredictor.from_checkpoint(ckpt)


def test_fallback_classifies_the_central_square_and_says_so(ckpt, predictor, astronaut):
    from train.api import EmotionPredictor

    wide = np.full((60, 100), 128, np.uint8)
    wide[:, 20:80] = np.arange(60, dtype=np.uint8)[None]  # no face; its central square is distinctive
    (f,) = predictor.predict(wide)
    assert f.face_source == "whole_image" and f.box == (20, 0, 60, 60) and f.face_score is None
    (crop,) = predictor.faces(wide)
    assert np.array_equal(crop.crop, wide[:, 20:80])
    (g,) = predictor.predict(astronaut)
    assert g.face_source == "detector" and g.face_score is not None
    strict = EmotionPredictor.from_checkpoint(ckpt, fallback=False)
    assert strict.predict(wide) == [] and strict.predict(astronaut)[0].face_source == "detector"


def test_auto_detector_falls_back_to_haar_with_a_notice(ckpt, monkeypatch):
    import features.faces
    from train.api import EmotionPredictor, PredictError

    monkeypatch.setattr(features.faces, "mtcnn_available", lambda: False)
    p = EmotionPredictor.from_checkpoint(ckpt)
    assert p.detector == "haar" and "facenet-pytorch is not installed" in p.notice and "\n" not in p.notice

    def broken(device="cpu"):
        raise features.faces.FaceError("MTCNN weights x/pnet.pt cannot be read (bad); reinstall")

    monkeypatch.setattr(features.faces, "load_mtcnn", broken)
    with pytest.raises(PredictError, match="pnet.pt cannot be read"):
        EmotionPredictor.from_checkpoint(ckpt, detector="mtcnn")


def test_any_checkpoint_preprocessing_rgb_and_size(tmp_path, astronaut):
    """The sidecar's preprocessing decides size and channels: a 3-channel 40-px model takes the
    same grey and RGB photos."""
    import torch

    from train.api import EmotionPredictor
    from train.checkpoint import save_checkpoint
    from train.models.registry import build_model
    from train.transforms import Preprocess

    torch.manual_seed(0)
    model = build_model("vgg", num_classes=7, in_chans=3, input_size=40, width=0.125, fc_dim=16, stages=(64, 128))
    side = {"labels": {"label_set": "fer2013", "preset": "7", "class_names": list(FER)},
            "preprocess": Preprocess.default_for(40, 3).to_dict()}
    save_checkpoint(tmp_path, model, side)
    p = EmotionPredictor.from_checkpoint(tmp_path)
    (face,) = p.faces(astronaut)
    assert tuple(p.inputs([face.crop]).shape) == (1, 3, 40, 40)
    grey = astronaut.mean(axis=2).astype(np.uint8)
    assert p.predict(grey)[0].label in FER and p.predict(astronaut)[0].label in FER


def test_labelled_folder_is_scored_and_skipped_files_counted(ckpt, astronaut, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app
    from train.predict import PredictConfig, run, score_labelled

    root = tmp_path / "labelled"
    for cls in ("happy", "Sad", "happiness"):
        (root / cls).mkdir(parents=True)
    (root / "happy" / "a.png").write_bytes(encode(astronaut))
    (root / "Sad" / "b.png").write_bytes(encode(np.full((80, 80), 100, np.uint8)))
    (root / "Sad" / "c.heic").write_bytes(b"\x00" * 10)
    (root / "happiness" / "d.png").write_bytes(encode(astronaut))  # not a class name: predicted, not scored
    from train.api import EmotionPredictor

    p = EmotionPredictor.from_checkpoint(ckpt)
    recs = run(p, [str(root)], PredictConfig())
    by = {Path(r.source).name: r for r in recs}
    assert by["a.png"].true_label == "happy" and by["b.png"].true_label == "sad"
    assert by["c.heic"].status == "skipped" and by["c.heic"].true_label is None
    s = score_labelled(recs, p.class_names)
    hits = [by[n].faces[0].label == by[n].true_label for n in ("a.png", "b.png")]
    assert s["photos"] == 2 and s["accuracy"] == pytest.approx(np.mean(hits))
    assert s["uar"] == pytest.approx(np.mean(hits)) and s["face_found"] == 0.5 and s["face_or_fallback"] == 1.0
    # an unlabelled folder is not scored
    assert score_labelled(run(p, [str(root / "happy")], PredictConfig()), p.class_names) is None
    r = CliRunner().invoke(app, ["predict", str(root), "--checkpoint", str(ckpt), "--csv"])
    assert r.exit_code == 0, r.output
    assert "1 files skipped by extension" in r.stderr and "labelled folders (2 photos" in r.stderr
    assert "" not in r.stderr.splitlines(), "a progress bar left a blank line on a pipe"
    assert "happiness/ (1 image) is not a class of this model" in r.stderr
    assert f"; model {Path(str(ckpt)).stem}, detector mtcnn" in r.stderr  # the summary names the model
    assert "true_label" in r.stdout.splitlines()[0]


def test_overlay_names_unique_per_input_path(predictor, astronaut, tmp_path):
    from train.predict import PredictConfig, run

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "face.png").write_bytes(encode(astronaut))
    recs = run(predictor, [str(tmp_path / "a"), str(tmp_path / "b")], PredictConfig(gradcam_dir=tmp_path / "cam"))
    pngs = [g for r in recs for g in r.gradcam]
    assert len(pngs) == 2 and len(set(pngs)) == 2 and all(Path(g).is_file() for g in pngs)
    assert len(list((tmp_path / "cam").glob("*.png"))) == 2


def test_video_gradcam_written_and_zero_frame_video_reported(predictor, astronaut, tmp_path):
    import cv2

    from train.predict import PredictConfig, run

    small = cv2.resize(astronaut, (256, 256))
    video = _write_video(tmp_path / "clip.avi", [small, small, np.full_like(small, 90)])
    empty = tmp_path / "empty.avi"
    vw = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    vw.release()
    (tmp_path / "p.png").write_bytes(encode(astronaut))
    cfg = PredictConfig(gradcam_dir=tmp_path / "cam")
    recs = run(predictor, [str(video), str(empty), str(tmp_path / "p.png")], cfg)
    frames = [r for r in recs if r.source == str(video)]
    assert [len(r.gradcam) for r in frames] == [len(r.faces) for r in frames]
    assert all("_f00000" in g for g in frames[0].gradcam) and all(Path(g).is_file() for r in frames for g in r.gradcam)
    (bad,) = [r for r in recs if r.source == str(empty)]
    assert bad.status == "error" and ("zero frames" in bad.message or "cannot open" in bad.message)
    assert any(r.status == "ok" and r.source.endswith("p.png") for r in recs)


class _FakeCapture:
    """A capture whose frames have the given container timestamps (ms): a variable-frame-rate file."""

    def __init__(self, frames, stamps, fps=10.0):
        self.frames, self.stamps, self.fps, self.i = frames, stamps, fps, 0

    def isOpened(self):
        return True

    def read(self):
        if self.i >= len(self.frames):
            return False, None
        self.i += 1
        return True, self.frames[self.i - 1]

    def get(self, prop):
        import cv2

        if prop == cv2.CAP_PROP_POS_MSEC:
            return self.stamps[self.i - 1]
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        pass


@pytest.mark.parametrize("stamps,want,timed_by", [
    ([0.0, 100.0, 900.0, 950.0], [0.0, 0.1, 0.9, 0.95], "container"),
    ([0.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.2, 0.3], "fps"),  # no timestamps: frame / fps, and said so
])
def test_video_times_come_from_the_container(predictor, monkeypatch, stamps, want, timed_by):
    import train.video

    frames = [np.full((64, 64, 3), 90, np.uint8)] * len(stamps)
    monkeypatch.setattr(train.video, "open_capture", lambda src: _FakeCapture(frames, stamps))
    res = train.video.predict_stream(predictor, "vfr.mp4", window=2)
    assert [r.time_s for r in res] == pytest.approx(want) and {r.timed_by for r in res} == {timed_by}
    from train.predict import PredictConfig, Source, predict_video

    recs = predict_video(predictor, Source("video", "vfr.mp4"), PredictConfig())
    assert [r.time_s for r in recs] == pytest.approx(want)
    assert ("no container timestamps" in recs[0].message) == (timed_by == "fps")


def test_json_and_csv_carry_face_source_and_exit_2_when_nothing_processed(ckpt, astronaut, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    (tmp_path / "ok.png").write_bytes(encode(astronaut))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(tmp_path), "-c", str(ckpt), "--json"])
    assert r.exit_code == 0
    by = {Path(d["source"]).name: d for d in json.loads(r.stdout)}
    assert by["bad.jpg"]["status"] == "error" and "not a readable image" in by["bad.jpg"]["message"]
    assert by["ok.png"]["faces"][0]["face_source"] == "detector"
    r = runner.invoke(app, ["predict", str(tmp_path / "bad.jpg"), "-c", str(ckpt)])
    assert r.exit_code == 2 and "bad.jpg" in r.stderr and "Traceback" not in r.output


def test_detector_none_classifies_the_central_square_not_a_squashed_photo(ckpt):
    """--detector none used to resize the whole photo to the model's square input (a 300x900 photo
    squashed 3:1); it now classifies the central square, as the fallback does and the docs say."""
    from train.api import EmotionPredictor

    p = EmotionPredictor.from_checkpoint(ckpt, detector="none")
    wide = np.random.default_rng(0).integers(0, 255, (300, 900), dtype=np.uint8)
    (face,) = p.faces(wide)
    assert face.box == (300, 0, 300, 300) and face.source == "whole_image"
    assert np.array_equal(face.crop, wide[:, 300:600])


def test_truncated_video_is_noted_and_ffmpeg_logs_stay_quiet(predictor, astronaut, tmp_path):
    """A video cut short used to end early without a word, and FFmpeg printed its own lines
    ("moov atom not found") before our one line."""
    import subprocess
    import sys

    import cv2

    from train.predict import PredictConfig, run

    small = cv2.resize(astronaut, (128, 128))
    video = _write_video(tmp_path / "clip.avi", [small] * 12)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:int(len(data) * 0.6)])
    recs = run(predictor, [str(cut)], PredictConfig())
    assert 0 < len(recs) < 12 and recs[-1].note.startswith(f"the video ended after {len(recs)} of the 12 frames")
    assert recs[-1].note in recs[-1].message and not any(r.note for r in recs[:-1])
    assert not any(r.note for r in run(predictor, [str(video)], PredictConfig()))  # a whole file: no note
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    code = f"from train.video import open_capture\ntry:\n    open_capture({str(junk)!r})\nexcept Exception:\n    pass\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0 and "moov atom" not in r.stderr and r.stderr.strip() == "", r.stderr


def test_wild_folder_writes_labelled_photos_and_keeps_an_existing_one(astronaut, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.wild_folder import write_folder

    wild = tmp_path / "wild.parquet"
    blob = encode(astronaut)
    pq.write_table(pa.table({"image": [blob, blob], "label": ["happy", "sad"], "sha1": ["a1", "b2"]}), wild)
    out = tmp_path / "folder"
    assert write_folder(wild, out) == 2
    assert (out / "happy" / "a1.jpg").read_bytes() == blob and (out / "sad" / "b2.jpg").is_file()
    with pytest.raises(FileExistsError, match="already holds photos"):
        write_folder(wild, out)
    with pytest.raises(FileNotFoundError, match="wild_dev.parquet is in ../shared/data/wild_dev"):
        write_folder(tmp_path / "none.parquet", tmp_path / "x")


def test_video_frames_say_where_their_face_came_from_and_the_table_shows_times(ckpt, predictor, astronaut, tmp_path):
    """A frame classified whole (no face, fallback) said face_source "detector"; the table had no time."""
    from typer.testing import CliRunner

    from train.cli import app
    from train.predict import WHOLE_IMAGE, PredictConfig, run

    blank = np.full((96, 96, 3), 90, np.uint8)
    video = _write_video(tmp_path / "blank.avi", [blank, blank])
    recs = run(predictor, [str(video)], PredictConfig())
    assert [r.faces[0].face_source for r in recs] == ["whole_image", "whole_image"]
    assert [r.message for r in recs] == [WHOLE_IMAGE] * 2  # as a photo's record says it
    # the annotated video draws it orange and says so; a detected face stays green
    from train.api import FacePrediction
    from train.video import annotate

    whole = FacePrediction("sad", 0.5, (10, 10, 60, 60), (("sad", 0.5),), None, (), "whole_image")
    found = FacePrediction("sad", 0.5, (10, 10, 60, 60), (("sad", 0.5),), 0.99, (), "detector")
    assert tuple(annotate(blank, [whole], [1])[40, 10]) == (255, 160, 0)
    assert tuple(annotate(blank, [found], [1])[40, 10]) == (0, 220, 0)
    # a Grad-CAM overlay of a central square is named as one
    cams = run(predictor, [str(video)], PredictConfig(gradcam_dir=tmp_path / "cams"))
    assert all("_whole_image_" in Path(c).name for r in cams for c in r.gradcam) and cams[0].gradcam
    r = CliRunner().invoke(app, ["predict", str(video), "--checkpoint", str(ckpt)], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "time (s)" in r.stdout and "(whole image)" in r.stdout


def test_options_that_do_not_apply_are_noted(ckpt, astronaut, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    photo = tmp_path / "a.png"
    photo.write_bytes(encode(astronaut))
    r = CliRunner().invoke(app, ["predict", str(photo), "-c", str(ckpt), "--crop", "landmarks", "--detector", "haar"])
    assert r.exit_code == 0 and "note: --crop landmarks needs five landmarks" in r.stderr
    r = CliRunner().invoke(app, ["predict", str(photo), "-c", str(ckpt), "--detector", "none", "--no-fallback"])
    assert r.exit_code == 0 and "note: --no-fallback does nothing with --detector none" in r.stderr
