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
    assert json.loads(row["face_model"])["backend"] == "haar"
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
