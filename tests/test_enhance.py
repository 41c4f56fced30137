"""`pipeline enhance`: bicubic / gray2rgb shapes, tiny SwinIR and DDColor through the CLI's checkpoint path."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from features.images import decode, encode, pixel_hash
from features.manifest import read_manifest
from pipeline.cli import app
from pipeline.enhance import EnhanceStage, tiled
from test_runner import make_manifest, make_rows

torch.set_num_threads(1)


def _manifest(path: Path, shape=(48, 48), n=3, seed=0, rgb=False) -> Path:
    rows = make_rows(n, seed, shapes=(shape,))
    rng = np.random.default_rng(seed)
    for k, row in enumerate(rows):
        arr = rng.integers(0, 256, (*shape, 3) if rgb else shape, dtype=np.uint8)
        row.update(image=encode(arr), width=shape[1], height=shape[0], channels=3 if rgb else 1,
                   pixel_hash=pixel_hash(arr))
    return make_manifest(path, rows=rows)


def _run(*args):
    res = CliRunner().invoke(app, ["enhance", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def _images(path: Path) -> list[np.ndarray]:
    return [decode(b)[0] for b in read_manifest(path)[0].column("image").to_pylist()]


@pytest.fixture(scope="module")
def tiny_swinir(tmp_path_factory) -> Path:
    """SwinIR at a tiny size, saved the way the official lightweight checkpoint is: {'params': state_dict}."""
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    net = SwinIR(img_size=64, in_chans=3, embed_dim=12, depths=[1], num_heads=[2], window_size=8, mlp_ratio=2.0,
                 upscale=4, upsampler="pixelshuffledirect", resi_connection="1conv")
    path = tmp_path_factory.mktemp("w") / "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth"
    torch.save({"params": net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tiny_ddcolor(tmp_path_factory) -> Path:
    """The smallest DDColor spandrel recognises (ConvNeXt-T encoder, small decoder), saved as {'params': ...}."""
    ddcolor = importlib.import_module("spandrel_extra_arches.architectures.DDColor.__arch.ddcolor")
    torch.manual_seed(0)
    net = ddcolor.DDColor(encoder_name="convnext-t", input_size=(64, 64), nf=512, num_output_channels=2,
                          last_norm="Spectral", num_queries=4, num_scales=3, dec_layers=1)
    path = tmp_path_factory.mktemp("w") / "ddcolor_paper_tiny.pth"
    torch.save({"params": net.state_dict()}, path)
    return path


def test_bicubic_and_gray2rgb_shapes_and_provenance(tmp_path):
    src = _manifest(tmp_path / "in.parquet")
    res = _run("--in", src, "--out", tmp_path / "out.parquet", "--sr", "bicubic", "--color", "gray2rgb")
    # the summary's speed says what it counts (the bar's img/s counts model load and reused parts)
    assert "images_per_s: computed rows per second of computing (model load excluded)" in " ".join(res.output.split())
    table = read_manifest(tmp_path / "out.parquet")[0]
    imgs = _images(tmp_path / "out.parquet")
    assert all(i.shape == (192, 192, 3) for i in imgs)
    assert all((i[..., 0] == i[..., 2]).all() for i in imgs)
    row = table.to_pylist()[0]
    assert (row["width"], row["height"], row["channels"]) == (192, 192, 3)
    assert row["enhance_sr"] == "bicubic" and row["enhance_color"] == "gray2rgb"
    assert json.loads(row["enhance_model"])["scale"] == 4
    src_rows = {r["sample_id"]: r for r in read_manifest(src)[0].to_pylist()}
    assert all(r["source_pixel_hash"] == src_rows[r["sample_id"]]["pixel_hash"] for r in table.to_pylist())
    # grey stays grey without colorization; bicubic of a flat image stays flat
    _run("--in", src, "--out", tmp_path / "grey.parquet", "--sr", "bicubic", "--scale", "2")
    assert all(i.shape == (96, 96) for i in _images(tmp_path / "grey.parquet"))
    flat = EnhanceStage(sr="bicubic").enhance_arrays([np.full((5, 7), 77, np.uint8)])[0]
    assert flat.shape == (20, 28) and (flat == 77).all()


def test_rgb_input_is_not_recoloured(tmp_path):
    src = _manifest(tmp_path / "in.parquet", shape=(20, 16), rgb=True)
    _run("--in", src, "--out", tmp_path / "out.parquet", "--sr", "bicubic", "--color", "gray2rgb")
    table = read_manifest(tmp_path / "out.parquet")[0]
    assert all(i.shape == (80, 64, 3) for i in _images(tmp_path / "out.parquet"))
    assert set(table.column("enhance_color").to_pylist()) == {"none (already colour)"}


def test_tiny_swinir_through_the_cli(tmp_path, tiny_swinir):
    src = _manifest(tmp_path / "in.parquet", n=2)
    _run("--in", src, "--out", tmp_path / "out.parquet", "--sr", f"swinir:{tiny_swinir}", "--batch-size", 2)
    table = read_manifest(tmp_path / "out.parquet")[0]
    assert all(i.shape == (192, 192) for i in _images(tmp_path / "out.parquet"))
    row = table.to_pylist()[0]
    assert row["enhance_sr"] == f"swinir:{tiny_swinir.name}"
    model = json.loads(row["enhance_model"])
    assert model["sr_checkpoint"]["file"] == tiny_swinir.name and len(model["sr_checkpoint"]["sha256"]) == 16
    # the real-SR checkpoints wrap their weights as params_ema: same loading path
    ema = tmp_path / "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth"
    torch.save({"params_ema": torch.load(tiny_swinir, weights_only=True)["params"]}, ema)
    _run("--in", src, "--out", tmp_path / "ema.parquet", "--sr", f"swinir:{ema}", "--color", "gray2rgb")
    assert all(i.shape == (192, 192, 3) for i in _images(tmp_path / "ema.parquet"))
    # same weights, same pixels
    a = [i for i in _images(tmp_path / "out.parquet")]
    b = [i[..., 0] for i in _images(tmp_path / "ema.parquet")]
    assert all((x == y).all() for x, y in zip(a, b))


def test_tiny_ddcolor_through_the_cli(tmp_path, tiny_ddcolor):
    src = _manifest(tmp_path / "in.parquet", n=2)
    _run("--in", src, "--out", tmp_path / "out.parquet", "--sr", "none", "--color", f"ddcolor:{tiny_ddcolor}")
    table = read_manifest(tmp_path / "out.parquet")[0]
    imgs = _images(tmp_path / "out.parquet")
    assert all(i.shape == (48, 48, 3) for i in imgs)
    assert table.column("enhance_color")[0].as_py() == f"ddcolor:{tiny_ddcolor.name}"
    assert json.loads(table.column("enhance_model")[0].as_py())["color_checkpoint"]["file"] == tiny_ddcolor.name


def test_missing_or_wrong_checkpoint_is_a_clear_error(tmp_path, tiny_swinir):
    src = _manifest(tmp_path / "in.parquet", n=1)
    res = CliRunner().invoke(app, ["enhance", "--in", str(src), "--out", str(tmp_path / "o.parquet"),
                                   "--sr", f"swinir:{tmp_path / 'nope.pth'}"])
    assert res.exit_code == 2
    assert "001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth" in res.output and "never downloads" in res.output
    res = CliRunner().invoke(app, ["enhance", "--in", str(src), "--out", str(tmp_path / "o.parquet"),
                                   "--color", f"ddcolor:{tmp_path / 'nope.pth'}"])
    assert res.exit_code == 2 and "ddcolor_paper_tiny.pth" in res.output
    res = CliRunner().invoke(app, ["enhance", "--in", str(src), "--out", str(tmp_path / "o.parquet"),
                                   "--color", f"ddcolor:{tiny_swinir}"])
    assert res.exit_code == 2 and "is a SwinIR checkpoint, not DDColor" in res.output
    res = CliRunner().invoke(app, ["enhance", "--in", str(src), "--out", str(tmp_path / "o.parquet"),
                                   "--sr", f"swinir:{tiny_swinir}", "--scale", "2"])
    assert res.exit_code == 2 and "pass --scale 4" in res.output
    res = CliRunner().invoke(app, ["enhance", "--in", str(src), "--out", str(tmp_path / "o.parquet"), "--sr", "esrgan"])
    assert res.exit_code == 2 and "expected one of none, bicubic, swinir" in res.output
    assert not (tmp_path / "o.parquet").exists()


def test_corrupt_image_is_rejected_and_the_rest_kept(tmp_path):
    rows = make_rows(3, shapes=((48, 48),))
    rows[1]["image"] = rows[1]["image"][:20]  # truncated PNG
    src = make_manifest(tmp_path / "in.parquet", rows=rows)
    _run("--in", src, "--out", tmp_path / "out.parquet")
    assert read_manifest(tmp_path / "out.parquet")[0].num_rows == 2
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert len(reasons) == 1 and "decode" in reasons[0]


def test_tiles_blend_back_to_the_whole_image():
    x = torch.rand(2, 3, 70, 45)

    def up(t):  # a purely local op, so tiling must not change it
        return torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")

    y = tiled(up, x, 2, tile=32, overlap=8)
    assert y.shape == (2, 3, 140, 90) and torch.allclose(y, up(x), atol=1e-6)
    assert tiled(up, x, 2, tile=0) is not None


def test_stage_pickles_without_its_models(tiny_swinir):
    # copy.deepcopy serialises through the same __reduce_ex__/__getstate__ path that ships the
    # stage to a Ray actor, so the loaded model must not travel with it
    import copy

    stage = EnhanceStage(sr=f"swinir:{tiny_swinir}")
    stage.setup()
    assert "sr" in stage._models
    clone = copy.deepcopy(stage)
    assert clone._models == {} and clone.settings() == stage.settings()


def test_setup_leaves_grad_mode_alone():
    """A stage runs inside the user's process (and the test run): it must not switch autograd off."""
    import torch

    from pipeline.enhance import EnhanceStage

    EnhanceStage(sr="bicubic", color="gray2rgb").setup()
    assert torch.is_grad_enabled()
