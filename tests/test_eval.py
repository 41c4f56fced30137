"""`train eval`: variants, TTA, zero-shot mapping, label-set mismatch, plots and the report round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.images import encode, pixel_hash
from features.labels import get_label_set
from features.manifest import to_table, write_manifest

SIZE = 24


def tiny_checkpoint(run_dir: Path, label_set: str = "fer2013", preset: str = "7", log: bool = False,
                    seed: int = 0) -> Path:
    import torch

    from features.labels import get_preset
    from train.checkpoint import save_checkpoint
    from train.models.registry import build_model
    from train.transforms import Preprocess

    torch.manual_seed(seed)
    ls = get_label_set(label_set)
    names, _ = get_preset(preset).apply(ls)
    model = build_model("vgg", num_classes=len(names), in_chans=1, input_size=SIZE, width=0.125, fc_dim=16,
                        stages=(64, 128))
    side = {"labels": {"label_set": ls.name, "preset": preset, "class_names": list(names)},
            "preprocess": Preprocess.default_for(SIZE, 1).to_dict()}
    path = save_checkpoint(run_dir, model, side)
    if log:
        with open(run_dir / "log.jsonl", "w") as f:
            for e in range(1, 4):
                f.write(json.dumps({"epoch": e, "train_loss": 2.0 / e, "val_uar": 0.2 * e, "val_acc": 0.25 * e}) + "\n")
    return path


def manifest(path: Path, label_set: str, n: int = 42, seed: int = 0, groups: str | None = None,
             split: str = "test") -> Path:
    ls = get_label_set(label_set)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = rng.integers(0, 256, size=(SIZE + 6, SIZE + 6), dtype=np.uint8)
        k = i % len(ls)
        rows.append({
            "sample_id": f"{label_set}-{i:04d}", "dataset": label_set, "split": split,
            "orig_split": "PrivateTest" if i % 2 else "PublicTest", "source_path": f"x/{i}.png",
            "label": ls.names[k], "label_id": k, "label_set": ls.name, "image": encode(img),
            "image_format": "png", "width": SIZE + 6, "height": SIZE + 6, "channels": 1,
            "pixel_hash": pixel_hash(img), "leak": i % 5 == 0,
            "sequence": f"S{i % len(ls)}_{i // (2 * len(ls))}" if groups == "sequence" else None,
            "clip_id": f"c{i % len(ls)}_{i // (2 * len(ls))}" if groups == "clip_id" else None,
        })
    return write_manifest(to_table(rows), path, ls)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    tiny_checkpoint(d, log=True)
    return d


@pytest.fixture(scope="module")
def fer_test(tmp_path_factory):
    return manifest(tmp_path_factory.mktemp("m") / "fer_test.parquet", "fer2013")


@pytest.fixture(scope="module")
def report(ckpt, fer_test, tmp_path_factory):
    from train.evaluate import EvalConfig, evaluate

    out = tmp_path_factory.mktemp("eval")
    rep = evaluate(ckpt, fer_test, EvalConfig(tta="flip", tsne_points=30), out)
    return rep, out


def test_variants_side_by_side(report):
    rep, _ = report
    v = rep["variants"]
    assert set(v) == {"all", "leak_free", "private_test", "private_test_leak_free"}
    assert v["all"]["plain"]["n"] == 42
    assert v["leak_free"]["plain"]["n"] == 42 - 9  # i % 5 == 0 for 9 of 42 rows
    assert v["private_test"]["plain"]["n"] == 21
    for modes in v.values():
        assert set(modes) == {"plain", "flip"}  # TTA beside the plain number, never instead
    assert rep["rows"]["leaked"] == 9
    assert not rep["label_mapping"]["zero_shot"]


def test_numbers_are_the_metrics_of_the_models_logits(ckpt, fer_test, report):
    """Re-derive the plain WAR from the model directly: the report is not made up."""
    import torch

    from features.images import decode
    from features.manifest import read_manifest
    from train.checkpoint import load_checkpoint
    from train.transforms import Preprocess

    rep, _ = report
    model, side = load_checkpoint(ckpt)
    t, _ = read_manifest(fer_test, ["image", "label_id"])
    x = Preprocess.from_dict(side["preprocess"]).apply([decode(b)[0] for b in t.column("image").to_pylist()])
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    war = float((pred == t.column("label_id").to_numpy()).mean())
    assert rep["variants"]["all"]["plain"]["war"] == pytest.approx(war)


def test_plots_written_and_non_empty(report):
    _, out = report
    for name in ("confusion_counts", "confusion_normalised", "roc", "pr", "reliability", "tsne", "training_curves"):
        p = out / f"{name}.png"
        assert p.is_file() and p.stat().st_size > 5000, name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_round_trip(report):
    rep, out = report
    back = json.loads((out / "report.json").read_text())
    assert back["variants"] == json.loads(json.dumps(rep["variants"]))
    md = (out / "report.md").read_text()
    assert "| leak_free | flip |" in md and "![roc](roc.png)" in md
    from train.report import render_markdown

    assert render_markdown(back) == md  # the markdown is a pure function of the JSON
    assert f"{100 * rep['variants']['all']['plain']['war']:.2f} %" in md


def _model_and_inputs(ckpt, fer_test):
    """The checkpoint's model and its preprocessed test images (N, 1, 24, 24), built directly."""
    from features.images import decode
    from features.manifest import read_manifest
    from train.checkpoint import load_checkpoint
    from train.transforms import Preprocess

    model, side = load_checkpoint(ckpt)
    t, _ = read_manifest(fer_test, ["image", "label_id"])
    x = Preprocess.from_dict(side["preprocess"]).apply([decode(b)[0] for b in t.column("image").to_pylist()])
    return model.eval(), x, t.column("label_id").to_numpy()


def _tta_logits(ckpt, fer_test, tta):
    from train.checkpoint import preprocess_of
    from train.checkpoint import load_checkpoint
    from train.evaluate import EvalConfig, label_mapping, model_logits, read_rows

    model, side = load_checkpoint(ckpt)
    ls = get_label_set("fer2013")
    rows = read_rows(fer_test, "test", label_mapping(side, ls, tuple(side["labels"]["class_names"]), "none"))
    return model_logits(model.eval(), preprocess_of(side), rows, EvalConfig(batch_size=16), tta)


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror(ckpt, fer_test, report):
    """Horizontal flip (the last axis), averaged in logit space, computed by hand; an up-down
    flip gives other numbers on this model, so the test tells the two apart."""
    import torch

    from train.metrics import score

    model, x, y = _model_and_inputs(ckpt, fer_test)
    with torch.no_grad():
        want = ((model(x) + model(x.flip(-1))) / 2).numpy()
        upside_down = ((model(x) + model(x.flip(-2))) / 2).numpy()
    assert not np.allclose(want, upside_down, atol=1e-4)
    got = _tta_logits(ckpt, fer_test, "flip")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and the report's flip numbers are the scores of exactly these logits
    rep, _ = report
    hand = score(want, y, rep["class_names"])
    flip = rep["variants"]["all"]["flip"]
    assert (flip["war"], flip["nll"], flip["macro_f1"]) == pytest.approx((hand.war, hand.nll, hand.macro_f1), abs=1e-5)


def test_tencrop_is_the_mean_over_a_hand_built_crop_set(ckpt, fer_test):
    """Ten-crop: resize 24 -> 27 (x1.125), take the four corners and the centre of the image and
    of its mirror image, average the logits. The crops are cut here by slicing."""
    import torch
    import torch.nn.functional as F

    from train.evaluate import EvalConfig, evaluate

    model, x, _ = _model_and_inputs(ckpt, fer_test)
    up = F.interpolate(x, size=(27, 27), mode="bilinear", align_corners=False, antialias=True)
    crops = []
    for img in (up, up.flip(-1)):
        # corners, then the centre (torchvision's centre crop starts at round(3 / 2) = 2)
        crops += [img[..., :24, :24], img[..., :24, 3:], img[..., 3:, :24], img[..., 3:, 3:], img[..., 2:26, 2:26]]
    assert len(crops) == 10 and all(c.shape[-2:] == (24, 24) for c in crops)
    with torch.no_grad():
        want = torch.stack([model(c) for c in crops]).mean(0).numpy()
        plain = model(x).numpy()
    assert not np.allclose(want, plain, atol=1e-4)
    np.testing.assert_allclose(_tta_logits(ckpt, fer_test, "tencrop"), want, rtol=1e-5, atol=1e-5)
    rep = evaluate(ckpt, fer_test, EvalConfig(tta="tencrop", plots=False))
    a, b = rep["variants"]["all"]["plain"], rep["variants"]["all"]["tencrop"]
    assert a["n"] == b["n"] == 42 and a["nll"] != b["nll"]


def test_zero_shot_on_ckplus_excludes_contempt_and_groups_sequences(ckpt, tmp_path):
    from train.evaluate import EvalConfig, evaluate

    ck = manifest(tmp_path / "ck.parquet", "ckplus", n=28, groups="sequence")
    rep = evaluate(ckpt, ck, EvalConfig(plots=False))
    lm = rep["label_mapping"]
    assert lm["zero_shot"] and lm["excluded_manifest_classes"] == ["contempt"]
    assert lm["manifest_to_model"]["anger"] == "angry" and lm["manifest_to_model"]["sadness"] == "sad"
    assert "neutral" not in lm["scored_classes"] and len(lm["scored_classes"]) == 6
    assert rep["rows"]["scored"] == 24 and rep["rows"]["excluded_classes"] == 4
    assert "per_sequence" in rep["variants"]
    assert rep["variants"]["per_sequence"]["plain"]["n"] == 12  # 6 classes x 2 sequences each
    assert "war_unrestricted" in rep["variants"]["all"]["plain"]


def test_label_set_mismatch_is_a_clear_error(ckpt, tmp_path):
    from train.evaluate import EvalConfig, EvalError, evaluate

    raf = manifest(tmp_path / "raf.parquet", "rafdb-compound", n=11)
    with pytest.raises(EvalError, match="no class maps across"):
        evaluate(ckpt, raf, EvalConfig(plots=False))
    ck = manifest(tmp_path / "ck.parquet", "ckplus", n=7)
    with pytest.raises(EvalError, match="do not match the manifest's label set 'ckplus'"):
        evaluate(ckpt, ck, EvalConfig(plots=False, label_map="none"))


def test_preset_checkpoint_maps_seven_classes_onto_two(tmp_path, fer_test):
    from train.evaluate import EvalConfig, evaluate

    d = tmp_path / "run2"
    tiny_checkpoint(d, preset="2")
    rep = evaluate(d, fer_test, EvalConfig(plots=False))
    assert rep["class_names"] == ["positive", "negative"]
    assert rep["label_mapping"]["manifest_to_model"]["happy"] == "positive"
    assert rep["label_mapping"]["manifest_to_model"]["fear"] == "negative"
    assert rep["variants"]["all"]["plain"]["n"] == 42


def test_no_test_rows_and_missing_manifest(ckpt, tmp_path):
    from train.evaluate import EvalConfig, EvalError, evaluate

    tr = manifest(tmp_path / "tr.parquet", "fer2013", n=7, split="train")
    with pytest.raises(EvalError, match="no rows with split='test'"):
        evaluate(ckpt, tr, EvalConfig(plots=False))
    with pytest.raises(EvalError, match="does not exist"):
        evaluate(ckpt, tmp_path / "nope.parquet", EvalConfig(plots=False))
    with pytest.raises(EvalError, match="--tta 'x' unknown"):
        EvalConfig(tta="x")


def test_cli_eval(ckpt, fer_test, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt), "--manifest", str(fer_test),
                                 "--out", str(tmp_path / "e"), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e" / "report.json").is_file() and "leak_free" in r.output
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "none"), "--manifest", str(fer_test)])
    assert r.exit_code == 2 and "train eval: " in r.output and "Traceback" not in r.output


def test_text_fusion_model_with_caption_features(tmp_path, fer_test):
    """miniaffectgpt reads its caption vectors from a feature file joined on sample_id."""
    import pyarrow.parquet as pq
    import torch

    from features.encoders import features_table, write_features
    from train.api import EmotionPredictor, PredictError
    from train.checkpoint import load_checkpoint, save_checkpoint
    from train.evaluate import EvalConfig, EvalError, evaluate
    from train.models.registry import build_model
    from train.transforms import Preprocess

    torch.manual_seed(0)
    model = build_model("miniaffectgpt", num_classes=7, in_chans=1, input_size=SIZE, text_dim=16, hidden=16, heads=2)
    side = {"labels": {"label_set": "fer2013", "preset": "7", "class_names": list(get_label_set("fer2013").names)},
            "preprocess": Preprocess.default_for(SIZE, 1).to_dict()}
    save_checkpoint(tmp_path / "run", model, side)
    ids = pq.read_table(fer_test, columns=["sample_id"]).column("sample_id").to_pylist()
    vec = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    feats = write_features(features_table(ids, vec), tmp_path / "text.parquet", {"encoder": "test"})
    rep = evaluate(tmp_path / "run", fer_test, EvalConfig(text_features=feats, tsne_points=20), tmp_path / "out")
    assert rep["variants"]["all"]["plain"]["n"] == 42 and (tmp_path / "out" / "tsne.png").is_file()
    m, _ = load_checkpoint(tmp_path / "run")  # the report's numbers are this model on these vectors
    from features.images import decode
    from features.manifest import read_manifest

    t, _ = read_manifest(fer_test, ["image", "label_id"])
    x = Preprocess.default_for(SIZE, 1).apply([decode(b)[0] for b in t.column("image").to_pylist()])
    with torch.no_grad():
        pred = m(x, text=torch.from_numpy(vec)).argmax(1).numpy()
    assert rep["variants"]["all"]["plain"]["war"] == pytest.approx(float((pred == t.column("label_id").to_numpy()).mean()))
    with pytest.raises(EvalError, match="pass --text-features"):
        evaluate(tmp_path / "run", fer_test, EvalConfig(plots=False))
    short = write_features(features_table(ids[:10], vec[:10]), tmp_path / "short.parquet", {"encoder": "test"})
    with pytest.raises(EvalError, match="lacks 32 of the 42 rows"):
        evaluate(tmp_path / "run", fer_test, EvalConfig(plots=False, text_features=short))
    with pytest.raises(PredictError, match="caption text features"):
        EmotionPredictor.from_checkpoint(tmp_path / "run")


def _save_any(run_dir: Path, name: str, channels: int, **cfg):
    import torch

    from train.checkpoint import save_checkpoint
    from train.models.registry import build_model
    from train.transforms import Preprocess

    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_chans=channels, input_size=SIZE, **cfg)
    side = {"labels": {"label_set": "fer2013", "preset": "7", "class_names": list(get_label_set("fer2013").names)},
            "preprocess": Preprocess.default_for(SIZE, channels).to_dict() if model.input_kind != "feature" else None}
    save_checkpoint(run_dir, model, side)
    return model


@pytest.mark.parametrize("name,cfg", [("dfew-2d", {"backbone": "resnet18"}), ("r3d18", {})])
def test_video_models_scored_on_whole_clips(tmp_path, name, cfg):
    """Frames sharing a clip_id become one (T, C, H, W) clip, sampled as the trainer samples."""
    import torch

    from train.checkpoint import load_checkpoint
    from train.evaluate import EvalConfig, evaluate

    _save_any(tmp_path / "run", name, 3, frames=4, **cfg)
    m = manifest(tmp_path / "dfew.parquet", "fer2013", n=28, groups="clip_id")  # 14 clips of 2 frames
    rep = evaluate(tmp_path / "run", m, EvalConfig(plots=False, tta="flip"))
    assert rep["rows"]["unit"] == "clip" and rep["rows"]["frame_rows"] == 28
    assert rep["variants"]["all"]["plain"]["n"] == 14 and set(rep["variants"]["all"]) == {"plain", "flip"}
    model, _ = load_checkpoint(tmp_path / "run")
    assert model.input_kind == "clip"
    # every clip by hand: clip c{k}_{j} holds rows i with i % 7 == k and i // 14 == j, two frames
    # each, and T=4 spread evenly over two frames repeats each one: (a, a, b, b)
    from features.images import decode
    from features.manifest import read_manifest
    from sklearn.metrics import confusion_matrix
    from train.transforms import Preprocess

    t, _ = read_manifest(m, ["image", "clip_id", "label_id"])
    imgs = [decode(b)[0] for b in t.column("image").to_pylist()]
    clips: dict = {}
    for i, c in enumerate(t.column("clip_id").to_pylist()):
        clips.setdefault(c, []).append(i)
    assert clips["c0_0"] == [0, 7]
    pre = Preprocess.default_for(SIZE, 3)
    x = torch.stack([pre.apply([imgs[a], imgs[a], imgs[b], imgs[b]]) for a, b in (clips[c] for c in sorted(clips))])
    y = [int(t.column("label_id")[clips[c][0]].as_py()) for c in sorted(clips)]
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    assert rep["variants"]["all"]["plain"]["confusion"] == confusion_matrix(y, pred, labels=range(7)).tolist()
    frames_only = manifest(tmp_path / "frames.parquet", "fer2013", n=14)
    if name == "dfew-2d":  # rows without clip_id: each frame is a 1-frame clip
        assert evaluate(tmp_path / "run", frames_only, EvalConfig(plots=False))["rows"]["unit"] == "row"


def test_feature_model_reads_image_features(tmp_path, fer_test):
    import pyarrow.parquet as pq

    from features.encoders import features_table, write_features
    from train.evaluate import EvalConfig, EvalError, evaluate

    _save_any(tmp_path / "run", "clip-adapter", 3, mode="feature", feature_dim=16, hidden_dim=32)
    ids = pq.read_table(fer_test, columns=["sample_id"]).column("sample_id").to_pylist()
    vec = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    feats = write_features(features_table(ids, vec), tmp_path / "img.parquet", {"encoder": "test"})
    rep = evaluate(tmp_path / "run", fer_test, EvalConfig(image_features=feats, tsne_points=20), tmp_path / "o")
    assert rep["variants"]["all"]["plain"]["n"] == 42 and (tmp_path / "o" / "tsne.png").is_file()
    with pytest.raises(EvalError, match="--image-features"):
        evaluate(tmp_path / "run", fer_test, EvalConfig(plots=False))
    with pytest.raises(EvalError, match="--tta needs images"):
        evaluate(tmp_path / "run", fer_test, EvalConfig(plots=False, tta="flip", image_features=feats))


def test_ensemble_averages_member_probabilities(ckpt, fer_test, tmp_path):
    """Two checkpoints: the ensemble's WAR is the argmax of the members' mean probability, each
    member's own score is reported, and members that predict other classes are refused."""
    import torch

    from features.images import decode
    from features.manifest import read_manifest
    from train.checkpoint import load_checkpoint
    from train.evaluate import EvalConfig, EvalError, evaluate
    from train.transforms import Preprocess

    other = tmp_path / "seed1"
    tiny_checkpoint(other, seed=1)
    rep = evaluate([ckpt, other], fer_test, EvalConfig(tta="flip", plots=False))
    t, _ = read_manifest(fer_test, ["image", "label_id"])
    y = t.column("label_id").to_numpy()
    probs, wars = [], []
    for c in (ckpt, other):
        model, side = load_checkpoint(c)
        x = Preprocess.from_dict(side["preprocess"]).apply([decode(b)[0] for b in t.column("image").to_pylist()])
        with torch.no_grad():
            p = model.eval()(x).softmax(1).numpy()
        probs.append(p)
        wars.append(float((p.argmax(1) == y).mean()))
    assert not np.allclose(probs[0], probs[1])
    want = float(((probs[0] + probs[1]).argmax(1) == y).mean())
    assert rep["variants"]["all"]["plain"]["war"] == pytest.approx(want)
    assert [m["plain"]["war"] for m in rep["members"]] == pytest.approx(wars)
    assert set(rep["variants"]["all"]) == {"plain", "flip"} and rep["model"] == "ensemble of 2"

    plus = tmp_path / "ferplus"
    tiny_checkpoint(plus, label_set="ferplus")
    with pytest.raises(EvalError, match="same classes"):
        evaluate([ckpt, plus], fer_test, EvalConfig(plots=False))


def test_cli_eval_ensemble(ckpt, fer_test, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    tiny_checkpoint(tmp_path / "b", seed=2)
    r = CliRunner().invoke(app, ["eval", "-c", str(ckpt), "-c", str(tmp_path / "b"), "--manifest", str(fer_test),
                                 "--out", str(tmp_path / "e"), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert r.output.count("member ") == 2
    assert "Ensemble members" in (tmp_path / "e" / "report.md").read_text()
