"""`train calibrate`: logit adjustment chosen on validation rows only, written into a checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_eval import manifest, spread_head, tiny_checkpoint  # noqa: E402

torch = pytest.importorskip("torch")

import train.calibrate  # noqa: E402,F401  (loaded at collection: forked test processes inherit it)


@pytest.fixture(autouse=True)
def plot_calls(monkeypatch):
    """The curve figure is drawn for real by one test (test_calibrate_draws_its_curve); every
    other test records what calibrate() hands it instead, which is quicker and pins the
    arguments: the curve, the chosen tau and <out>/calibrate.png."""
    import train.plots

    calls = []

    def record(curve, tau, path):
        calls.append((curve, tau, path))
        return Path(path)

    monkeypatch.setattr(train.plots, "logit_adjustment_curve", record)
    return calls


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
    # the curve scores logits MINUS tau * log(prior): at tau = 1 the rare class gains 2.2 logits
    shifted = (logits - np.log(prior)).argmax(1)
    at1 = next(r for r in curve if r["tau"] == pytest.approx(1.0))
    assert at1["acc"] == pytest.approx((shifted == y).mean())
    assert at1["uar"] == pytest.approx(((shifted[y == 0] == 0).mean() + (shifted[y == 1] == 1).mean()) / 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    train = manifest(d / "m_train.parquet", "fer2013", n=70, seed=1, split="train")
    val = manifest(d / "m_val.parquet", "fer2013", n=42, seed=2, split="val")
    test = manifest(d / "m_test.parquet", "fer2013", n=14, seed=3, split="test")
    tiny_checkpoint(d / "run", seed=1)
    spread_head(d / "run", val, seed=1)  # predictions spread over the classes on the val rows
    # as trained from scratch and not spread: nearly the same logits for every input, so the
    # head bias alone decides which class is predicted
    tiny_checkpoint(d / "plain", seed=1)
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
    saved = json.loads((d / "adj" / "calibrate.json").read_text())
    assert len(saved["curve"]) == 31 and saved["chosen"] == rep["chosen"]


def test_calibrate_draws_its_curve(setup, monkeypatch, tmp_path):
    """The one test that draws the figure for real (the others record its arguments)."""
    monkeypatch.undo()  # the real train.plots.logit_adjustment_curve
    from train.calibrate import CalibrateConfig, calibrate

    d, train, val, _ = setup
    rep = calibrate(d / "run", val, tmp_path / "fig", CalibrateConfig(tau_max=0.2, tau_step=0.1), train_manifest=train)
    png = tmp_path / "fig" / "calibrate.png"
    assert rep["plot"] == str(png) and png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# A skewed training prior, 100 rows: angry 40 %, disgust 2 %, ... (FER2013 order). Its log is
# written out by hand below, so a wrong sign or a missing tau cannot hide behind a uniform prior.
SKEW = (40, 2, 10, 20, 5, 8, 15)
LOG_PRIOR = (-0.916291, -3.912023, -2.302585, -1.609438, -2.995732, -2.525729, -1.897120)


def _skewed_train(path):
    from features.images import encode, pixel_hash
    from features.labels import get_label_set
    from features.manifest import to_table, write_manifest

    ls = get_label_set("fer2013")
    rng = np.random.default_rng(5)
    rows = []
    for k, count in enumerate(SKEW):
        for j in range(count):
            img = rng.integers(0, 256, size=(30, 30), dtype=np.uint8)
            rows.append({"sample_id": f"t-{k}-{j}", "dataset": "fer2013", "split": "train",
                         "orig_split": "Training", "source_path": f"t/{k}/{j}.png", "label": ls.names[k],
                         "label_id": k, "label_set": ls.name, "image": encode(img), "image_format": "png",
                         "width": 30, "height": 30, "channels": 1, "pixel_hash": pixel_hash(img),
                         "leak": False, "sequence": None, "clip_id": None})
    return write_manifest(to_table(rows), path, ls)


def test_skewed_prior_bias_by_hand_and_the_recall_it_moves(setup, monkeypatch):
    """tau = 0.5 on a 40 % / 2 % prior: the head bias is -0.5 * log(prior) (by hand), the saved
    model's logits shift by exactly that, and recall moves from the frequent classes to the rare
    ones (disgust, the rarest, gains the most; angry, the most frequent, loses)."""
    import train.calibrate as cal
    from train.checkpoint import load_checkpoint

    d, _, val, _ = setup
    train = _skewed_train(d / "skew_train.parquet")
    prior = cal.class_prior(train, tuple(range(7)), 7)
    assert prior == pytest.approx([c / 100 for c in SKEW])
    assert np.log(prior) == pytest.approx(LOG_PRIOR, abs=1e-6)
    # the choice rule has its own test above; here tau is fixed so the bias is known in advance
    monkeypatch.setattr(cal, "choose_tau", lambda curve, drop: next(r for r in curve if r["tau"] == 0.5))
    rep = cal.calibrate(d / "plain", val, d / "skew_adj", cal.CalibrateConfig(), train_manifest=train)
    want_bias = [-0.5 * v for v in LOG_PRIOR]  # angry +0.458, disgust +1.956, ...
    assert rep["logit_adjustment"]["tau"] == 0.5
    assert rep["logit_adjustment"]["bias"] == pytest.approx(want_bias, abs=1e-5)
    a, _ = load_checkpoint(d / "plain")
    b, _ = load_checkpoint(d / "skew_adj")
    x = torch.randn(64, 1, 24, 24)
    with torch.no_grad():
        la, lb = a.eval()(x), b.eval()(x)
    torch.testing.assert_close(lb - la, torch.tensor(want_bias).expand(64, 7), rtol=0, atol=1e-4)
    # per-class prediction counts: the rarest class gains, the most frequent loses
    before = np.bincount(la.argmax(1).numpy(), minlength=7)
    after = np.bincount(lb.argmax(1).numpy(), minlength=7)
    assert after[1] > before[1] and after[0] <= before[0]
    assert after[0] < before[0] or before[0] == 0
    # on the validation rows: recall per class as the curve row at tau = 0.5 reports it
    from train.checkpoint import preprocess_of
    from train.evaluate import EvalConfig, label_mapping, model_logits, read_rows
    from features.labels import get_label_set

    side = json.loads((d / "plain" / "best.json").read_text())
    rows = read_rows(val, "val", label_mapping(side, get_label_set("fer2013"), tuple(side["labels"]["class_names"]), "none"))
    lv = model_logits(a.eval(), preprocess_of(side), rows, EvalConfig(), "none")
    rec = lambda p: np.array([(p[rows.targets == k] == k).mean() for k in range(7)])  # noqa: E731
    r0, r1 = rec(lv.argmax(1)), rec((lv + np.array(want_bias)).argmax(1))
    assert rep["chosen"]["uar"] == pytest.approx(r1.mean())
    assert rep["curve"][0]["uar"] == pytest.approx(r0.mean())
    assert r1[1] >= r0[1] and r1[0] <= r0[0]


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
        assert r.exit_code == 2 and want in r.output and "--split" not in r.output, r.output  # calibrate has none
    # --out on the run being calibrated would replace it with its adjusted copy
    before = (d / "run" / "best.safetensors").read_bytes()
    r = _cli(["calibrate", "-c", str(d / "run"), "--val", str(val), "--train-manifest", str(train),
              "--out", str(d / "run")])
    assert r.exit_code == 2 and "holds the checkpoint being calibrated" in r.output, r.output
    assert (d / "run" / "best.safetensors").read_bytes() == before
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


def test_config_bounds_and_tau_grid():
    from train.calibrate import CalibrateConfig
    from train.evaluate import EvalError

    assert CalibrateConfig().taus().tolist() == pytest.approx([round(0.05 * i, 2) for i in range(31)])
    assert CalibrateConfig(tau_max=0.3, tau_step=0.1).taus().tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert CalibrateConfig(tau_max=0.0).taus().tolist() == [0.0]
    assert CalibrateConfig(max_acc_drop=0.0).max_acc_drop == 0.0  # no drop allowed is a valid choice
    d = CalibrateConfig()
    assert (d.max_acc_drop, d.tau_max, d.tau_step, d.batch_size, d.device) == (0.5, 1.5, 0.05, 256, "cpu")
    for kw, msg in (({"max_acc_drop": -0.1}, r"^--max-acc-drop must be >= 0 points, got -0.1$"),
                    ({"tau_max": -1.0}, r"^--tau-max must be >= 0 and --tau-step > 0, got -1.0, 0.05$"),
                    ({"tau_step": 0.0}, r"^--tau-max must be >= 0 and --tau-step > 0, got 1.5, 0.0$")):
        with pytest.raises(EvalError, match=msg):
            CalibrateConfig(**kw)


def test_choose_tau_ties_and_the_exact_drop_boundary():
    from train.calibrate import choose_tau

    curve = [{"tau": 0.0, "acc": 0.60, "uar": 0.40}, {"tau": 0.5, "acc": 0.595, "uar": 0.45},
             {"tau": 1.0, "acc": 0.59, "uar": 0.45}, {"tau": 1.5, "acc": 0.50, "uar": 0.60}]
    assert choose_tau(curve, 0.0)["tau"] == 0.0
    assert choose_tau(curve, 0.5)["tau"] == 0.5  # 0.595 is exactly 0.5 points below: admissible
    assert choose_tau(curve, 1.0)["tau"] == 0.5  # equal UAR at 0.5 and 1.0: the smaller tau
    assert choose_tau(curve, 0.49)["tau"] == 0.0
    assert choose_tau(curve, 10.0)["tau"] == 1.5


def test_class_prior_counts_train_rows_of_model_classes_only(tmp_path):
    """Rows of other splits and classes the model lacks do not count; a class without training
    rows is refused by name."""
    from train.calibrate import class_prior
    from train.evaluate import EvalError

    m = _skewed_train(tmp_path / "t.parquet")
    # the model knows classes 0..5 of the manifest as 0..5 and not class 6 (surprise, 15 rows)
    prior = class_prior(m, (0, 1, 2, 3, 4, 5, None), 6)
    assert prior == pytest.approx([c / 85 for c in SKEW[:6]])
    # two manifest classes folded onto one model class
    prior = class_prior(m, (0, 0, 1, 1, 2, 2, 2), 3)
    assert prior == pytest.approx([42 / 100, 30 / 100, 28 / 100])
    with pytest.raises(EvalError, match=r"no training rows for class\(es\) \[3\]; the prior needs every class$"):
        class_prior(m, (0, 1, 2, None, None, None, None), 4)
    with pytest.raises(EvalError, match="no split=train rows of the model's classes; pass the manifest"):
        class_prior(m, (None,) * 7, 3)
    val_only = manifest(tmp_path / "v.parquet", "fer2013", n=14, split="val")
    with pytest.raises(EvalError, match="no split=train rows"):
        class_prior(val_only, tuple(range(7)), 7)


def test_report_records_what_was_chosen_where(setup, plot_calls):
    from features.manifest import file_sha256
    from train.calibrate import CalibrateConfig, calibrate

    d, train, val, _ = setup
    cfg = CalibrateConfig(max_acc_drop=2.0, tau_max=0.5, tau_step=0.25)
    rep = calibrate(d / "run", val, d / "rec", cfg, train_manifest=train)
    block = rep["logit_adjustment"]
    assert rep["config"] == {"max_acc_drop": 2.0, "tau_max": 0.5, "tau_step": 0.25, "batch_size": 256, "device": "cpu"}
    assert [r["tau"] for r in rep["curve"]] == [0.0, 0.25, 0.5]
    assert block["chosen_on"] == {"manifest": str(val), "split": "val", "rows": 42, "sha256": file_sha256(val)}
    assert block["source"] == {"path": str(d / "run" / "best.safetensors"), "sha256": file_sha256(d / "run" / "best.safetensors")}
    assert block["val_before"] == {k: rep["curve"][0][k] for k in ("acc", "uar", "f1")}
    assert block["val_after"] == {k: rep["chosen"][k] for k in ("acc", "uar", "f1")}
    assert block["rule"] == "highest val UAR within 2.0 points of the unadjusted val accuracy"
    assert block["method"] == "logit adjustment (Menon et al. 2021): logits - tau * log(train prior)"
    assert rep["checkpoint"] == str(d / "run") and rep["out"] == str(d / "rec") and rep["seconds"] >= 0
    assert rep["plot"] == str(d / "rec" / "calibrate.png")
    assert plot_calls == [(rep["curve"], rep["chosen"]["tau"], d / "rec" / "calibrate.png")]
    # calibrate.json is the report as returned, less the figure's path (drawn after it is written)
    text = (d / "rec" / "calibrate.json").read_text()
    assert text == json.dumps({k: v for k, v in rep.items() if k != "plot"}, indent=2) + "\n"
    assert 0 <= rep["seconds"] < 600 and rep["seconds"] == round(rep["seconds"], 2)
    side = json.loads((d / "rec" / "best.json").read_text())
    assert side["metrics"] == {"val_acc": rep["chosen"]["acc"], "val_uar": rep["chosen"]["uar"],
                               "val_f1": rep["chosen"]["f1"]}
    assert side["labels"] == json.loads((d / "run" / "best.json").read_text())["labels"]


def test_manifests_default_to_the_ones_the_checkpoint_records(setup):
    from train.calibrate import CalibrateConfig, calibrate
    from train.evaluate import EvalError

    d, train, val, _ = setup
    run = d / "recorded"
    tiny_checkpoint(run, seed=3)
    side = json.loads((run / "best.json").read_text())
    side["manifests"] = {"train": {"path": str(train)}, "val": {"path": str(val)}}
    (run / "best.json").write_text(json.dumps(side))
    rep = calibrate(run, None, d / "recorded_adj", CalibrateConfig(tau_max=0.1))
    assert rep["logit_adjustment"]["chosen_on"]["manifest"] == str(val)
    side["manifests"]["train"]["path"] = str(d / "moved.parquet")
    (run / "best.json").write_text(json.dumps(side))
    with pytest.raises(EvalError, match=r"^--train-manifest .*moved.parquet does not exist; pass the manifest "
                                        r"\(the checkpoint records .*moved.parquet as its train manifest\)$"):
        calibrate(run, None, d / "recorded_adj2", CalibrateConfig(tau_max=0.1))


def test_models_that_do_not_take_images_are_refused(setup, tmp_path):
    from test_eval import _save_any

    from train.calibrate import CalibrateConfig, calibrate
    from train.evaluate import EvalError

    _, train, val, _ = setup
    _save_any(tmp_path / "feat", "clip-adapter", 3, mode="feature", feature_dim=16, hidden_dim=32)
    with pytest.raises(EvalError, match=r"feat: calibrate takes image models; clip-adapter needs clips, "
                                        r"features or captions$"):
        calibrate(tmp_path / "feat", val, tmp_path / "out", CalibrateConfig(), train_manifest=train)
    assert not (tmp_path / "out").exists()


def test_progress_counts_every_validation_row(setup):
    from train.calibrate import CalibrateConfig, calibrate

    d, train, val, _ = setup
    seen = []
    calibrate(d / "run", val, d / "prog", CalibrateConfig(tau_max=0.0, batch_size=16), train_manifest=train,
              progress=seen.append)
    assert seen == [16, 16, 10]  # 42 validation rows in batches of 16


def _val_logits(run, val):
    """The model's validation logits computed here: decode, preprocess, forward."""
    from features.images import decode
    from features.manifest import read_manifest
    from train.checkpoint import load_checkpoint
    from train.transforms import Preprocess

    model, side = load_checkpoint(run)
    t, _ = read_manifest(val, ["image", "label_id", "split"])
    x = Preprocess.from_dict(side["preprocess"]).apply([decode(b)[0] for b in t.column("image").to_pylist()])
    with torch.no_grad():
        return model.eval()(x).numpy().astype(np.float64), t.column("label_id").to_numpy()


def test_curve_is_scikit_learn_on_the_models_own_validation_logits(setup):
    """Each curve row: accuracy, balanced accuracy and macro-F1 (all 7 classes) of
    argmax(logits - tau * log prior) on the val rows, logits computed here; the choice follows."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    from train.calibrate import CalibrateConfig, calibrate, choose_tau

    d, _, val, _ = setup
    train = _skewed_train(d / "skew_train2.parquet")
    cfg = CalibrateConfig(max_acc_drop=3.0, tau_max=1.0, tau_step=0.25)
    rep = calibrate(d / "run", val, d / "curve", cfg, train_manifest=train)
    logits, y = _val_logits(d / "run", val)
    assert len(set(logits.argmax(1).tolist())) > 2  # a model whose predictions vary
    want = []
    for tau in (0.0, 0.25, 0.5, 0.75, 1.0):
        p = (logits - tau * np.array(LOG_PRIOR)).argmax(1)
        want.append({"tau": tau, "acc": accuracy_score(y, p), "uar": balanced_accuracy_score(y, p),
                     "f1": f1_score(y, p, average="macro", labels=list(range(7)), zero_division=0)})
    assert [r["tau"] for r in rep["curve"]] == [r["tau"] for r in want]
    for got, w in zip(rep["curve"], want):
        assert got == pytest.approx(w)
    assert len({(r["acc"], r["uar"]) for r in rep["curve"]}) > 1  # tau moves the scores here
    assert rep["chosen"] == choose_tau(rep["curve"], 3.0)
    assert rep["logit_adjustment"]["bias"] == pytest.approx([-rep["chosen"]["tau"] * v for v in LOG_PRIOR], abs=1e-5)


def test_adjustment_curve_f1_and_the_tau_grid_values():
    """Macro-F1 is over all the model's classes (a class never predicted scores 0), each row
    carries its tau as a float."""
    from sklearn.metrics import f1_score

    from train.calibrate import adjustment_curve

    logits = np.array([[2.0, 0, 0], [0, 2, 0], [2, 0, 0], [0, 0, 1], [1.5, 1, 0]])
    y = [0, 1, 1, 2, 2]
    log_prior = np.log([0.6, 0.3, 0.1])
    curve = adjustment_curve(logits, y, log_prior, np.array([0.0, 2.0]))
    for row, tau in zip(curve, (0.0, 2.0)):
        p = (logits - tau * log_prior).argmax(1)
        assert type(row["tau"]) is float and row["tau"] == tau
        assert row["f1"] == pytest.approx(f1_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0))
        assert set(row) == {"tau", "acc", "uar", "f1"}
    # by hand: tau = 0 predicts 0, 1, 0, 2, 0 (3 of 5 right; recalls 1, 1/2, 1/2); tau = 2 adds
    # 1.02, 2.41, 4.61 and predicts class 2 everywhere (recalls 0, 0, 1; F1 of class 2 = 4/7)
    assert (curve[0]["acc"], curve[0]["uar"]) == pytest.approx((0.6, 2 / 3))
    assert (curve[1]["acc"], curve[1]["uar"], curve[1]["f1"]) == pytest.approx((0.4, 1 / 3, 4 / 21))


def test_refusals_name_the_input_and_what_to_do(setup, tmp_path):
    from features.manifest import ManifestError, open_manifest
    from test_eval import _save_any
    from train.calibrate import CalibrateConfig, calibrate
    from train.evaluate import EvalError

    d, train, val, _ = setup
    cfg = CalibrateConfig(tau_max=0.0)
    adj = tmp_path / "adj"
    calibrate(d / "run", val, adj, CalibrateConfig(max_acc_drop=100.0, tau_max=0.5, tau_step=0.5), train_manifest=train)
    tau = json.loads((adj / "best.json").read_text())["logit_adjustment"]["tau"]
    with pytest.raises(EvalError) as e:
        calibrate(adj, val, tmp_path / "twice", cfg, train_manifest=train)
    assert str(e.value) == f"{adj} is already logit-adjusted (tau {tau}); calibrate the checkpoint it came from instead"
    # a model that fuses caption text takes images too, and is refused as well
    torch.manual_seed(0)
    _save_any(tmp_path / "text", "miniaffectgpt", 1, text_dim=16, hidden=16, heads=2)
    with pytest.raises(EvalError) as e:
        calibrate(tmp_path / "text", val, tmp_path / "o", cfg, train_manifest=train)
    assert str(e.value) == f"{tmp_path / 'text'}: calibrate takes image models; miniaffectgpt needs clips, features or captions"
    # nothing recorded and nothing passed
    with pytest.raises(EvalError) as e:
        calibrate(d / "run", None, tmp_path / "o", cfg, train_manifest=train)
    assert str(e.value) == "--val . does not exist; pass the manifest (the checkpoint records None as its val manifest)"
    with pytest.raises(EvalError) as e:
        calibrate(d / "run", val, tmp_path / "o", cfg)
    assert str(e.value) == ("--train-manifest . does not exist; pass the manifest (the checkpoint records None as its "
                            "train manifest)")
    # a file that is not a manifest, in either role: the manifest reader's own line
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ManifestError) as want:
        open_manifest(junk)
    for v, t in ((junk, train), (val, junk)):
        with pytest.raises(EvalError) as e:
            calibrate(d / "run", v, tmp_path / "o", cfg, train_manifest=t)
        assert str(e.value) == str(want.value)
    # a manifest of another label set is refused, never scored zero-shot
    ck_val = manifest(tmp_path / "ck_val.parquet", "ckplus", n=7, split="val")
    ck_train = manifest(tmp_path / "ck_train.parquet", "ckplus", n=7, split="train")
    for v, t in ((ck_val, train), (val, ck_train)):
        with pytest.raises(EvalError, match=r"do not match the manifest's label set 'ckplus' .*pass --label-map auto"):
            calibrate(d / "run", v, tmp_path / "o", cfg, train_manifest=t)
    assert not (tmp_path / "o").exists()  # nothing written by any refusal


def test_out_folder_is_made_with_its_parents_or_reused(setup, tmp_path):
    from train.calibrate import CalibrateConfig, calibrate

    d, train, val, _ = setup
    cfg = CalibrateConfig(tau_max=0.0)
    deep = tmp_path / "a" / "b" / "c"
    calibrate(d / "run", val, deep, cfg, train_manifest=train)
    assert sorted(p.name for p in deep.iterdir()) == ["best.json", "best.safetensors", "calibrate.json"]
    keep = deep / "notes.txt"
    keep.write_text("mine")
    calibrate(d / "run", val, deep, cfg, train_manifest=train)  # an existing folder is written into
    assert keep.read_text() == "mine"


def test_tau_grid_is_rounded_to_six_decimals_and_uar_ties_to_twelve():
    """Grid points are rounded to 1e-6 (0.05 * 3 is 0.15, not 0.15000000000000002), and UARs
    that agree to 12 decimals are a tie (recalls summed in another order differ in the last
    bits), which goes to the smaller tau."""
    from train.calibrate import CalibrateConfig, choose_tau

    assert CalibrateConfig(tau_max=0.15, tau_step=0.05).taus().tolist() == [0.0, 0.05, 0.1, 0.15]
    assert CalibrateConfig(tau_max=3e-6, tau_step=1.5e-6).taus().tolist() == [0.0, 2e-6, 3e-6]
    curve = [{"tau": 0.0, "acc": 0.6, "uar": 0.4}, {"tau": 0.5, "acc": 0.6, "uar": 0.45},
             {"tau": 1.0, "acc": 0.6, "uar": 0.45 + 3e-13}]
    assert choose_tau(curve, 0.0)["tau"] == 0.5
    curve[2]["uar"] = 0.45 + 3e-12
    assert choose_tau(curve, 0.0)["tau"] == 1.0


def test_device_batch_size_and_plain_logits_reach_the_model(setup, monkeypatch):
    """The configured device goes to the loader and to the logits pass, with the batch size,
    without test-time augmentation and without figures (spied, then run for real)."""
    import train.calibrate as cal
    import train.checkpoint as ckpt_mod

    d, train_m, val, _ = setup
    seen = {}
    real_load, real_logits = ckpt_mod.load_trained, cal.model_logits

    def load(path, device=None):
        seen["load"] = (Path(path), device)
        return real_load(path, device)

    def logits(model, preprocess, rows, cfg, tta, extra=None, progress=None):
        seen["logits"] = (cfg.device, cfg.batch_size, cfg.plots, tta, extra, len(rows.targets))
        return real_logits(model, preprocess, rows, cfg, tta, extra, progress)

    monkeypatch.setattr(ckpt_mod, "load_trained", load)
    monkeypatch.setattr(cal, "model_logits", logits)
    # "cpu:0" rather than the default "cpu", so a dropped argument cannot pass for a passed one
    cal.calibrate(d / "run", val, d / "spied", cal.CalibrateConfig(tau_max=0.0, batch_size=7, device="cpu:0"),
                  train_manifest=train_m)
    assert seen == {"load": (d / "run", "cpu:0"), "logits": ("cpu:0", 7, False, "none", None, 42)}


def test_seconds_is_the_wall_time_rounded_to_hundredths(setup, monkeypatch):
    """A clock read at the start (10.0 s) and at the end (12.3456 s): 2.35 s is reported."""
    import types

    import train.calibrate as cal

    d, train_m, val, _ = setup
    ticks = iter([10.0, 12.3456])
    monkeypatch.setattr(cal, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    rep = cal.calibrate(d / "run", val, d / "timed", cal.CalibrateConfig(tau_max=0.0), train_manifest=train_m)
    assert rep["seconds"] == 2.35 and type(rep["seconds"]) is float
    assert json.loads((d / "timed" / "calibrate.json").read_text())["seconds"] == 2.35


def test_the_accuracy_bound_is_inclusive():
    """A row exactly at the bound (base - drop / 100 - 1e-12, the same float) is admissible."""
    from train.calibrate import choose_tau

    bound = 0.6 - 0.5 / 100 - 1e-12
    curve = [{"tau": 0.0, "acc": 0.6, "uar": 0.4}, {"tau": 0.5, "acc": bound, "uar": 0.5}]
    assert choose_tau(curve, 0.5)["tau"] == 0.5
