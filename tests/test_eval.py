"""`train eval`: variants, TTA, zero-shot mapping, label-set mismatch, plots and the report round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
# imported here, at collection, rather than in each test: a process that forks per test run
# (the mutation benchmark's) then inherits torch and the evaluator already loaded
import torch  # noqa: F401

import train.evaluate  # noqa: F401
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


# what the trainer records about the epoch it kept; train eval copies it into the report
CKPT_META = {"epoch": 3, "selected_on": "val_uar", "metrics": {"val_uar": 0.5, "val_acc": 0.25}}


def spread_head(run_dir: Path, images: Path, seed: int = 0, extra: dict | None = None) -> Path:
    """Re-draw the tiny model's head so its predictions spread over the classes on `images`'
    rows (an untrained net gives every row nearly the same logits, hence one predicted class,
    and a metric that swaps classes would go unseen): standardised penultimate features times a
    seeded random matrix."""
    from features.images import decode
    from features.manifest import read_manifest
    from train.checkpoint import load_checkpoint, preprocess_of, save_checkpoint

    model, side = load_checkpoint(run_dir)
    t, _ = read_manifest(images, ["image"])
    x = preprocess_of(side).apply([decode(b)[0] for b in t.column("image").to_pylist()])
    seen = []
    hook = model.head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        model(x)
        hook.remove()
        f = seen[0]
        mu, sd = f.mean(0), f.std(0)
        live = sd > 1e-5
        w = torch.zeros(model.head.weight.shape)
        w[:, live] = torch.randn(w.shape[0], int(live.sum()), generator=torch.Generator().manual_seed(seed)) / sd[live]
        model.head.weight.copy_(w)
        model.head.bias.copy_(-w @ mu)
    save_checkpoint(run_dir, model, {**side, **(extra or {})})
    return run_dir


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, fer_test):
    d = tmp_path_factory.mktemp("run")
    tiny_checkpoint(d, log=True)
    return spread_head(d, fer_test, extra=CKPT_META)


@pytest.fixture(scope="module")
def fer_test(tmp_path_factory):
    return manifest(tmp_path_factory.mktemp("m") / "fer_test.parquet", "fer2013")


@pytest.fixture(scope="module")
def report(ckpt, fer_test, tmp_path_factory):
    """Every number, no figures (the figures have their own fixture below)."""
    from train.evaluate import EvalConfig, evaluate

    out = tmp_path_factory.mktemp("eval")
    rep = evaluate(ckpt, fer_test, EvalConfig(tta="flip", plots=False), out)
    return rep, out


@pytest.fixture(scope="module")
def plotted(ckpt, tmp_path_factory):
    """The figures, drawn for real once, on 8 rows (enough for t-SNE and a few mistakes)."""
    from train.evaluate import EvalConfig, evaluate

    d = tmp_path_factory.mktemp("plotted")
    small = manifest(d / "small.parquet", "fer2013", n=8, seed=4)
    rep = evaluate(ckpt, small, EvalConfig(tsne_points=8), d / "out")
    return rep, d / "out"


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


def test_plots_written_and_non_empty(plotted):
    rep, out = plotted
    names = ("confusion_counts", "confusion_normalised", "roc", "pr", "reliability", "tsne", "worst_confused",
             "training_curves")
    assert rep["plots"] == {k: f"{k}.png" for k in names}
    for name in names:
        p = out / f"{name}.png"
        assert p.is_file() and p.stat().st_size > 5000, name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "![roc](roc.png)" in md and "![worst_confused](worst_confused.png)" in md


def test_report_round_trip(report):
    rep, out = report
    back = json.loads((out / "report.json").read_text())
    assert back["variants"] == json.loads(json.dumps(rep["variants"]))
    assert "plots" not in back and not list(out.glob("*.png"))  # --no-plots draws nothing
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    md = (out / "report.md").read_text()
    assert "| leak_free | flip |" in md
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
    rep = evaluate(tmp_path / "run", fer_test, EvalConfig(text_features=feats, plots=False))
    assert rep["variants"]["all"]["plain"]["n"] == 42
    m, side = load_checkpoint(tmp_path / "run")  # the report's numbers are this model on these vectors
    from features.images import decode
    from features.manifest import read_manifest
    from train.evaluate import label_mapping, model_features, read_rows

    t, _ = read_manifest(fer_test, ["image", "label_id"])
    x = Preprocess.default_for(SIZE, 1).apply([decode(b)[0] for b in t.column("image").to_pylist()])
    with torch.no_grad():
        pred = m(x, text=torch.from_numpy(vec)).argmax(1).numpy()
        want_feats = m.forward_features(x, text=torch.from_numpy(vec)).reshape(42, -1).numpy()
    # the t-SNE features of a text model are its forward_features on the same caption vectors
    rows = read_rows(fer_test, "test", label_mapping(side, get_label_set("fer2013"), tuple(side["labels"]["class_names"])))
    idx = np.array([5, 0, 41, 7])
    got = model_features(m, Preprocess.default_for(SIZE, 1), rows, idx, EvalConfig(batch_size=3), {"text": vec})
    np.testing.assert_allclose(got, want_feats[idx], rtol=1e-5, atol=1e-5)
    assert rep["variants"]["all"]["plain"]["war"] == pytest.approx(float((pred == t.column("label_id").to_numpy()).mean()))
    with pytest.raises(EvalError) as e:
        evaluate(tmp_path / "run", fer_test, EvalConfig(plots=False))
    assert str(e.value) == ("this model fuses caption text: pass --text-features F (made by `pipeline embed` on "
                            "this manifest's captions)")
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
    rep = evaluate(tmp_path / "run", fer_test, EvalConfig(image_features=feats, plots=False))
    assert rep["variants"]["all"]["plain"]["n"] == 42
    import torch

    from train.checkpoint import load_checkpoint
    from train.evaluate import label_mapping, model_features, model_logits, read_rows

    m, side = load_checkpoint(tmp_path / "run")
    rows = read_rows(fer_test, "test", label_mapping(side, get_label_set("fer2013"), tuple(side["labels"]["class_names"])),
                     decode_images=False)
    assert rows.images == []  # a feature model reads no pixels
    with torch.no_grad():
        want = m(torch.from_numpy(vec)).numpy()
        want_feats = m.forward_features(torch.from_numpy(vec)).reshape(42, -1).numpy()
    got = model_logits(m, None, rows, EvalConfig(batch_size=5), "none", {"x": vec})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    from train.metrics import score

    hand = score(want, rows.targets, rep["class_names"])
    assert rep["variants"]["all"]["plain"]["war"] == pytest.approx(hand.war)
    assert rep["variants"]["all"]["plain"]["nll"] == pytest.approx(hand.nll, abs=1e-5)
    idx = np.array([3, 40, 1])
    np.testing.assert_allclose(model_features(m, None, rows, idx, EvalConfig(batch_size=2), {"x": vec}),
                               want_feats[idx], rtol=1e-5, atol=1e-5)
    msg = "this model takes precomputed image embeddings: pass --image-features F (made by `pipeline embed` on this manifest)"
    with pytest.raises(EvalError) as e:
        evaluate(tmp_path / "run", fer_test, EvalConfig(plots=False))
    assert str(e.value) == msg
    with pytest.raises(EvalError, match="^--tta needs images; this model takes precomputed embeddings$"):
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


# ---- the evaluator's parts, each pinned by value -------------------------------------------------

FER = get_label_set("fer2013").names


def test_config_messages_name_the_choices():
    from train.evaluate import EvalConfig, EvalError

    with pytest.raises(EvalError, match=r"^--tta 'x' unknown; use one of none, flip, tencrop$"):
        EvalConfig(tta="x")
    with pytest.raises(EvalError, match=r"^--label-map 'x' unknown; use one of auto, none$"):
        EvalConfig(label_map="x")
    for tta in ("none", "flip", "tencrop"):
        for lm in ("auto", "none"):
            assert (EvalConfig(tta=tta, label_map=lm).tta, EvalConfig(tta=tta, label_map=lm).label_map) == (tta, lm)


def _side(label_set, preset="7", names=None, label_names=None):
    labels = {"label_set": label_set, "preset": preset}
    if label_names is not None:
        labels["label_names"] = label_names
    return {"labels": labels}


def test_label_mapping_same_set_preset_and_identity():
    from train.evaluate import LabelMapping, label_mapping

    fer = get_label_set("fer2013")
    assert label_mapping(_side("fer2013"), fer, FER) == LabelMapping(tuple(range(7)), tuple(range(7)), False, ())
    # a 2-class preset: the manifest's seven classes fold onto positive / negative
    two = label_mapping(_side("fer2013", "2"), fer, ("positive", "negative"))
    assert two == LabelMapping((1, 1, 1, 0, 0, 1, 0), (0, 1), False, ())
    # a manifest written in the model's own (post-preset) classes maps one to one
    from features.labels import custom_label_set

    own = custom_label_set(["positive", "negative"], name="own")
    assert label_mapping(_side("fer2013", "2"), own, ("positive", "negative")) == LabelMapping((0, 1), (0, 1), False, ())
    # the default preset is "7" when the sidecar names none
    assert label_mapping({"labels": {"label_set": "fer2013"}}, fer, FER).to_model == tuple(range(7))
    # a sidecar without labels: the checkpoint's own class names are its label set
    assert label_mapping({}, fer, FER) == LabelMapping(tuple(range(7)), tuple(range(7)), False, ())


def test_label_mapping_reads_the_checkpoints_label_set_every_way_it_is_written():
    """dict with names, name + label_names, a registered name, an unknown name, nothing: the base
    set shows in the mismatch message, and a 5-class preset maps through it."""
    from features.labels import LabelSet
    from train.evaluate import EvalError, label_mapping

    fer = get_label_set("fer2013")
    ck = get_label_set("ckplus")
    five = ("angry", "happy", "neutral", "sad", "surprise")
    rev = tuple(reversed(FER))

    def msg(side, names):
        with pytest.raises(EvalError) as e:
            label_mapping(side, ck, names, "none")
        return str(e.value)

    head = "the checkpoint's classes ({}; label set {!r}, preset {}) do not match the manifest's label set 'ckplus' " \
           "(anger, contempt, disgust, fear, happy, sadness, surprise); pass --label-map auto to score it zero-shot " \
           "through the shared emotions, or evaluate on a manifest of the label set it was trained on"
    # {"name", "names"}: the names in that order, the preset applied over them
    side = {"labels": {"label_set": {"name": "mine", "names": list(rev)}, "preset": "7"}}
    assert msg(side, rev) == head.format(", ".join(rev), "mine", "7")
    assert label_mapping(side, fer, rev).to_model == tuple(6 - i for i in range(7))
    side = {"labels": {"label_set": {"names": list(rev)}}}
    assert msg(side, rev) == head.format(", ".join(rev), "checkpoint", "7")
    # a name plus label_names
    side = _side("mine", "7", label_names=list(rev))
    assert msg(side, rev) == head.format(", ".join(rev), "mine", "7")
    assert label_mapping(side, fer, rev).to_model == tuple(6 - i for i in range(7))
    # a registered name and the 5-class preset: disgust -> angry, fear -> sad
    side = _side("fer2013", "5")
    assert msg(side, five) == head.format(", ".join(five), "fer2013", "5")
    assert label_mapping(side, fer, five).to_model == (0, 0, 3, 1, 2, 3, 4)
    # an unknown name, or none at all: the class names themselves
    assert msg(_side("nope"), FER) == head.format(", ".join(FER), "checkpoint", "7")
    assert msg({}, FER) == head.format(", ".join(FER), "checkpoint", "7")
    # a preset that cannot apply (5 on a 3-class set) or does not explain the classes: identity
    three = ("a", "b", "c")
    side = {"labels": {"label_set": {"name": "abc", "names": list(three)}, "preset": "5"}}
    assert msg(side, three) == head.format("a, b, c", "abc", "5")
    abc = LabelSet("abc", three)
    assert label_mapping(side, abc, three).to_model == (0, 1, 2)
    side = _side("fer2013", "7")
    assert msg(side, five) == head.format(", ".join(five), "checkpoint", "7")


def test_label_mapping_zero_shot_and_nothing_shared():
    from train.evaluate import EvalError, LabelMapping, label_mapping

    ck = get_label_set("ckplus")
    m = label_mapping(_side("fer2013"), ck, FER)
    # anger angry, contempt -, disgust, fear, happy, sadness sad, surprise; neutral is never scored
    assert m == LabelMapping((0, None, 1, 2, 3, 5, 6), (0, 1, 2, 3, 5, 6), True, ("contempt",))
    assert m.as_dict(ck, FER) == {
        "zero_shot": True, "excluded_manifest_classes": ["contempt"],
        "manifest_to_model": {"anger": "angry", "contempt": None, "disgust": "disgust", "fear": "fear",
                              "happy": "happy", "sadness": "sad", "surprise": "surprise"},
        "scored_classes": ["angry", "disgust", "fear", "happy", "sad", "surprise"]}
    # through a preset: ckplus onto the 2-class model, scored columns are the ones reached
    m2 = label_mapping(_side("fer2013", "2"), ck, ("positive", "negative"))
    assert m2 == LabelMapping((1, None, 1, 1, 0, 1, 0), (0, 1), True, ("contempt",))
    raf = get_label_set("rafdb-compound")
    with pytest.raises(EvalError) as e:
        label_mapping(_side("fer2013"), raf, FER)
    assert str(e.value) == (
        f"the checkpoint's classes ({', '.join(FER)}; label set 'fer2013', preset 7) do not match the manifest's "
        f"label set 'rafdb-compound' ({', '.join(raf.names)}), and no class maps across (they share no emotion): "
        "there is nothing to score. Evaluate on a manifest of the label set it was trained on")


def _manifest_rows(path, label_ids, **cols):
    """A fer2013 manifest with the given label ids and any column given per row."""
    ls = get_label_set("fer2013")
    rng = np.random.default_rng(len(label_ids))
    rows = []
    for i, k in enumerate(label_ids):
        img = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
        row = {"sample_id": f"id-{i:03d}", "dataset": "fer2013", "split": "test", "orig_split": "PublicTest",
               "source_path": f"x/{i}.png", "label": ls.names[k], "label_id": k, "label_set": ls.name,
               "image": encode(img), "image_format": "png", "width": 8, "height": 8, "channels": 1,
               "pixel_hash": pixel_hash(img), "leak": False, "sequence": None, "clip_id": None}
        row.update({c: v[i] for c, v in cols.items()})
        rows.append(row)
    return write_manifest(to_table(rows), path, ls)


def test_read_rows_keeps_the_split_maps_labels_and_finds_groups(tmp_path):
    from features.images import decode
    from train.evaluate import EvalError, LabelMapping, read_rows

    ids = [0, 1, 2, 3, 4, 5, 6, 0]
    splits = ["test", "test", "val", "test", "test", "test", "test", "test"]
    p = _manifest_rows(tmp_path / "m.parquet", ids, **{
        "split": splits, "leak": [True, False, False, False, True, False, False, False],
        "orig_split": ["PrivateTest", "PublicTest", "x", "PrivateTest", "PublicTest", "PublicTest", "x", "y"],
        "sequence": ["s1", None, "s2", "s1", None, "s3", None, "s4"],
        "frame_index": [3, 2, 1, 0, None, 5, 6, 7]})
    # the model lacks manifest class 1 (disgust); the rest fold onto 3 classes
    mapping = LabelMapping((0, None, 1, 2, 2, 1, 0), (0, 1, 2), True, ("disgust",))
    rows = read_rows(p, "test", mapping)
    keep = [0, 3, 4, 5, 6, 7]  # test rows whose class the model has
    assert rows.sample_ids == [f"id-{i:03d}" for i in keep]
    assert rows.targets.tolist() == [0, 2, 2, 1, 0, 0] and rows.targets.dtype.kind == "i"
    assert rows.leak.tolist() == [True, False, True, False, False, False] and rows.leak.dtype == bool
    assert rows.orig_split == ["PrivateTest", "PrivateTest", "PublicTest", "PublicTest", "x", "y"]
    assert rows.group_kind == "sequence" and rows.groups == ["s1", "s1", None, "s3", None, "s4"]
    assert rows.frame_index == [3, 0, None, 5, 6, 7]
    assert rows.dropped == {"excluded_classes": 1} and rows.unit == "row"
    from features.manifest import read_manifest

    t, _ = read_manifest(p, ["image"])
    for got, i in zip(rows.images, keep):
        np.testing.assert_array_equal(got, decode(t.column("image")[i].as_py())[0])
    # nothing dropped: no 'excluded_classes' entry; no images asked for: none decoded
    full = read_rows(p, "test", LabelMapping(tuple(range(7)), tuple(range(7)), False, ()), decode_images=False)
    assert full.dropped == {} and full.images == [] and len(full.targets) == 7
    assert read_rows(p, "val", mapping).sample_ids == ["id-002"]
    with pytest.raises(EvalError) as e:
        read_rows(p, "train", mapping)
    assert str(e.value) == (f"{p}: no rows with split='train' (it holds ['test', 'val']); pass a manifest "
                            "that holds them (e.g. manifests/fer_train.parquet) or --split one of ['test', 'val']")


def test_read_rows_group_columns_clip_first_and_all_none_is_no_grouping(tmp_path):
    from train.evaluate import EvalError, LabelMapping, read_rows

    ident = LabelMapping(tuple(range(7)), tuple(range(7)), False, ())
    both = _manifest_rows(tmp_path / "b.parquet", [0, 1, 2], clip_id=["c", None, "c"], sequence=["s", "s", "t"])
    r = read_rows(both, "test", ident)
    assert (r.group_kind, r.groups) == ("clip_id", ["c", None, "c"])
    seq = _manifest_rows(tmp_path / "s.parquet", [0, 1, 2], clip_id=[None, None, None], sequence=[None, "q", None])
    r = read_rows(seq, "test", ident)
    assert (r.group_kind, r.groups) == ("sequence", [None, "q", None])
    none = _manifest_rows(tmp_path / "n.parquet", [0, 1, 2])
    r = read_rows(none, "test", ident)
    assert (r.group_kind, r.groups) == (None, None)
    bad = _manifest_rows(tmp_path / "bad.parquet", [0, 1, 2, 3], image=[encode(np.zeros((8, 8), np.uint8)), b"no",
                                                                       b"", encode(np.zeros((8, 8), np.uint8))])
    with pytest.raises(EvalError) as e:
        read_rows(bad, "test", ident)
    assert str(e.value) == (f"{bad}: 2 test image(s) cannot be decoded (first: row 1: cannot decode: not an image "
                            "format Pillow reads); re-create the manifest with `pipeline ingest`")
    assert read_rows(bad, "test", ident, decode_images=False).sample_ids == [f"id-{i:03d}" for i in range(4)]


def _rows(images, targets, leak=None, orig=None, groups=None, kind=None, frames=None, ids=None):
    from train.evaluate import Rows

    n = len(targets)
    return Rows(ids or [f"s{i}" for i in range(n)], images, np.asarray(targets, dtype=int),
                np.asarray(leak if leak is not None else [False] * n, dtype=bool),
                orig or ["PublicTest"] * n, groups, kind, {"excluded_classes": 2}, frames)


def test_clip_rows_one_row_per_clip_sampled_as_the_trainer_does():
    from train.evaluate import EvalError, clip_rows

    imgs = [np.full((2, 2), i, np.uint8) for i in range(7)]
    # clip b: rows 0, 3, 5 (frame order 2, 0, 1 -> rows 3, 5, 0); clip a: rows 1, 2, 4, 6
    r = _rows(imgs, [1, 2, 2, 1, 2, 1, 2], leak=[False, False, False, False, False, True, False],
              orig=["o0", "o1", "o2", "o3", "o4", "o5", "o6"], groups=["b", "a", "a", "b", "a", "b", "a"],
              kind="clip_id", frames=[2, 0, 1, 0, 2, 1, 3])
    c = clip_rows(r, 3)
    assert c.sample_ids == ["s1", "s3"]  # clips in sorted order, each keyed by its first frame
    assert c.targets.tolist() == [2, 1] and c.leak.tolist() == [False, True] and c.orig_split == ["o1", "o3"]
    # a: 4 frames -> 3 spread evenly (positions 0, 2, 3 of rows 1, 2, 4, 6 after rounding 1.5 to 2)
    assert [int(f[0, 0]) for f in c.images[0]] == [1, 4, 6]
    assert [int(f[0, 0]) for f in c.images[1]] == [3, 5, 0]
    assert (c.groups, c.group_kind, c.frame_index, c.unit) == (None, None, None, "clip")
    assert c.dropped == {"excluded_classes": 2, "frames_per_clip": 3, "frame_rows": 7}
    feat = clip_rows(_rows([], [1, 1], groups=["a", "a"], kind="clip_id", frames=[0, 1]), 2)
    assert feat.images == [] and feat.sample_ids == ["s0"]
    with pytest.raises(EvalError, match=r"^clip 'a' has frames with different labels; a clip has one label$"):
        clip_rows(_rows(imgs[:2], [1, 2], groups=["a", "a"], kind="clip_id", frames=[0, 1]), 2)


class _Pre:
    """A stand-in preprocess: uint8 (H, W) arrays -> (N, 1, H, W) floats in [0, 1]."""

    size = (4, 4)

    def apply(self, images):
        return torch.stack([torch.as_tensor(np.asarray(im), dtype=torch.float32)[None] / 255 for im in images])


class _Linear(torch.nn.Module):
    """Logits = flattened input @ W (+ text @ V): every pixel position weighs differently, so a
    flip or a crop changes the numbers."""

    def __init__(self, d=16, c=3, kind="image", as_dict=False, text_dim=0, double=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(d, c, generator=g, dtype=torch.float64 if double else torch.float32)
        self.v = torch.randn(text_dim, c, generator=g) if text_dim else None
        self.input_kind, self.as_dict, self.seen = kind, as_dict, []

    def forward(self, x, text=None):
        self.seen.append(tuple(x.shape))
        out = x.reshape(len(x), -1).to(self.w.dtype) @ self.w
        if text is not None:
            out = out + text @ self.v
        return {"logits": out} if self.as_dict else out

    def forward_features(self, x, text=None):
        f = x.reshape(len(x), -1)[:, :5] * 2
        return f if text is None else f + text.sum(1, keepdim=True)


def _images(n, seed=0, size=4):
    return [np.random.default_rng(seed + i).integers(0, 256, (size, size), dtype=np.uint8) for i in range(n)]


def test_model_logits_batches_views_and_inputs_by_hand():
    from train.evaluate import EvalConfig, model_logits

    imgs = _images(7)
    x = _Pre().apply(imgs)
    m = _Linear()
    seen = []
    got = model_logits(m, _Pre(), _rows(imgs, [0] * 7), EvalConfig(batch_size=3), "none", progress=seen.append)
    assert seen == [3, 3, 1] and m.seen == [(3, 1, 4, 4), (3, 1, 4, 4), (1, 1, 4, 4)]
    assert got.dtype == np.float32 and got.shape == (7, 3)
    np.testing.assert_allclose(got, (x.reshape(7, -1) @ m.w).numpy(), rtol=1e-6)
    flip = model_logits(_Linear(as_dict=True), _Pre(), _rows(imgs, [0] * 7), EvalConfig(batch_size=4), "flip")
    want = ((x.reshape(7, -1) @ m.w + x.flip(-1).reshape(7, -1) @ m.w) / 2).numpy()
    np.testing.assert_allclose(flip, want, rtol=1e-5, atol=1e-6)
    # float64 logits come back as float32 numbers
    assert model_logits(_Linear(double=True), _Pre(), _rows(imgs, [0] * 7), EvalConfig(), "none").dtype == np.float32
    # caption vectors join per row, in batch order; precomputed inputs replace the images
    text = np.random.default_rng(1).normal(size=(7, 2)).astype(np.float32)
    mt = _Linear(text_dim=2)
    got = model_logits(mt, _Pre(), _rows(imgs, [0] * 7), EvalConfig(batch_size=2), "none", {"text": text})
    np.testing.assert_allclose(got, (x.reshape(7, -1) @ mt.w + torch.from_numpy(text) @ mt.v).numpy(), rtol=1e-5,
                               atol=1e-6)
    feats = np.random.default_rng(2).normal(size=(7, 16)).astype(np.float32)
    got = model_logits(_Linear(), None, _rows([], [0] * 7), EvalConfig(batch_size=5), "flip", {"x": feats})
    np.testing.assert_allclose(got, feats @ m.w.numpy(), rtol=1e-5, atol=1e-6)  # no views of embeddings
    empty = model_logits(_Linear(), _Pre(), _rows([], []), EvalConfig(), "none")
    assert empty.shape == (0, 0) and empty.dtype == np.float32


def test_model_logits_shapes_clips_for_video_models():
    from train.evaluate import EvalConfig, model_logits

    frames = _images(6)
    clips = [frames[0:3], frames[3:6]]
    m = _Linear(d=48, kind="clip")
    got = model_logits(m, _Pre(), _rows(clips, [0, 1]), EvalConfig(), "none")
    assert m.seen == [(2, 3, 1, 4, 4)]  # (B, T, C, H, W)
    x = _Pre().apply(frames).reshape(2, -1)
    np.testing.assert_allclose(got, (x @ m.w).numpy(), rtol=1e-5, atol=1e-6)
    one = _Linear(d=16, kind="clip")
    got = model_logits(one, _Pre(), _rows(frames[:2], [0, 1]), EvalConfig(), "flip")
    assert one.seen == [(2, 1, 1, 4, 4), (2, 1, 1, 4, 4)]  # frames without clip_id: one-frame clips
    x = _Pre().apply(frames[:2])
    want = ((x.reshape(2, -1) @ one.w + x.flip(-1).reshape(2, -1) @ one.w) / 2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tencrop_views_of_a_clip_keep_its_frames():
    """Ten-crop on (B, T, C, H, W): 16 -> 18 pixels (x1.125), every frame cropped alike (four
    corners and the centre, then the same of the mirror image), the clip shape kept."""
    import torch.nn.functional as F

    from train.evaluate import EvalConfig, model_logits

    class Pre16(_Pre):
        size = (16, 16)

    frames = _images(4, size=16)
    m = _Linear(d=2 * 256, kind="clip")
    got = model_logits(m, Pre16(), _rows([frames[:2], frames[2:]], [0, 1]), EvalConfig(), "tencrop")
    assert m.seen == [(2, 2, 1, 16, 16)] * 10
    up = F.interpolate(Pre16().apply(frames), size=(18, 18), mode="bilinear", align_corners=False, antialias=True)
    crops = []
    for img in (up, up.flip(-1)):
        crops += [img[..., :16, :16], img[..., :16, 2:], img[..., 2:, :16], img[..., 2:, 2:], img[..., 1:17, 1:17]]
    want = torch.stack([c.reshape(2, -1) @ m.w for c in crops]).mean(0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_model_features_in_the_order_asked_or_none():
    from train.evaluate import EvalConfig, model_features

    imgs = _images(6)
    x = _Pre().apply(imgs)
    idx = np.array([4, 0, 5, 2, 1])
    got = model_features(_Linear(), _Pre(), _rows(imgs, [0] * 6), idx, EvalConfig(batch_size=2))
    np.testing.assert_allclose(got, (x.reshape(6, -1)[:, :5] * 2).numpy()[idx], rtol=1e-6)
    text = np.arange(12, dtype=np.float32).reshape(6, 2)
    got = model_features(_Linear(text_dim=2), _Pre(), _rows(imgs, [0] * 6), idx, EvalConfig(batch_size=3),
                         {"text": text})
    np.testing.assert_allclose(got, (x.reshape(6, -1)[:, :5] * 2).numpy()[idx] + text[idx].sum(1, keepdims=True),
                               rtol=1e-6)
    emb = np.random.default_rng(3).normal(size=(6, 16)).astype(np.float32)
    got = model_features(_Linear(), None, _rows([], [0] * 6), idx, EvalConfig(batch_size=4), {"x": emb})
    np.testing.assert_allclose(got, emb[idx, :5] * 2, rtol=1e-6)
    clips = [imgs[0:2], imgs[2:4]]  # a clip model's features flatten to (N, -1)
    got = model_features(_Linear(kind="clip"), _Pre(), _rows(clips, [0, 1]), np.array([1, 0]), EvalConfig())
    np.testing.assert_allclose(got, _Pre().apply(imgs[2:4] + imgs[0:2]).reshape(2, -1)[:, :5].numpy() * 2, rtol=1e-6)
    assert model_features(_Linear(), _Pre(), _rows(imgs, [0] * 6), np.array([], int), EvalConfig()) is None

    class NoFeatures(torch.nn.Module):
        def forward(self, x):
            return x

    assert model_features(NoFeatures(), _Pre(), _rows(imgs, [0] * 6), idx, EvalConfig()) is None


def test_variants_are_the_honest_subsets_by_hand():
    from train.evaluate import variants

    v = variants(_rows([], [0] * 4))
    assert list(v) == ["all"] and v["all"].tolist() == [True] * 4 and v["all"].dtype == bool
    r = _rows([], [0] * 5, leak=[True, False, True, False, False],
              orig=["PrivateTest", "PrivateTest", "PublicTest", "Training", "PrivateTest"])
    v = variants(r)
    assert list(v) == ["all", "leak_free", "private_test", "private_test_leak_free"]
    assert v["leak_free"].tolist() == [False, True, False, True, True]
    assert v["private_test"].tolist() == [True, True, False, False, True]
    assert v["private_test_leak_free"].tolist() == [False, True, False, False, True]
    v = variants(_rows([], [0] * 3, orig=["PublicTest", "PrivateTest", "PublicTest"]))
    assert list(v) == ["all", "private_test"] and v["private_test"].tolist() == [False, True, False]
    v = variants(_rows([], [0] * 3, leak=[False, True, False]))
    assert list(v) == ["all", "leak_free"] and v["leak_free"].tolist() == [True, False, True]


def test_worst_confused_most_confident_mistakes_first():
    from train.evaluate import WORST_CONFUSED, worst_confused

    assert WORST_CONFUSED == 16
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.7, 0.3], [0.1, 0.9]])
    targets = np.array([1, 1, 1, 0, 1, 0])
    # wrong: rows 0 (0.9), 2 (0.6), 3 (0.7), 4 (0.7), 5 (0.9); ties keep row order
    assert worst_confused(probs, targets, 16).tolist() == [0, 5, 3, 4, 2]
    assert worst_confused(probs, targets, 2).tolist() == [0, 5]
    assert worst_confused(probs, np.array([0, 1, 0, 1, 0, 1]), 3).tolist() == []


def test_default_out_beside_the_run_or_under_runs_for_a_shipped_model(tmp_path):
    import train.evaluate as ev
    from train.evaluate import default_out

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"")
    m = Path("manifests/fer_test.parquet")
    assert default_out([run], m) == run / "eval-fer_test"
    assert default_out([run / "best.safetensors"], m) == run / "eval-fer_test"
    assert default_out([run, tmp_path / "b"], m) == run / "eval-ensemble2-fer_test"
    weights = Path(ev.__file__).resolve().parent / "weights"
    assert default_out([weights / "small.safetensors"], m) == Path("runs") / "eval" / "small-fer_test"
    assert default_out([weights], m) == Path("runs") / "eval" / "weights-fer_test"
    assert default_out([weights / "a.safetensors", run], m) == Path("runs") / "eval" / "a-ensemble2-fer_test"


def test_training_log_of_the_run_or_its_calibration_source(ckpt, tmp_path):
    from train.evaluate import training_log_of

    assert training_log_of(None) is None
    assert training_log_of(ckpt) == ckpt / "log.jsonl"
    assert training_log_of(ckpt / "best.safetensors") == ckpt / "log.jsonl"
    adj = tmp_path / "adj"
    tiny_checkpoint(adj)
    assert training_log_of(adj) is None  # no log, no source
    side = json.loads((adj / "best.json").read_text())
    (adj / "best.json").write_text(json.dumps({**side, "logit_adjustment": {"source": {"path": str(ckpt / "best.safetensors")}}}))
    assert training_log_of(adj) == ckpt / "log.jsonl"
    assert training_log_of(adj / "best.safetensors") == ckpt / "log.jsonl"
    (adj / "best.json").write_text(json.dumps({**side, "logit_adjustment": {"source": {"path": str(tmp_path / "x" / "w.safetensors")}}}))
    assert training_log_of(adj) is None  # the source run has no log
    (adj / "best.json").write_text(json.dumps({**side, "logit_adjustment": {"source": {}}}))
    assert training_log_of(adj) is None
    (adj / "best.json").write_text("{not json")
    assert training_log_of(adj) is None
    assert training_log_of(tmp_path / "nothing") is None


def _recording_plots(monkeypatch):
    """Replace each figure of train.plots by a recorder of its arguments (returns the path)."""
    import train.plots as plots

    calls: dict = {}

    def recorder(name, returns=True):
        def f(*args, **kw):
            calls.setdefault(name, []).append((args, kw))
            return next(a for a in reversed(args) if isinstance(a, Path)) if returns else None
        return f

    for name in ("confusion", "roc", "pr", "reliability", "tsne", "thumbnails", "training_curves"):
        monkeypatch.setattr(plots, name, recorder(name))
    return calls, recorder


def test_write_plots_hands_each_figure_its_numbers(monkeypatch, tmp_path, ckpt):
    """Zero-shot columns (0, 2, 3 of 4): every figure gets the restricted, re-indexed numbers."""
    import train.plots as plots
    from train.evaluate import EvalConfig, LabelMapping, model_features, write_plots
    from train.metrics import reliability_bins, score, softmax

    calls, _ = _recording_plots(monkeypatch)
    names = ("a", "b", "c", "d")
    mapping = LabelMapping((0, 2, 3), (0, 2, 3), True, ())
    logits = np.array([[3.0, 9, 0, 0], [0, 0, 2, 0], [1, 0, 0, 2], [0, 0, 0, 1], [2, 0, 0, 0], [0, 5, 1, 0]],
                      dtype=np.float32)
    targets = np.array([0, 2, 2, 3, 3, 0])  # model classes
    imgs = _images(6)
    rows = _rows(imgs, targets, ids=[f"sample-{i:010d}" for i in range(6)])
    cfg = EvalConfig(tsne_points=4)
    out = write_plots(tmp_path, _Linear(c=4), _Pre(), rows, logits, names, mapping, cfg, None, ckpt)
    shown = ["a", "c", "d"]
    y = np.array([0, 1, 1, 2, 2, 0])
    probs = softmax(logits[:, [0, 2, 3]])
    s = score(logits[:, [0, 2, 3]], y, shown)
    (cm_args, cm_kw), (cmn_args, cmn_kw) = calls["confusion"]
    assert cm_args == (s.confusion, shown, tmp_path / "confusion_counts.png") and cm_kw == {}
    assert cmn_args == (s.confusion, shown, tmp_path / "confusion_normalised.png") and cmn_kw == {"normalise": True}
    for kind in ("roc", "pr"):
        (a, kw), = calls[kind]
        np.testing.assert_allclose(a[0], probs, rtol=1e-6)
        assert a[1].tolist() == y.tolist() and a[2] == shown and a[3] == tmp_path / f"{kind}.png" and kw == {}
    (a, kw), = calls["reliability"]
    assert a[0] == reliability_bins(probs, y) and a[1] == s.ece and a[2] == tmp_path / "reliability.png"
    # t-SNE of 4 of the 6 rows (a seeded draw, sorted), features and targets of the same rows
    (a, kw), = calls["tsne"]
    idx = np.sort(np.random.default_rng(0).choice(6, size=4, replace=False))
    np.testing.assert_allclose(a[0], model_features(_Linear(c=4), _Pre(), rows, idx, cfg), rtol=1e-6)
    assert a[1].tolist() == y[idx].tolist() and a[2] == shown and a[3] == tmp_path / "tsne.png"
    assert kw == {"max_points": 4}
    # the most confident mistakes, captioned with the id's last 10 characters, truth, prediction
    (a, kw), = calls["thumbnails"]
    pred = probs.argmax(1)
    wrong = [i for i in np.argsort(-probs.max(1), kind="stable") if pred[i] != y[i]]
    assert [int(np.asarray(im).sum()) for im in a[0]] == [int(imgs[i].sum()) for i in wrong]
    assert a[1] == [f"{i:010d}\ntrue {shown[y[i]]}\npred {shown[pred[i]]} {probs[i, pred[i]]:.2f}" for i in wrong]
    assert a[2] == tmp_path / "worst_confused.png" and kw == {"title": "most confident mistakes"}
    (a, kw), = calls["training_curves"]
    assert a == (plots.read_log(ckpt / "log.jsonl"), tmp_path / "training_curves.png") and kw == {}
    assert out == {k: f"{k}.png" for k in ("confusion_counts", "confusion_normalised", "roc", "pr", "reliability",
                                             "tsne", "worst_confused", "training_curves")}


def test_write_plots_leaves_out_what_it_cannot_draw(monkeypatch, tmp_path):
    """Under 5 rows no t-SNE; no pictures (feature models) no thumbnails; no log no curves; a log
    without curves leaves the key out; a clip row's thumbnail is its middle frame."""
    import train.plots as plots
    from train.evaluate import EvalConfig, LabelMapping, write_plots

    calls, recorder = _recording_plots(monkeypatch)
    mapping = LabelMapping((0, 1), (0, 1), False, ())
    logits = np.array([[1.0, 0], [0, 1], [1, 0], [0, 3]], dtype=np.float32)
    frames = _images(8)
    clips = [frames[0:4], frames[4:7], [frames[7]], frames[0:2]]
    rows = _rows(clips, [1, 1, 1, 0])
    run = tmp_path / "run"
    tiny_checkpoint(run, log=True)
    monkeypatch.setattr(plots, "training_curves", recorder("training_curves", returns=False))
    out = write_plots(tmp_path / "o", _Linear(kind="clip"), _Pre(), rows, logits, ("x", "y"), mapping, EvalConfig(),
                      None, run)
    assert "tsne" not in calls and "tsne" not in out and "training_curves" not in out
    assert len(calls["training_curves"]) == 1
    (a, _), = calls["thumbnails"]
    # wrong: row 3 (0.95), row 0 (0.73), row 2 (0.73): middle frames 1 of 2, 2 of 4, 0 of 1
    assert [int(im.sum()) for im in a[0]] == [int(frames[1].sum()), int(frames[2].sum()), int(frames[7].sum())]
    calls.clear()
    out = write_plots(tmp_path / "p", _Linear(), None, _rows([], [1, 1, 1, 0]), logits, ("x", "y"), mapping,
                      EvalConfig(), None, None)
    assert "thumbnails" not in calls and "training_curves" not in calls
    assert set(out) == {"confusion_counts", "confusion_normalised", "roc", "pr", "reliability"}
    calls.clear()
    right = np.array([[0.0, 1], [0, 1], [0, 1], [1, 0]], dtype=np.float32)
    out = write_plots(tmp_path / "q", _Linear(), _Pre(), _rows(frames[:4], [1, 1, 1, 0]), right, ("x", "y"), mapping,
                      EvalConfig(), None, None)
    assert "thumbnails" not in calls and "worst_confused" not in out


def _logits_of(ckpt, m, tta="none", mode="none"):
    from train.checkpoint import load_checkpoint, preprocess_of
    from train.evaluate import EvalConfig, label_mapping, model_logits, read_rows

    model, side = load_checkpoint(ckpt)
    from features.manifest import open_manifest

    _, ls = open_manifest(m)
    mapping = label_mapping(side, ls, tuple(side["labels"]["class_names"]), "auto")
    rows = read_rows(m, "test", mapping)
    return model_logits(model.eval(), preprocess_of(side), rows, EvalConfig(), tta), rows, mapping


def _sklearn_scores(logits, y, labels):
    """WAR, UAR, macro-F1 (over the classes present), confusion: scikit-learn on argmax."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

    p = logits.argmax(1)
    return {"war": accuracy_score(y, p), "uar": balanced_accuracy_score(y, p),
            "macro_f1": f1_score(y, p, labels=sorted(set(y.tolist())), average="macro", zero_division=0),
            "confusion": confusion_matrix(y, p, labels=labels).tolist(), "n": len(y)}


def _same_scores(got, logits, y, labels):
    want = _sklearn_scores(logits, y, labels)
    assert got["confusion"] == want.pop("confusion")
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert len(set(logits.argmax(1).tolist())) > 2  # the test can tell classes apart


def test_report_fields_are_scikit_learns_on_the_same_predictions(report, ckpt, fer_test):
    from train.metrics import score

    rep, out = report
    assert rep["checkpoint"] == str(ckpt) and rep["manifest"] == str(fer_test) and rep["split"] == "test"
    assert rep["config"] == {"tta": "flip", "label_map": "auto", "split": "test", "batch_size": 256, "device": "cpu",
                             "plots": False, "tsne_points": 2000, "image_features": None, "text_features": None}
    assert rep["model"] == "vgg" and rep["class_names"] == list(FER)
    assert rep["checkpoint_meta"] == CKPT_META
    assert rep["manifest_label_set"] == {"name": "fer2013", "names": list(FER)}
    assert rep["label_mapping"] == {"zero_shot": False, "excluded_manifest_classes": [],
                                    "manifest_to_model": {n: n for n in FER}, "scored_classes": list(FER)}
    assert rep["rows"] == {"unit": "row", "scored": 42, "leaked": 9}
    assert "members" not in rep and "plots" not in rep and isinstance(rep["seconds"], float) and rep["seconds"] >= 0
    i = np.arange(42)
    masks = {"all": i >= 0, "leak_free": i % 5 != 0, "private_test": i % 2 == 1,
             "private_test_leak_free": (i % 2 == 1) & (i % 5 != 0)}
    for mode, tta in (("plain", "none"), ("flip", "flip")):
        lg, rows, _ = _logits_of(ckpt, fer_test, tta)
        assert rows.targets.tolist() == (i % 7).tolist()
        for v, mask in masks.items():
            got = rep["variants"][v][mode]
            _same_scores(got, lg[mask], rows.targets[mask], list(range(7)))
            full = score(lg[mask], rows.targets[mask], FER).as_dict()
            assert set(got) == set(full) and got["per_class"].keys() == full["per_class"].keys()
            assert (got["ece"], got["nll"]) == pytest.approx((full["ece"], full["nll"]), abs=1e-6)


def test_zero_shot_report_restricts_to_shared_classes_as_scikit_learn_does(ckpt, tmp_path):
    """CK+ on a FER2013 model: scored over the six shared classes (re-indexed), plus the
    unrestricted argmax over all seven; per sequence averages the logits of each sequence."""
    from train.evaluate import EvalConfig, evaluate
    from train.metrics import group_average

    ck = manifest(tmp_path / "ck.parquet", "ckplus", n=28, groups="sequence")
    rep = evaluate(ckpt, ck, EvalConfig(plots=False))
    lg, rows, _ = _logits_of(ckpt, ck)
    cols = [0, 1, 2, 3, 5, 6]
    remap = {j: k for k, j in enumerate(cols)}
    y = np.array([remap[t] for t in rows.targets])
    got = rep["variants"]["all"]["plain"]
    _same_scores(got, lg[:, cols], y, list(range(6)))
    assert got["war_unrestricted"] == pytest.approx(float((lg.argmax(1) == rows.targets).mean()))
    assert list(got["per_class"]) == ["angry", "disgust", "fear", "happy", "sad", "surprise"]
    g_logits, g_targets, _ = group_average(lg, rows.targets, rows.groups)
    seq = rep["variants"]["per_sequence"]["plain"]
    _same_scores(seq, g_logits[:, cols], np.array([remap[t] for t in g_targets]), list(range(6)))
    assert seq["war_unrestricted"] == pytest.approx(float((g_logits.argmax(1) == g_targets).mean()))
    assert rep["rows"] == {"unit": "row", "scored": 24, "leaked": 5, "excluded_classes": 4, "groups": 12}
    assert set(rep["variants"]) == {"all", "leak_free", "private_test", "private_test_leak_free", "per_sequence"}


def test_not_zero_shot_has_no_unrestricted_score_and_writes_only_when_asked(ckpt, fer_test, tmp_path):
    from train.evaluate import EvalConfig, evaluate

    seen = []
    rep = evaluate(ckpt, fer_test, EvalConfig(plots=False, batch_size=16), progress=seen.append)
    assert "war_unrestricted" not in rep["variants"]["all"]["plain"] and set(rep["variants"]["all"]) == {"plain"}
    assert seen == [16, 16, 10]
    assert not list(tmp_path.iterdir())  # no out_dir: nothing written anywhere near
    seen.clear()
    evaluate(ckpt, fer_test, EvalConfig(plots=False, tta="flip", batch_size=32), tmp_path / "a" / "b",
             progress=seen.append)
    assert seen == [32, 10, 32, 10]  # plain, then the TTA pass
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["report.json", "report.md"]


def test_ensemble_is_the_log_of_the_mean_probability(ckpt, fer_test, tmp_path):
    """The ensemble's NLL is scikit-learn's log loss of the members' mean probabilities (so its
    logits are log(mean p)); each member's own WAR/UAR/macro-F1 per mode."""
    from sklearn.metrics import log_loss

    from train.evaluate import EvalConfig, EvalError, evaluate
    from train.metrics import softmax

    other = tmp_path / "seed1"
    tiny_checkpoint(other, seed=1)
    spread_head(other, fer_test, seed=1)
    rep = evaluate([ckpt, other], fer_test, EvalConfig(plots=False, tta="flip"))
    assert rep["checkpoint"] == [str(ckpt), str(other)] and rep["model"] == "ensemble of 2"
    per = {}
    for c in (ckpt, other):
        for tta, mode in (("none", "plain"), ("flip", "flip")):
            per[c, mode], rows, _ = _logits_of(c, fer_test, tta)
    y = rows.targets
    for mode in ("plain", "flip"):
        mean = (softmax(per[ckpt, mode]) + softmax(per[other, mode])) / 2
        got = rep["variants"]["all"][mode]
        assert got["nll"] == pytest.approx(log_loss(y, mean, labels=list(range(7))), rel=1e-5)
        assert got["war"] == pytest.approx(float((mean.argmax(1) == y).mean()))
    assert [m["checkpoint"] for m in rep["members"]] == [str(ckpt), str(other)]
    for m, c in zip(rep["members"], (ckpt, other)):
        assert set(m) == {"checkpoint", "plain", "flip"}
        for mode in ("plain", "flip"):
            want = _sklearn_scores(per[c, mode], y, list(range(7)))
            assert m[mode] == pytest.approx({k: want[k] for k in ("war", "uar", "macro_f1")})
    plus = tmp_path / "ferplus"
    tiny_checkpoint(plus, label_set="ferplus")
    with pytest.raises(EvalError) as e:
        evaluate([ckpt, plus], fer_test, EvalConfig(plots=False))
    ferplus = list(get_label_set("ferplus").names)
    assert str(e.value) == (f"{plus}: an ensemble needs members with the same classes and input; it predicts "
                            f"{ferplus} from image input, {ckpt} predicts {list(FER)} from image input; ensemble "
                            "checkpoints trained on the same classes and input")


def test_evaluate_refusals_are_one_clear_line(ckpt, fer_test, tmp_path):
    from train.evaluate import EvalConfig, EvalError, evaluate

    with pytest.raises(EvalError, match="^no checkpoint given$"):
        evaluate([], fer_test, EvalConfig(plots=False))
    with pytest.raises(EvalError) as e:
        evaluate(tmp_path / "gone", fer_test, EvalConfig(plots=False))
    assert str(e.value) == f"checkpoint {tmp_path / 'gone'} does not exist; pass a run dir or its .safetensors file"
    with pytest.raises(EvalError) as e:
        evaluate([ckpt, tmp_path / "gone"], fer_test, EvalConfig(plots=False))
    assert str(e.value).startswith(f"checkpoint {tmp_path / 'gone'} does not exist")
    from features.manifest import ManifestError, open_manifest

    with pytest.raises(ManifestError) as want:
        open_manifest(tmp_path / "nope.parquet")
    with pytest.raises(EvalError) as e:
        evaluate(ckpt, tmp_path / "nope.parquet", EvalConfig(plots=False))
    assert str(e.value) == str(want.value)
    ck = manifest(tmp_path / "ck.parquet", "ckplus", n=7)
    with pytest.raises(EvalError, match="^the checkpoint's classes .* pass --label-map auto"):
        evaluate(ckpt, ck, EvalConfig(plots=False, label_map="none"))
    val = manifest(tmp_path / "v.parquet", "fer2013", n=7, split="val")
    assert evaluate(ckpt, val, EvalConfig(plots=False, split="val"))["variants"]["all"]["plain"]["n"] == 7


class _DeviceSpy(torch.nn.Module):
    """Records the device of every input it is given; answers with zeros on the CPU."""

    input_kind = "image"

    def __init__(self):
        super().__init__()
        self.devices = []

    def forward(self, x, text=None):
        self.devices.append((x.device.type, None if text is None else text.device.type))
        return torch.zeros(len(x), 3)

    def forward_features(self, x, text=None):
        self.devices.append((x.device.type, None if text is None else text.device.type))
        return torch.zeros(len(x), 2)


def test_inputs_and_caption_vectors_go_to_the_configured_device():
    """Images (every TTA view), embeddings and caption vectors all move to cfg.device, for the
    logits and for the t-SNE features alike ('meta' stands in for a GPU here)."""
    from train.evaluate import EvalConfig, model_features, model_logits

    imgs = _images(3)
    text = np.ones((3, 2), np.float32)
    cfg = EvalConfig(device="meta", batch_size=2)
    m = _DeviceSpy()
    model_logits(m, _Pre(), _rows(imgs, [0] * 3), cfg, "flip", {"text": text})
    model_logits(m, None, _rows([], [0] * 3), cfg, "none", {"x": np.ones((3, 4), np.float32)})
    model_features(m, _Pre(), _rows(imgs, [0] * 3), np.arange(3), cfg, {"text": text})
    model_features(m, None, _rows([], [0] * 3), np.arange(3), cfg, {"x": np.ones((3, 4), np.float32)})
    assert m.devices == [("meta", "meta")] * 4 + [("meta", None)] * 2 + [("meta", "meta")] * 2 + [("meta", None)] * 2


def test_every_member_is_loaded_on_the_configured_device(ckpt, fer_test, monkeypatch):
    import train.evaluate as ev

    seen = []
    real = ev.load_trained

    def load(path, device=None):
        seen.append((path, device))
        return real(path, device)

    monkeypatch.setattr(ev, "load_trained", load)
    # "cpu:0" rather than the default "cpu", so a dropped argument cannot pass for a passed one
    ev.evaluate([ckpt, ckpt], fer_test, ev.EvalConfig(plots=False, device="cpu:0"))
    assert seen == [(ckpt, "cpu:0"), (ckpt, "cpu:0")]


def test_ensemble_logits_are_the_log_mean_probability_and_stay_finite():
    from train.evaluate import ensemble_logits
    from train.metrics import softmax

    a = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    b = np.array([[0.0, 1.0, 0.0], [3.0, -2.0, 1.0]])
    got = ensemble_logits([a, b])
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_allclose(np.exp(got), (softmax(a) + softmax(b)) / 2, rtol=1e-6)
    # a class both members rule out (its probability underflows to 0): floored, not -inf
    sure = np.array([[0.0, 2000.0, 0.0]])
    far = ensemble_logits([sure, sure])
    assert np.isfinite(far).all() and far[0, 0] == pytest.approx(np.log(1e-12))


def test_clip_rows_takes_one_label_per_clip_and_keeps_a_one_frame_clip():
    """Two clips: one of three frames (one of them leaked), one of a single frame."""
    from train.evaluate import Rows, clip_rows

    rows = Rows(["a0", "a1", "a2", "b0"], [], np.array([4, 4, 4, 2]), np.array([False, True, False, False]),
                ["test"] * 4, ["a", "a", "a", "b"], "clip_id", frame_index=[0, 1, 2, 0])
    c = clip_rows(rows, 2)
    assert c.unit == "clip" and c.sample_ids == ["a0", "b0"]
    assert c.targets.tolist() == [4, 2] and c.targets.dtype.kind == "i"
    assert c.leak.tolist() == [True, False] and c.leak.dtype == bool
    assert c.dropped["frame_rows"] == 4 and c.dropped["frames_per_clip"] == 2


def test_label_mapping_scores_another_label_set_zero_shot_by_default():
    """Without a mode, a manifest of another label set is mapped through the shared emotions
    (as `train eval --label-map auto`, the CLI's default), not refused."""
    from features.labels import get_label_set
    from train.evaluate import label_mapping

    ck = get_label_set("ckplus")
    m = label_mapping(_side("fer2013"), ck, FER)
    assert m.zero_shot and "contempt" in m.excluded
    assert m == label_mapping(_side("fer2013"), ck, FER, "auto")


def test_a_split_of_excluded_classes_only_is_refused_in_one_line(tmp_path):
    """Rows only of classes the mapping leaves out (as contempt for a 7-class FER2013 model):
    nothing to score, one line instead of metrics over zero rows."""
    from train.evaluate import EvalError, LabelMapping, read_rows

    rows = _manifest_rows(tmp_path / "left_out.parquet", [1, 2, 1])
    mapping = LabelMapping((0, None, None, 3, 4, 5, 6), (0, 3, 4, 5, 6), True, ("disgust", "fear"))
    with pytest.raises(EvalError) as e:
        read_rows(rows, "test", mapping)
    assert str(e.value) == (f"{rows}: none of its 3 rows with split='test' is of a class the checkpoint can "
                            "score (left out: disgust, fear); evaluate on rows of the classes it predicts")
    kept = read_rows(_manifest_rows(tmp_path / "mixed.parquet", [1, 0, 2, 3]), "test", mapping)
    assert kept.targets.tolist() == [0, 3] and kept.dropped == {"excluded_classes": 2}
