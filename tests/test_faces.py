"""Face detection / crop / alignment (features.faces) and the `pipeline faces` stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from features.faces import Face, FaceError, crop_face, crop_matrix, detect_faces, eye_angle
from features.hub import WeightsNotFound
from features.images import decode, encode, pixel_hash
from features.manifest import read_manifest, sample_id
from pipeline.cli import app
from test_runner import make_manifest, make_rows

astronaut = pytest.importorskip("skimage.data").astronaut


def test_astronaut_has_one_face_with_eyes():
    img = astronaut()
    faces = detect_faces(img)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 200  # her face, top middle of the photo
    assert faces[0].landmarks is not None and faces[0].landmarks.shape == (2, 2)
    crop = crop_face(img, faces[0], pad=0.25, size=112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    grey_faces = detect_faces(img.mean(axis=2).astype(np.uint8))
    assert len(grey_faces) == 1
    assert crop_face(img.mean(axis=2).astype(np.uint8), grey_faces[0], size=64).shape == (64, 64)


def test_blank_image_has_no_face():
    assert detect_faces(np.zeros((120, 120, 3), np.uint8)) == []
    assert detect_faces(np.full((64, 64), 128, np.uint8)) == []


def test_alignment_levels_the_eyes_and_centres_the_face():
    face = Face((40, 40, 40, 40), 1.0, np.array([[70, 60], [50, 50]], np.float32))
    assert eye_angle(face) == pytest.approx(np.degrees(np.arctan2(10, 20)))
    m, side = crop_matrix(face, pad=0.25, size=None, align=True)
    eyes = np.c_[face.landmarks, np.ones(2)] @ m.T
    assert side == 60 and eyes[0, 1] == pytest.approx(eyes[1, 1], abs=1e-6)
    centre = m @ np.array([60, 60, 1.0])
    assert centre == pytest.approx([30, 30])
    plain, _ = crop_matrix(face, pad=0.25, size=None, align=False)
    assert plain[:, :2] == pytest.approx(np.eye(2))


def test_crop_pads_outside_the_image_with_border_pixels():
    img = np.zeros((50, 50), np.uint8)
    img[:, :25] = 200
    crop = crop_face(img, Face((0, 0, 20, 20), 1.0), pad=0.5, size=None)
    assert crop.shape == (40, 40) and crop[0, 0] == 200  # replicated, not a black frame


def test_bad_backend_and_missing_retinaface_weights(tmp_path):
    with pytest.raises(FaceError, match="expected one of mtcnn, haar, retinaface"):
        detect_faces(np.zeros((8, 8), np.uint8), backend="dlib")
    with pytest.raises(WeightsNotFound, match="detection_Resnet50_Final.pth"):
        detect_faces(np.zeros((8, 8), np.uint8), backend="retinaface", weights_dir=tmp_path)


def test_retinaface_loads_a_state_dict_from_weights_dir(tmp_path):
    """The official file layout (a DataParallel state dict) through the local-weights path."""
    pytest.importorskip("facexlib", reason="facexlib not installed (make setup-faces)")
    import torch
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    net = RetinaFace(network_name="mobile0.25", device=torch.device("cpu"))
    torch.save({"module." + k: v for k, v in net.state_dict().items()},
               tmp_path / "detection_mobilenet0.25_Final.pth")
    faces = detect_faces(astronaut(), backend="retinaface",
                         weights_dir=tmp_path / "detection_mobilenet0.25_Final.pth", threshold=0.5)
    # random weights find random boxes: check the types, not the boxes
    assert all(isinstance(f, Face) and f.landmarks.shape == (5, 2) for f in faces)
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    bad = tmp_path / "bad" / "detection_Resnet50_Final.pth"
    bad.parent.mkdir()
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(FaceError, match="not a facexlib RetinaFace"):
        detect_faces(astronaut(), backend="retinaface", weights_dir=bad.parent)


def _photo_manifest(path: Path) -> Path:
    rows = make_rows(2)
    for row, (name, img) in zip(rows, [("astronaut.png", astronaut()), ("blank.png", np.zeros((96, 96, 3), np.uint8))]):
        row.update(source_path=name, sample_id=sample_id("synth", name), image=encode(img), width=img.shape[1],
                   height=img.shape[0], channels=3, pixel_hash=pixel_hash(img))
    return make_manifest(path, rows=rows)


def test_faces_cli_crops_and_reports_no_face(tmp_path):
    src = _photo_manifest(tmp_path / "in.parquet")
    out = tmp_path / "faces.parquet"
    res = CliRunner().invoke(app, ["faces", "--in", str(src), "--out", str(out), "--size", "96"])
    assert res.exit_code == 0, res.output
    table, _ = read_manifest(out)
    assert table.num_rows == 1 and table.column("source_path")[0].as_py() == "astronaut.png"
    row = table.to_pylist()[0]
    img, _ = decode(row["image"])
    assert img.shape == (96, 96, 3) and row["width"] == 96 and row["pixel_hash"] == pixel_hash(img)
    assert row["face_source_pixel_hash"] == pixel_hash(astronaut()) and row["face_count"] == 1
    from features.faces import mtcnn_available

    # --backend auto, as train predict's detector: MTCNN when installed, else Haar
    assert json.loads(row["face_model"])["backend"] == ("mtcnn" if mtcnn_available() else "haar")
    rejects = [json.loads(x) for x in (tmp_path / "faces.rejects.jsonl").read_text().splitlines()]
    assert [(r["source_path"], r["reason"]) for r in rejects] == [("blank.png", "no face found")]
    kept = tmp_path / "kept.parquet"
    res = CliRunner().invoke(app, ["faces", "--in", str(src), "--out", str(kept), "--no-face", "keep"])
    assert res.exit_code == 0, res.output
    table, _ = read_manifest(kept)
    by_path = {r["source_path"]: r for r in table.to_pylist()}
    assert by_path["blank.png"]["face_count"] == 0 and by_path["blank.png"]["face_box"] is None
    assert by_path["blank.png"]["width"] == 96 and by_path["astronaut.png"]["width"] == 224


def test_faces_cli_clear_errors(tmp_path):
    src = _photo_manifest(tmp_path / "in.parquet")
    res = CliRunner().invoke(app, ["faces", "--in", str(src), "--out", str(tmp_path / "o.parquet"),
                                   "--backend", "retinaface", "--weights-dir", str(tmp_path)])
    assert res.exit_code == 2 and "detection_Resnet50_Final.pth" in res.output
    res = CliRunner().invoke(app, ["faces", "--in", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o.parquet")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(app, ["faces", "--in", str(src), "--out", str(tmp_path / "o.parquet"), "--shard", "3/2"])
    assert res.exit_code == 2 and "i/N" in res.output


# --------------------------------------------------------------------------- MTCNN

def _need_mtcnn():
    from features.faces import mtcnn_available

    if not mtcnn_available():
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch==2.6.0)")


def test_mtcnn_finds_the_astronaut_with_five_landmarks_and_batches():
    from features.faces import detect_faces_batch

    _need_mtcnn()
    img = astronaut()
    (face,) = detect_faces(img, backend="mtcnn")
    x, y, w, h = face.box
    assert 150 < x + w / 2 < 260 and 60 < y + h / 2 < 170 and 0.9 < face.score <= 1.0
    lm = face.landmarks
    assert lm.shape == (5, 2) and (lm[:, 0] > x).all() and (lm[:, 0] < x + w).all()
    assert lm[0, 0] < lm[1, 0] and lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()  # eyes, nose, mouth
    grey = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(img).convert("L"))
    batch = detect_faces_batch([img, np.full((100, 100, 3), 200, np.uint8), img, grey], backend="mtcnn")
    assert [len(b) for b in batch] == [1, 0, 1, 1]
    assert batch[0][0].box == face.box == batch[2][0].box


def test_mtcnn_weights_missing_or_corrupt_and_package_absent(tmp_path, monkeypatch):
    import sys

    import facenet_pytorch

    from features.faces import load_mtcnn

    _need_mtcnn()
    fake = tmp_path / "facenet_pytorch"
    (fake / "data").mkdir(parents=True)
    monkeypatch.setattr(facenet_pytorch, "__file__", str(fake / "__init__.py"))
    load_mtcnn.cache_clear()
    try:
        with pytest.raises(FaceError, match=r"pnet.pt are missing; reinstall with pip install --no-deps"):
            load_mtcnn("cpu")
        for name in ("pnet.pt", "rnet.pt", "onet.pt"):
            (fake / "data" / name).write_bytes(b"not a torch file")
        with pytest.raises(FaceError, match=r"pnet.pt cannot be read") as e:
            load_mtcnn("cpu")
        assert "\n" not in str(e.value)
        monkeypatch.setitem(sys.modules, "facenet_pytorch.models.mtcnn", None)
        with pytest.raises(FaceError, match="needs facenet-pytorch.*--detector haar"):
            load_mtcnn("cpu")
    finally:
        load_mtcnn.cache_clear()


def test_landmark_crop_puts_the_landmarks_on_the_fer_template():
    import cv2

    from features.faces import FER_TEMPLATE

    lm = np.array([[40, 52], [72, 48], [57, 70], [44, 86], [70, 83]], np.float32)  # a tilted face
    face = Face((30, 35, 55, 65), 0.99, lm)
    for pad in (0.0, 0.2):
        m, out = crop_matrix(face, pad=pad, size=48)
        moved = cv2.transform(lm[None], m)[0]
        want = (FER_TEMPLATE - 0.5) * (48 / (1 + 2 * pad)) + 24
        assert out == 48 and np.abs(moved - want).max() < 3.0
    # without landmarks, or with the template off, the crop is the padded box as before
    m_box, _ = crop_matrix(Face(face.box, 1.0, None), pad=0.0, size=48)
    m_off, _ = crop_matrix(face, pad=0.0, size=48, template=None)
    assert np.allclose(cv2.transform(np.array([[[57.5, 67.5]]], np.float32), m_box)[0, 0], (24, 24), atol=0.01)
    assert not np.allclose(m_off, crop_matrix(face, pad=0.0, size=48)[0])


def test_mtcnn_searches_large_photos_downscaled_and_reports_source_pixels(monkeypatch):
    import cv2

    import features.faces as ff

    _need_mtcnn()
    img = astronaut()
    (small,) = detect_faces(img, backend="mtcnn")
    big = cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    monkeypatch.setattr(ff, "MTCNN_MAX_SIDE", 512)  # the 1024 px photo is searched at 512 px
    (face,) = detect_faces(big, backend="mtcnn")
    assert np.abs(np.array(face.box) - 2 * np.array(small.box)).max() <= 4
    assert np.abs(face.landmarks - 2 * small.landmarks).max() <= 4
    # a photo smaller than the smallest face asked for has none (and does not crash the cascade)
    assert detect_faces(img[:30, :30], backend="mtcnn", min_size=40) == []


def test_mtcnn_second_pass_only_where_the_first_found_nothing(monkeypatch):
    """The low-threshold second pass runs on the images without a face: it finds the astronaut
    when a too-strict first pass misses her, and adds nothing to an image that already has a face
    (lower thresholds on every image add a false 27x35 px face on her suit)."""
    import features.faces as faces

    _need_mtcnn()
    img = astronaut()
    monkeypatch.setattr(faces, "MTCNN_THRESHOLDS", (0.99, 0.999, 0.9999))
    monkeypatch.setattr(faces, "MTCNN_RETRY_THRESHOLDS", None)
    assert faces.detect_faces(img, backend="mtcnn") == []
    monkeypatch.setattr(faces, "MTCNN_RETRY_THRESHOLDS", (0.3, 0.4, 0.5))
    (face,) = [f for f in faces.detect_faces(img, backend="mtcnn") if f.area > 5000]
    assert 150 < face.box[0] + face.box[2] / 2 < 260
    monkeypatch.setattr(faces, "MTCNN_THRESHOLDS", (0.6, 0.7, 0.7))
    assert len(faces.detect_faces(img, backend="mtcnn")) == 1  # first pass found her: no second pass
    monkeypatch.setattr(faces, "MTCNN_THRESHOLDS", (0.3, 0.4, 0.5))
    assert len(faces.detect_faces(img, backend="mtcnn")) == 2  # the false face the design avoids


def test_mtcnn_third_pass_finds_a_low_contrast_face_on_an_equalised_copy(monkeypatch):
    """The astronaut at 7 % of her contrast: both cascades miss her; the pass on a CLAHE copy finds
    her where the full-contrast photo has her, and reports source-image pixels."""
    import cv2

    import features.faces as faces

    _need_mtcnn()
    grey = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY)
    low = (grey.astype(np.float32) * 0.07 + 110).astype(np.uint8)
    monkeypatch.setattr(faces, "MTCNN_CLAHE_PASS", None)
    assert faces.detect_faces(low, backend="mtcnn") == []
    monkeypatch.setattr(faces, "MTCNN_CLAHE_PASS", (2.0, 8))
    (face,) = faces.detect_faces(low, backend="mtcnn")
    (full,) = faces.detect_faces(grey, backend="mtcnn")
    assert np.abs(np.subtract(face.box, full.box)).max() <= 8 and face.landmarks.shape == (5, 2)
    # colour input takes the same pass (equalised on its grey image)
    (rgb,) = faces.detect_faces(np.repeat(low[..., None], 3, axis=2), backend="mtcnn")
    assert rgb.box == face.box


def test_faces_cli_auto_without_mtcnn_uses_haar_and_says_so(tmp_path, monkeypatch):
    import features.faces as faces

    monkeypatch.setattr(faces, "mtcnn_available", lambda: False)
    src = _photo_manifest(tmp_path / "in.parquet")
    res = CliRunner().invoke(app, ["faces", "--in", str(src), "--out", str(tmp_path / "o.parquet")])
    assert res.exit_code == 0 and "note: facenet-pytorch is not installed" in res.stderr
    table, _ = read_manifest(tmp_path / "o.parquet")
    assert json.loads(table.column("face_model")[0].as_py())["backend"] == "haar"
