"""The trainer: data from manifests, batching, augmentation, `train run`, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import (  # noqa: E402,F401
    TINY_VGG, single_thread, train_config, write_features, write_pair, write_synth)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("trdata"), n_train=35, n_val=14)


_cfg = train_config


# ---- preprocessing and augmentation --------------------------------------------------------

def test_preprocess_any_image_to_model_input():
    from train.transforms import Preprocess

    pre = Preprocess.default_for(48, 1)
    imgs = [np.zeros((100, 80, 3), np.uint8), np.full((20, 30), 255, np.uint8),
            np.zeros((48, 48, 4), np.uint8), np.full((48, 48, 1), 128, np.uint8)]
    x = pre.apply(imgs)
    assert x.shape == (4, 1, 48, 48) and x.dtype == torch.float32
    assert torch.allclose(x[1], torch.ones(1, 48, 48))  # 255 -> (1 - 0.5) / 0.5
    rgb = Preprocess.default_for(32, 3).apply([np.zeros((10, 10), np.uint8)])
    assert rgb.shape == (1, 3, 32, 32)
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    with pytest.raises(ValueError, match="uint8"):
        pre.apply([np.zeros((8, 8), np.float32)])
    with pytest.raises(ValueError, match="mean/std"):
        Preprocess(48, 3, (0.5,), (0.5,))


def test_augment_keeps_shape_and_draws_per_sample_flips():
    from train.transforms import build_augment

    torch.manual_seed(0)
    x = torch.zeros(64, 1, 48, 48, dtype=torch.uint8)
    x[..., :10] = 255  # a bar on the left edge: flipped samples have it on the right
    aug = build_augment("light", (48, 48))
    y = aug(x)
    assert y.shape == x.shape and y.dtype == torch.uint8
    right = y[..., -6:].float().mean(dim=(1, 2, 3)) > 100
    assert 10 < int(right.sum()) < 54, "flips are drawn per sample, not once per batch"
    assert build_augment("none", (48, 48)) is None
    assert build_augment("strong", (48, 48))(x).shape == x.shape


def test_framing_augment_zooms_out_on_repeated_borders_not_black():
    """`framing` crops 0.88-1.12x the face: zooming out shows the repeated border (a black band
    would be a feature no detector crop has); only rotation corners may be black."""
    from train.transforms import build_augment

    torch.manual_seed(0)
    x = torch.full((256, 1, 48, 48), 200, dtype=torch.uint8)
    y = build_augment("framing", (48, 48))(x).float()
    assert y.shape == x.shape and y.mean(dim=(1, 2, 3)).min() > 190 and (y == 0).float().mean() < 0.01


# ---- data and batching ----------------------------------------------------------------------

def test_load_split_decodes_into_memory(pair):
    from train.data import InputSpec, load_split
    from train.transforms import Preprocess

    spec = InputSpec("image", Preprocess.default_for(48, 1))
    d = load_split(pair[0], "train", spec, workers=2)
    assert d.images.shape == (35, 1, 48, 48) and d.images.dtype == torch.uint8
    assert d.labels.tolist() == [i % 7 for i in range(35)]
    assert d.class_names[0] == "angry" and d.info["in_memory"]
    lazy = load_split(pair[0], "train", spec, memory_budget=0)
    assert lazy.images is None
    idx = torch.tensor([3, 0, 7])
    assert torch.equal(lazy.take(idx)["x"], d.take(idx)["x"])
    two = load_split(pair[0], "train", spec, preset="2")
    assert two.class_names == ("positive", "negative")


def test_loader_is_deterministic_and_covers_every_row_once():
    from train.data import BatchLoader, SplitData

    for n in (1, 7, 33, 64):
        data = SplitData(labels=torch.arange(n), sample_ids=[str(i) for i in range(n)], class_names=(),
                         label_set=None, kind="feature", features=torch.arange(n)[:, None].float())
        for world in (1, 2, 3, 4):
            for epoch in (0, 1):
                seen = []
                for rank in range(world):
                    ld = BatchLoader(data, 4, True, seed=5, rank=rank, world=world)
                    ld.set_epoch(epoch)
                    batches = [b["index"].tolist() for b in ld]
                    assert len(batches) == len(ld)
                    assert all(len(b) != 1 for b in batches) or n // world <= 1
                    seen += [i for b in batches for i in b]
                assert sorted(seen) == list(range(n)), (n, world, epoch)
    ld = BatchLoader(data, 4, True, seed=5)
    first = [b["index"].tolist() for b in ld]
    assert first == [b["index"].tolist() for b in ld]
    ld.set_epoch(1)
    assert first != [b["index"].tolist() for b in ld]


def test_clip_grouping(tmp_path):
    from train.data import InputSpec, load_split
    from train.transforms import Preprocess

    p = write_synth(tmp_path / "clips_train.parquet", 24, "train", size=32, channels=3, clips=True, frames=4)
    d = load_split(p, "train", InputSpec("clip", Preprocess.default_for(32, 3), frames=6))
    assert d.images.shape == (6, 6, 3, 32, 32)
    assert d.labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_sibling_val(pair, tmp_path):
    from train.data import sibling_val

    assert sibling_val(pair[0]) == pair[1]
    assert sibling_val(tmp_path / "x_train.parquet") is None


# ---- training end to end -------------------------------------------------------------------

@pytest.mark.parametrize("name,opts,extra", [
    ("vgg", TINY_VGG, {}),
    ("resnet18", {"drop_rate": 0.1}, {"preset": "4", "loss": "focal", "class_weights": "balanced"}),
    ("miniaffectgpt", {"text_dim": 16, "hidden": 16, "heads": 2}, {"text": "tokens"}),
    ("clip-adapter", {"feature_dim": 16, "hidden_dim": 32}, {"image": True}),
    ("cmaen", None, {"loss": "cmaen"}),
    ("dfew-2d", {"backbone": "resnet18", "input_size": 32, "frames": 4}, {"clips": True}),
])
def test_fit_registered_models(tmp_path, pair, name, opts, extra):
    from train.loop import fit
    from train.models.registry import list_models

    if name not in list_models():
        pytest.skip(f"{name} not registered yet")
    kw = {}
    # one feature file covers train and val (as `pipeline embed` over both would write)
    if extra.get("text"):  # one file per manifest, as `pipeline embed` writes: *_val found beside
        kw["text_features"] = str(write_features(tmp_path / "t_train_minilm.parquet", pair[0], 16, tokens=5))
        write_features(tmp_path / "t_val_minilm.parquet", pair[1], 16, tokens=5, seed=1)
    if extra.get("image"):
        kw["image_features"] = _stack(tmp_path / "image.parquet", pair, tmp_path, tokens=False)
    if name == "cmaen":
        opts = _tiny_cmaen()
    if extra.get("clips"):  # 3-channel 32 px clips of 4 frames, 6 clips for training, 3 for val
        clip_kw = dict(size=32, channels=3, clips=True, frames=4)
        pair = (write_synth(tmp_path / "c_train.parquet", 24, "train", seed=1, **clip_kw),
                write_synth(tmp_path / "c_val.parquet", 12, "val", seed=2, **clip_kw))
    res = fit(_cfg(pair, tmp_path / "run", model=name, model_options=opts, epochs=2, max_steps=2,
                   **{k: v for k, v in extra.items() if k not in ("text", "image", "clips")}, **kw))
    assert res["epochs_run"] == 2
    assert all(np.isfinite(r["train_loss"]) for r in res["history"])
    assert (tmp_path / "run" / "best.safetensors").exists()
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "val_uar" in json.loads(lines[0])


def _tiny_cmaen():
    from train.models.registry import model_config
    import dataclasses

    fields = {f.name for f in dataclasses.fields(model_config("cmaen"))}
    tiny = {"input_size": 48, "in_chans": 1, "effnet": "tiny", "cnn_widths": [8, 16], "hidden": 16,
            "head_hidden": 16, "fusion_dims": [32, 16], "blocks_per_stage": 1}
    return {k: v for k, v in tiny.items() if k in fields}


def _stack(path, pair, tmp_path, tokens):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.encoders import write_features as write

    a = write_features(tmp_path / "a.parquet", pair[0], 16, tokens=5 if tokens else None)
    b = write_features(tmp_path / "b.parquet", pair[1], 16, tokens=5 if tokens else None, seed=1)
    write(pa.concat_tables([pq.read_table(a), pq.read_table(b)]).replace_schema_metadata(None), path,
          {"tokens": bool(tokens)})
    return str(path)


def test_fit_overfits_tiny_set(tmp_path, pair):
    """The loop learns: a tiny VGG fits 35 synthetic faces (loss falls well below ln 7)."""
    from train.loop import fit

    res = fit(_cfg(pair, tmp_path / "o", epochs=8, lr=3e-3, augment="none", scheduler="none",
                   batch_size=16, select_metric="acc"))
    losses = [r["train_loss"] for r in res["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert res["best"] > 0.5  # chance is 1/7


# ---- CLI and bad input ---------------------------------------------------------------------

def _cli(args):
    from typer.testing import CliRunner

    from train.cli import app

    return CliRunner().invoke(app, args)


def test_cli_run(tmp_path, pair):
    cfg = tmp_path / "c.toml"
    cfg.write_text('epochs = 1\nbatch-size = 8\naugment = "strong"\n')
    r = _cli(["run", "--manifest", str(pair[0]), "--model", "vgg", "--config", str(cfg),
              "--model-opt", "stages=[8,16]", "--model-opt", "fc_dim=32", "--model-opt", "convs_per_stage=1",
              "--max-steps", "2", "--out", str(tmp_path / "cli"), "--device", "cpu", "--no-amp"])
    assert r.exit_code == 0, r.output
    assert "best val_uar" in r.output
    side = json.loads((tmp_path / "cli" / "best.json").read_text())
    assert side["train_config"]["augment"] == "strong" and side["train_config"]["epochs"] == 1
    assert side["manifests"]["val"]["path"] == str(pair[1])  # found beside the train manifest


def test_cli_amp_bf16_on_cpu(tmp_path, pair, monkeypatch):
    """--amp on the CPU trains in bfloat16: the logits that reach the loss are bf16 (float32
    with --no-amp), and the sidecar says so."""
    import train.loop
    from train.models.base import logits_of

    seen = []
    real = train.loop.compute_loss

    def spy(loss_fn, outputs, *a, **kw):
        seen.append(logits_of(outputs).dtype)
        return real(loss_fn, outputs, *a, **kw)

    monkeypatch.setattr(train.loop, "compute_loss", spy)
    for flag, want in (("--amp", torch.bfloat16), ("--no-amp", torch.float32)):
        seen.clear()
        out = tmp_path / flag.strip("-")
        r = _cli(["run", "--manifest", str(pair[0]), "--model", "vgg", "--model-opt", "stages=[8,16]",
                  "--model-opt", "fc_dim=32", "--epochs", "1", "--max-steps", "1", flag,
                  "--out", str(out), "--device", "cpu"])
        assert r.exit_code == 0, r.output
        assert seen and set(seen) == {want}, (flag, seen)
        side = json.loads((out / "best.json").read_text())
        assert side["train_config"]["amp"] is (flag == "--amp") and side["train_config"]["amp_dtype"] == "bf16"


@pytest.mark.parametrize("case", ["schema", "test_split", "unknown_model", "no_val", "bad_option", "bad_value",
                                  "bad_list", "bad_range",
                                  "features_uncovered", "needs_text", "classes", "bad_choice"])
def test_cli_bad_input_is_clear(tmp_path, pair, case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    args = ["run", "--manifest", str(pair[0]), "--model", "vgg", "--out", str(tmp_path / "bad"),
            "--epochs", "1", "--max-steps", "1", "--device", "cpu"]
    want = {
        "schema": "re-create it with `pipeline ingest",
        "test_split": "split=test",
        "unknown_model": "known models:",
        "no_val": "no validation manifest",
        "bad_option": "has no option",
        "bad_value": "width='abc': a number is wanted",  # these three were tracebacks
        "bad_list": "stages='[16,48': a list is wanted",
        "bad_range": "dropout probability has to be between 0 and 1",
        "features_uncovered": "lacks 3 of the 35 rows asked for",
        "needs_text": "--text-features",
        "classes": "does not match",
        "bad_choice": "is not one of",
    }[case]
    if case == "schema":
        wrong = tmp_path / "wrong_train.parquet"
        pq.write_table(pa.table({"path": ["a.png"], "y": [1]}), wrong)
        args[2] = str(wrong)
    elif case == "test_split":
        args[2] = str(write_synth(tmp_path / "t_train.parquet", 7, "test"))
        args += ["--val", str(pair[1])]
    elif case == "unknown_model":
        args[4] = "no-such-net"
    elif case == "no_val":
        args[2] = str(write_synth(tmp_path / "lonely_train.parquet", 7, "train"))
    elif case == "bad_option":
        args += ["--model-opt", "wings=3"]
    elif case == "bad_value":
        args += ["--model-opt", "width=abc"]
    elif case == "bad_list":
        args += ["--model-opt", "stages=[16,48"]
    elif case == "bad_range":
        args += ["--model-opt", "dropout=2"]
    elif case == "features_uncovered":
        f = write_features(tmp_path / "f.parquet", pair[0], 16, drop=3)
        args[4] = "clip-adapter"
        args += ["--image-features", str(f), "--model-opt", "feature_dim=16"]
    elif case == "needs_text":
        args[4] = "miniaffectgpt"
    elif case == "classes":
        args += ["--model-opt", "num_classes=3"]
    elif case == "bad_choice":
        args += ["--optimizer", "adagrad"]
    r = _cli(args)
    assert r.exit_code == 2, r.output
    assert want in r.output, r.output
    assert "Traceback" not in r.output
    # on a pipe the error is the only line ("loading A and B" stays on terminals)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_models_lists_registry():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = _cli(["models"])
    assert r.exit_code == 0, r.output
    for name in ("vgg", "resnet18", "miniaffectgpt", "efficientnet-lite0"):
        assert name in r.output
    # shapes only: no pretrained file is read into the meta-device models (torch warned per tensor)
    assert not [w for w in caught if "meta parameter" in str(w.message)]


def test_reads_feature_files_written_by_pipeline_embed(tmp_path):
    """Training reads through features.encoders (fp16 vectors, padded tokens, int8 mask), its
    features_meta check included: a file without it is refused as `train eval` refuses it."""
    enc = pytest.importorskip("features.encoders")
    import pyarrow.parquet as pq

    from train.data import DataError, read_split_features

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(5)]
    e = enc.Encoded(vectors=rng.normal(size=(5, 6)).astype(np.float32),
                    tokens=rng.normal(size=(5, 4, 6)).astype(np.float32),
                    mask=np.array([[1, 1, 0, 0]] * 5, dtype=np.int8))
    path = enc.write_features(enc.features_table(ids, e, dtype="float16"), tmp_path / "f.parquet",
                              {"tokens": True})
    vec, tok, mask = read_split_features(path, "train", ids[::-1], tokens=True)
    assert vec.dtype == np.float32 and vec.shape == (5, 6)
    np.testing.assert_allclose(vec, e.vectors[::-1], atol=1e-2)
    assert tok.shape == (5, 4, 6) and mask.dtype == bool and mask[:, :2].all() and not mask[:, 2:].any()
    assert read_split_features(path, "train", ids, tokens=False)[1] is None
    with pytest.raises(DataError, match=r"f.parquet lacks 1 of the 6 rows asked for \(e.g. \['other'\]\)"):
        read_split_features(path, "train", ids + ["other"])
    pq.write_table(pq.read_table(path).replace_schema_metadata(None), tmp_path / "plain.parquet")
    with pytest.raises(DataError, match="plain.parquet: not an affectlab feature file"):
        read_split_features(tmp_path / "plain.parquet", "train", ids)


def test_clip_adapter_unfreezes_its_encoder_on_schedule(tmp_path):
    """param_groups(epoch) drives the unfreeze: the encoder's tail gets optimiser state only
    from `unfreeze_epoch` on, also across an interruption and --resume."""
    from train.loop import fit

    pair = write_pair(tmp_path, n_train=14, n_val=7, size=32, channels=3)
    opts = {"mode": "image", "encoder": "tiny", "in_chans": 3, "input_size": 32, "feature_dim": 16,
            "hidden_dim": 32, "unfreeze_epoch": 1, "unfreeze_blocks": 1, "encoder_lr": 1e-4}

    def stop_after_first(ev):
        if ev["kind"] == "epoch_end" and ev["epoch"] == 1:
            raise KeyboardInterrupt

    def n_state(run):
        blob = torch.load(run / "resume.pt", weights_only=True)
        return len(blob["optimizer"]["state"])

    run = tmp_path / "ca"
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(pair, run, model="clip-adapter", model_options=opts, epochs=2, max_steps=2),
            progress=stop_after_first)
    frozen = n_state(run)
    fit(_cfg(pair, run, model="clip-adapter", model_options=opts, epochs=2, max_steps=2, resume=True))
    assert n_state(run) > frozen


def test_run_options_are_the_config_fields():
    """`train run`'s options are TrainConfig's option fields, each once, under its kebab name;
    fields made with plain field() (momentum, focal_gamma, ...) stay config-file/recipe only."""
    import dataclasses
    import re

    from typer.testing import CliRunner

    from train.cli import app
    from train.config import TrainConfig

    r = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", r.output))
    for f in dataclasses.fields(TrainConfig):
        opt = f.metadata.get("option")
        name = "--" + ((opt or {}).get("name") or f.name).replace("_", "-")
        assert (name in flags) == (opt is not None), name
    assert {"--config", "--no-amp", "--no-tensorboard", "--manifest", "--epochs", "--model-opt", "--resume",
            "--select-metric", "--eval-resize"} <= flags
    assert not {"--momentum", "--focal-gamma", "--augment-group", "--recipe-sha256", "--model-options"} & flags


def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path, pair, monkeypatch):
    import train.loop

    args = ["run", "--manifest", str(pair[0]), "--model", "vgg", "--out", str(tmp_path / "r"), "--epochs", "1",
            "--max-steps", "1", "--device", "cpu"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.loop, "fit", interrupted)
    r = _cli(args)
    assert r.exit_code == 130 and "interrupted; no epoch had finished" in r.stderr
    (tmp_path / "r").mkdir()  # the empty run folder of the first try was cleaned up
    (tmp_path / "r" / "resume.pt").write_bytes(b"")  # as after a finished epoch
    r = _cli(args)
    assert r.exit_code == 130 and "run the same command with --resume to go on" in r.stderr
