"""Checkpoints: safetensors + sidecar round trip, exact resume, NaN stop keeps the last good one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import TINY_VGG, single_thread, train_config, write_pair  # noqa: E402,F401

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("ckdata"), n_train=42, n_val=14)


def _cfg(pair, out, **kw):
    return train_config(pair, out, **({"epochs": 4, "lr": 3e-3, "augment": "light"} | kw))


def test_save_load_round_trip(tmp_path):
    from safetensors.torch import load_file

    from train.checkpoint import load_checkpoint, save_checkpoint
    from train.models.registry import build_model

    model = build_model("vgg", **TINY_VGG).eval()
    side = {"labels": {"class_names": list("abcdefg")}, "preprocess": {"size": [48, 48], "channels": 1,
                                                                       "mean": [0.5], "std": [0.5]}}
    weights = save_checkpoint(tmp_path, model, side, name="best")
    assert weights.name == "best.safetensors" and (tmp_path / "best.json").exists()
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary files"
    x = torch.randn(3, 1, 48, 48)
    for where in (tmp_path, weights, tmp_path / "best.json"):
        loaded, sidecar = load_checkpoint(where)
        assert sidecar["model"]["name"] == "vgg"
        assert sidecar["labels"]["class_names"] == list("abcdefg")
        assert torch.equal(loaded(x), model(x))
    # plain tensors on disk: readable without any code
    assert set(load_file(str(weights))) == set(model.state_dict())
    # and readable as the sidecar is (safetensors made its file 0600, the sidecar was 0644)
    assert weights.stat().st_mode & 0o777 == (tmp_path / "best.json").stat().st_mode & 0o777


def test_saved_config_is_the_models_config(tmp_path):
    """Every config field survives, including one that changes no weight shape
    (dropout): a dropped field would rebuild a different model with the same tensors."""
    import dataclasses

    from train.checkpoint import load_checkpoint, save_checkpoint
    from train.models.registry import build_model, config_to_dict

    model = build_model("vgg", **TINY_VGG, dropout=0.37, width=0.75, num_classes=5).eval()
    save_checkpoint(tmp_path, model, {"labels": {"class_names": list("abcde")}})
    side = json.loads((tmp_path / "best.json").read_text())
    assert side["model"] == {"name": "vgg", "config": config_to_dict(model.config)}
    assert side["model"]["config"]["dropout"] == 0.37 and side["model"]["config"]["width"] == 0.75
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.config == model.config
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(model.config)


def test_missing_sidecar_and_weights_are_clear(tmp_path):
    from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from train.models.registry import build_model

    with pytest.raises(CheckpointError, match="no checkpoint weights"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, build_model("vgg", **TINY_VGG), {})
    (tmp_path / "best.json").unlink()
    with pytest.raises(CheckpointError, match="no sidecar"):
        load_checkpoint(tmp_path / "best.safetensors")


def test_corrupt_weights_name_their_file_once(tmp_path):
    from train.checkpoint import CheckpointError, load_trained, save_checkpoint
    from train.models.registry import build_model

    weights = save_checkpoint(tmp_path, build_model("vgg", **TINY_VGG), {"labels": {"class_names": list("abcdefg")}})
    weights.write_bytes(bytes(range(200)))
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as e:
        load_trained(weights)
    assert str(e.value).count(str(weights)) == 1, str(e.value)


def test_resume_is_bit_identical(tmp_path, pair):
    """4 epochs straight == 2 epochs, interrupted (Ctrl-C), then --resume for the rest."""
    from safetensors.torch import load_file

    from train.loop import fit

    full = fit(_cfg(pair, tmp_path / "full"))

    def interrupt(ev):
        if ev["kind"] == "epoch_end" and ev["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(pair, tmp_path / "cut"), progress=interrupt)
    assert json.loads((tmp_path / "cut" / "last.json").read_text())["epoch"] == 2
    resumed = fit(_cfg(pair, tmp_path / "cut", resume=True))
    assert resumed["epochs_run"] == 4
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_acc"] for r in full["history"]] == [r["val_acc"] for r in resumed["history"]]
    assert [r["train_loss"] for r in full["history"]] == [r["train_loss"] for r in resumed["history"]]


def test_resume_refuses_other_options_and_allows_more_epochs(tmp_path, pair):
    """A resume with another learning rate went on with the old schedule and recorded the new
    one; with another --model-opt it died in load_state_dict with a traceback."""
    import dataclasses

    from train.loop import TrainError, fit

    cfg = _cfg(pair, tmp_path / "r", epochs=1, max_steps=1)
    fit(cfg)
    with pytest.raises(TrainError, match=r"started with lr=0.003; this command asks lr=0.5") as e:
        fit(dataclasses.replace(cfg, lr=0.5, resume=True))
    assert "only device, epochs, out, tensorboard, threads, workers may change" in str(e.value)
    other = dict(cfg.model_options, width=0.5)
    with pytest.raises(TrainError, match="model_options="):
        fit(dataclasses.replace(cfg, model_options=other, resume=True))
    assert fit(dataclasses.replace(cfg, epochs=2, resume=True))["epochs_run"] == 2  # longer: allowed


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path, pair):
    from train.checkpoint import CheckpointError
    from train.loop import TrainError, fit

    with pytest.raises(CheckpointError, match="does not exist"):
        fit(_cfg(pair, tmp_path / "none", resume=True, epochs=1))
    fit(_cfg(pair, tmp_path / "r", epochs=1, max_steps=1))
    with pytest.raises(TrainError, match="already holds a run"):
        fit(_cfg(pair, tmp_path / "r", epochs=1))


def test_resume_with_other_classes_is_refused(tmp_path, pair):
    from train.loop import TrainError, fit

    fit(_cfg(pair, tmp_path / "r", epochs=2, max_steps=1))
    with pytest.raises(TrainError, match="classes"):
        fit(_cfg(pair, tmp_path / "r", epochs=2, preset="2", resume=True))


def test_nan_loss_stops_and_keeps_last_good(tmp_path, pair, monkeypatch):
    import train.loop as loop
    from safetensors.torch import load_file

    real = loop.compute_loss
    calls = {"n": 0}

    def poisoned(loss_fn, outputs, target, model, teacher_logits=None):
        calls["n"] += 1
        loss = real(loss_fn, outputs, target, model, teacher_logits)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(loop, "compute_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(loop.NonFiniteLoss, match=r"loss became nan at epoch 2.*last good checkpoint"):
        loop.fit(_cfg(pair, out, epochs=3, max_steps=2))
    side = json.loads((out / "last.json").read_text())
    assert side["epoch"] == 1
    weights = load_file(str(out / "last.safetensors"))
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


def test_checkpoint_sidecar_describes_the_run(tmp_path, pair):
    from train.checkpoint import load_checkpoint, preprocess_of
    from train.loop import fit

    fit(_cfg(pair, tmp_path / "s", epochs=1, max_steps=2))
    model, side = load_checkpoint(tmp_path / "s")
    assert side["labels"]["class_names"] == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert side["labels"]["label_set"] == "synth" and side["labels"]["preset"] == "7"
    assert len(side["manifests"]["train"]["sha256"]) == 64
    assert side["train_config"]["model"] == "vgg" and side["selected_on"] == "val_uar"
    assert {"torch", "python"} <= set(side["versions"])
    pre = preprocess_of(side)
    import numpy as np

    x = pre.apply([np.zeros((120, 90, 3), np.uint8), np.full((20, 20), 255, np.uint8)])
    assert x.shape == (2, 1, 48, 48)
    assert model(x).shape == (2, 7)
