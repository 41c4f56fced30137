"""`train export`: ONNX files whose onnxruntime logits match torch's (max abs diff < 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FER = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def _save(run_dir: Path, name: str, channels: int, size: int, **cfg) -> Path:
    import torch

    from train.checkpoint import save_checkpoint
    from train.models.registry import build_model
    from train.transforms import Preprocess

    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_chans=channels, input_size=size, **cfg)
    side = {"labels": {"label_set": "fer2013", "preset": "7", "class_names": list(FER)},
            "preprocess": Preprocess.default_for(size, channels).to_dict()}
    return save_checkpoint(run_dir, model, side)


@pytest.mark.parametrize("name,channels,size,cfg", [
    ("vgg", 1, 32, {"width": 0.125, "fc_dim": 16, "stages": (64, 128)}),
    ("resnet18", 3, 32, {}),
])
def test_onnx_matches_torch(tmp_path, name, channels, size, cfg):
    import torch

    from train.api import load
    from train.export import export_onnx, onnx_metadata, parity, run_onnx
    from train.transforms import Preprocess

    torch.set_num_threads(1)
    _save(tmp_path / "run", name, channels, size, **cfg)
    model, side = load(tmp_path / "run")
    pre = Preprocess.from_dict(side["preprocess"])
    path = export_onnx(model, pre, tmp_path / "m.onnx", FER)
    g = torch.Generator().manual_seed(1)
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, channels, size, size, generator=g)
        assert parity(path, model, x) < 1e-4
        assert run_onnx(path, x.numpy()).shape == (batch, 7)
    meta = onnx_metadata(path)
    assert json.loads(meta["affectlab.class_names"]) == list(FER)
    assert Preprocess.from_dict(json.loads(meta["affectlab.preprocess"])) == pre


def test_parity_detects_a_different_model(tmp_path):
    import torch

    from train.api import load
    from train.export import export_onnx, parity
    from train.transforms import Preprocess

    _save(tmp_path / "run", "vgg", 1, 32, width=0.125, fc_dim=16, stages=(64, 128))
    model, side = load(tmp_path / "run")
    path = export_onnx(model, Preprocess.from_dict(side["preprocess"]), tmp_path / "m.onnx", FER)
    with torch.no_grad():
        model.head.bias.add_(0.5)  # the file is now stale: parity must say so
    assert parity(path, model, torch.randn(2, 1, 32, 32)) == pytest.approx(0.5, abs=1e-4)


def test_non_image_model_refused():
    from torch import nn

    from train.export import ExportError, export_onnx
    from train.transforms import Preprocess

    class Clip(nn.Module):
        input_kind = "clip"

    with pytest.raises(ExportError, match="image models; this one takes clip input"):
        export_onnx(Clip(), Preprocess.default_for(32, 1), "/tmp/never.onnx")


def test_cli_export(tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    _save(tmp_path / "run", "vgg", 1, 32, width=0.125, fc_dim=16, stages=(64, 128))
    out = tmp_path / "x" / "model.onnx"
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "max |onnxruntime - torch|" in r.stderr
    diff = float(r.stderr.split("= ")[-1].split()[0])
    assert diff < 1e-4
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)])
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_cli_export_names_a_bad_out_before_tracing(tmp_path):
    """A folder was reported as 'torch.onnx.export failed ... [Errno 21]', an unwritable place as
    'free space', and `--out v.txt` was written."""
    from typer.testing import CliRunner

    from train.cli import app

    _save(tmp_path / "run", "vgg", 1, 32, width=0.125, fc_dim=16, stages=(64, 128))
    cases = [(tmp_path, f"train export: --out {tmp_path} is a folder"),
             (tmp_path / "v.txt", f"train export: --out {tmp_path / 'v.txt'}: name the file .onnx")]
    for out, line in cases:
        r = CliRunner().invoke(app, ["export", "-c", str(tmp_path / "run"), "--out", str(out)])
        assert r.exit_code == 2 and r.stderr.startswith(line) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "v.txt").exists()
    mine = tmp_path / "mine.onnx"
    mine.write_text("a user's file")
    r = CliRunner().invoke(app, ["export", "-c", str(tmp_path / "run"), "--out", str(mine)])
    assert r.exit_code == 2 and "exists and is not a model affectlab exported" in r.stderr
    assert mine.read_text() == "a user's file"
    for _ in range(2):  # its own earlier export is replaced
        r = CliRunner().invoke(app, ["export", "-c", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")])
        assert r.exit_code == 0, r.stderr
