"""`train calibrate`: logit adjustment chosen on validation rows only, written into a checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_eval import manifest, tiny_checkpoint  # noqa: E402

torch = pytest.importorskip("torch")


def test_curve_and_choice_on_a_skewed_problem():
    """A model biased towards the frequent class: moving tau up buys rare-class recall; the
    choice keeps accuracy within the allowed drop, and tau = 0 leaves predictions alone."""
    from train.calibrate import adjustment_curve, choose_tau

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(900, int), np.ones(100, int)]
    logits = np.stack([np.full(1000, 2.0), rng.normal(0, 1, 1000) + 1.2 * y], 1)
    prior = np.array([0.9, 0.1])
    curve = adjustment_curve(logits, y, np.log(prior), np.arange(0, 1.51, 0.05))
    assert curve[0]["acc"] == pytest.approx(((logits.argmax(1)) == y).mean())
    assert max(r["uar"] for r in curve) > curve[0]["uar"] + 0.1
    for drop in (0.0, 1.0, 5.0, 100.0):
        pick = choose_tau(curve, drop)
        assert pick["acc"] >= curve[0]["acc"] - drop / 100 - 1e-9
        better = [r for r in curve if r["acc"] >= curve[0]["acc"] - drop / 100 - 1e-9 and r["uar"] > pick["uar"]]
        assert not better
    assert choose_tau(curve, 100.0)["uar"] == max(r["uar"] for r in curve)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    tiny_checkpoint(d / "run", seed=1)
    train = manifest(d / "m_train.parquet", "fer2013", n=70, seed=1, split="train")
    val = manifest(d / "m_val.parquet", "fer2013", n=42, seed=2, split="val")
    test = manifest(d / "m_test.parquet", "fer2013", n=42, seed=3, split="test")
    return d, train, val, test


def test_calibrated_checkpoint_is_the_model_minus_tau_log_prior(setup):
    from train.calibrate import CalibrateConfig, calibrate
    from train.checkpoint import load_checkpoint

    d, train, val, _ = setup
    rep = calibrate(d / "run", val, d / "adj", CalibrateConfig(max_acc_drop=100.0), train_manifest=train)
    block = rep["logit_adjustment"]
    y = np.arange(70) % 7  # manifest() cycles the classes
    prior = np.bincount(y, minlength=7) / 70
    assert list(block["train_prior"].values()) == pytest.approx(prior.tolist())
    assert block["bias"] == pytest.approx((-block["tau"] * np.log(prior)).tolist(), abs=1e-6)
    assert block["chosen_on"]["split"] == "val" and block["chosen_on"]["rows"] == 42
    a, _ = load_checkpoint(d / "run")
    b, side = load_checkpoint(d / "adj")
    x = torch.randn(5, 1, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x) + torch.tensor(block["bias"], dtype=torch.float32),
                                   rtol=1e-5, atol=1e-5)
    assert side["logit_adjustment"]["tau"] == rep["chosen"]["tau"]
    assert side["metrics"]["val_uar"] == rep["chosen"]["uar"]
    assert (d / "adj" / "calibrate.png").stat().st_size > 1000
    saved = json.loads((d / "adj" / "calibrate.json").read_text())
    assert len(saved["curve"]) == 31 and saved["chosen"] == rep["chosen"]


def _cli(args):
    from typer.testing import CliRunner

    from train.cli import app

    return CliRunner().invoke(app, args)


def test_cli_calibrate_and_its_refusals(setup):
    d, train, val, test = setup
    r = _cli(["calibrate", "-c", str(d / "run"), "--val", str(val), "--train-manifest", str(train),
              "--out", str(d / "cli")])
    assert r.exit_code == 0, r.output
    assert "tau = " in r.output and "UAR" in r.output
    cases = [
        # tau is a training choice: a manifest with only test rows is refused, never scored
        (["--val", str(test), "--train-manifest", str(train)], "no rows with split='val'"),
        (["--val", str(val), "--train-manifest", str(d / "none.parquet")], "does not exist"),
        (["--val", str(val), "--train-manifest", str(train), "--max-acc-drop", "-1"], "--max-acc-drop"),
    ]
    for extra, want in cases:
        r = _cli(["calibrate", "-c", str(d / "run"), "--out", str(d / "bad"), *extra])
        assert r.exit_code == 2 and want in r.output, r.output
    r = _cli(["calibrate", "-c", str(d / "cli"), "--val", str(val), "--train-manifest", str(train),
              "--out", str(d / "twice")])
    assert r.exit_code == 2 and "already logit-adjusted" in r.output, r.output


def test_eval_of_a_calibrated_checkpoint_finds_the_source_training_log(setup):
    """Training curves in `train eval`'s plots (and ship_model's card) come from the run the
    adjusted checkpoint was calibrated from: the calibrate folder holds no log of its own."""
    from train.calibrate import CalibrateConfig, calibrate
    from train.evaluate import training_log_of

    d, train, val, _ = setup
    run = d / "logged"
    tiny_checkpoint(run, log=True, seed=2)
    calibrate(run, val, d / "logged_adj", CalibrateConfig(), train_manifest=train)
    assert training_log_of(d / "logged_adj") == run / "log.jsonl"
    assert training_log_of(d / "logged_adj" / "best.safetensors") == run / "log.jsonl"
    assert training_log_of(d / "run") is None  # tiny_checkpoint without log=True
