"""Hostile inputs against every command that can meet them (docs/errors.md).

Each case runs a real command line through the app (Typer's CliRunner, in-process) and asserts
the house rule: exit 2, one line on stderr that names the input, no traceback, no output
written (or half-written), nothing good lost. The kill tests run a writer in a subprocess and
SIGKILL it mid-write.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.images import encode, pixel_hash
from features.labels import get_label_set
from features.manifest import (
    ManifestError,
    atomic_write_bytes,
    check_same_set,
    open_manifest,
    read_manifest,
    to_table,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 24
CUDA = False
try:  # the wrong-device cases need a machine without the GPU they ask for
    import torch

    CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    pass


# ----------------------------------------------------------------------------- fixtures


def _rows(n: int, split: str = "test", seed: int = 0) -> list[dict]:
    ls = get_label_set("fer2013")
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = rng.integers(0, 256, size=(SIZE, SIZE), dtype=np.uint8)
        k = i % len(ls)
        rows.append({"sample_id": f"fer2013-{seed}-{i:04d}", "dataset": "fer2013", "split": split,
                     "source_path": f"x/{seed}/{i}.png", "label": ls.names[k], "label_id": k,
                     "label_set": ls.name, "image": encode(img), "image_format": "png", "width": SIZE,
                     "height": SIZE, "channels": 1, "pixel_hash": pixel_hash(img)})
    return rows


def good_manifest(path: Path, n: int = 21, split: str = "test", seed: int = 0) -> Path:
    return write_manifest(to_table(_rows(n, split, seed)), path, get_label_set("fer2013"),
                          producer={"command": "tests"})


def _write_raw(table: pa.Table, like: Path, path: Path) -> Path:
    """A file with a valid schema and metadata but bad values (bypasses write_manifest's check)."""
    pq.write_table(table.replace_schema_metadata(pq.read_schema(like).metadata), path)
    return path


def bad_manifests(tmp: Path) -> dict[str, Path]:
    good = good_manifest(tmp / "good.parquet")
    t = pq.read_table(good)
    ids = t.column("label_id").to_pylist()
    labels = t.column("label").to_pylist()
    out = {}
    for name, col, values in (
        ("id9", "label_id", [9] + ids[1:]),            # 'joy' with id 9: outside 0..6
        ("id-1", "label_id", ids[:3] + [-1] + ids[4:]),
        ("label-mismatch", "label", ["happy"] + labels[1:]),  # happy stored with angry's id 0
        ("dup-id", "sample_id", [t.column("sample_id")[0].as_py()] * 2 + t.column("sample_id").to_pylist()[2:]),
    ):
        i = t.schema.get_field_index(col)
        out[name] = _write_raw(t.set_column(i, t.schema.field(col), pa.array(values, t.schema.field(col).type)),
                               good, tmp / f"{name}.parquet")
    if True:  # a null in a required column
        i = t.schema.get_field_index("pixel_hash")
        field = pa.field("pixel_hash", pa.string(), nullable=True)
        vals = t.column("pixel_hash").to_pylist()
        vals[5] = None
        out["null"] = _write_raw(t.set_column(i, field, pa.array(vals, pa.string())), good, tmp / "null.parquet")
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny checkpoint, a test manifest, a train/val pair, an image: the good inputs."""
    from test_eval import tiny_checkpoint
    from train_fixtures import write_pair

    d = tmp_path_factory.mktemp("faults")
    run = d / "run"
    tiny_checkpoint(run)
    test = good_manifest(d / "fer_test.parquet")
    train, val = write_pair(d / "pair", n_train=28, n_val=14)
    img = d / "face.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(img)
    return {"dir": d, "run": run, "test": test, "train": train, "val": val, "img": img}


def _evil_pickle(path: Path, marker: Path) -> Path:
    """{"weight": os.system("touch MARKER")} as protocol-0 pickle opcodes, written by hand (no
    pickle import needed to plant one): MARK DICT, key, GLOBAL os.system, MARK arg TUPLE, REDUCE,
    SETITEM, STOP. Unpickling it runs the command; every loader must refuse it."""
    module = os.system.__module__  # posix on Linux
    path.write_bytes(b"(dp0\nVweight\np1\nc" + module.encode() + b"\nsystem\np2\n(V"
                     + f"touch {marker}".encode() + b"\ntp3\nRp4\ns.")
    return path


def hostile_weights(d: Path, kind: str, good: Path | None = None, suffix: str = ".pth") -> Path:
    """kind: truncated | foreign | pickle; `good` is truncated when given (else a torch.save file)."""
    import torch

    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{kind}{suffix}"
    if kind == "truncated":
        if good is None:
            good = d / f"good{suffix}"
            torch.save({"w": torch.zeros(64, 64)}, good)
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "foreign":
        p.write_bytes(b"<html>rate limit exceeded</html>\n" * 8)
    else:
        _evil_pickle(p, d / "PWNED")
    return p


def checkpoint_copy(run: Path, d: Path, kind: str) -> Path:
    """run's best.json beside a hostile best.safetensors."""
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "best.json", d / "best.json")
    w = hostile_weights(d / "w", kind, good=run / "best.safetensors", suffix=".safetensors")
    shutil.move(w, d / "best.safetensors")
    return d


# ----------------------------------------------------------------------------- the check


def _apps():
    from pipeline.cli import app as pipeline_app
    from train.cli import app as train_app

    return {"pipeline": pipeline_app, "train": train_app}


def run_cli(argv: list[str], env: dict | None = None):
    apps = _apps()
    runner = CliRunner()
    return runner.invoke(apps[argv[0]], [str(a) for a in argv[1:]], env=env)


ERROR_PREFIXES = ("pipeline ", "train ", "error:")


def assert_one_line(result, names: str | list[str]):
    """Exit 2, no traceback, and exactly one error line (progress/status lines may precede it),
    the last one, naming every string in `names`."""
    err = result.stderr if hasattr(result, "stderr") else result.output
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [ln for ln in lines if ln.startswith(ERROR_PREFIXES)]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    for n in [names] if isinstance(names, str) else names:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@dataclass
class Case:
    id: str
    argv: Callable[[dict, Path], list]       # (base, tmp) -> argv
    names: Callable[[dict, Path], list]      # what the line must name
    outputs: Callable[[dict, Path], list] = lambda b, t: []  # must not exist afterwards
    needs_no_cuda: bool = False


# ----------------------------------------------------------------------------- bad values


BAD_VALUE_COMMANDS = {
    "pipeline stats": lambda m, b, t: ["pipeline", "stats", m],
    "pipeline enhance": lambda m, b, t: ["pipeline", "enhance", "--in", m, "--out", t / "o.parquet", "--sr", "bicubic",
                                         "--device", "cpu"],
    "pipeline balance": lambda m, b, t: ["pipeline", "balance", "--in", m, "--out", t / "o.parquet"],
    "pipeline embed": lambda m, b, t: ["pipeline", "embed", "--in", m, "--out", t / "o.parquet",
                                       "--encoder", "resnet18", "--weights", t / "none.pth"],
    "pipeline faces": lambda m, b, t: ["pipeline", "faces", "--in", m, "--out", t / "o.parquet"],
    "train eval": lambda m, b, t: ["train", "eval", "-c", b["run"], "-m", m, "--out", t / "o"],
    "train run": lambda m, b, t: ["train", "run", "--manifest", m, "--val", b["val"], "--model", "vgg",
                                  "--epochs", "1", "--out", t / "o"],
}
BAD_VALUES = {
    "id9": "label_id outside 0..6",
    "id-1": "label_id outside 0..6",
    "label-mismatch": "label does not match label_id",
    "dup-id": "sample_id(s) repeated",
    "null": "hold nulls",
}


@pytest.mark.parametrize("kind", list(BAD_VALUES))
@pytest.mark.parametrize("command", list(BAD_VALUE_COMMANDS))
def test_bad_values_are_refused_by_every_reader(base, tmp_path, command, kind):
    m = bad_manifests(tmp_path)[kind]
    before = m.read_bytes()
    line = assert_one_line(run_cli(BAD_VALUE_COMMANDS[command](m, base, tmp_path)), [str(m), BAD_VALUES[kind]])
    assert "row" in line  # the first bad rows are named
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "o").exists()
    assert m.read_bytes() == before  # the input is left as it was


def test_value_messages_name_the_rows(tmp_path):
    ms = bad_manifests(tmp_path)
    with pytest.raises(ManifestError, match=r"rows 0\b"):
        open_manifest(ms["id9"])
    with pytest.raises(ManifestError, match=r"rows 3\b"):
        open_manifest(ms["id-1"])
    with pytest.raises(ManifestError, match=r"'happy', label_id 0 is 'angry'"):
        read_manifest(ms["label-mismatch"])
    with pytest.raises(ManifestError, match=r"rows 0, 1"):
        read_manifest(ms["dup-id"], columns=["sample_id"])
    with pytest.raises(ManifestError, match=r"pixel_hash"):
        open_manifest(ms["null"])


def test_writers_refuse_bad_values_and_write_nothing(tmp_path):
    rows = _rows(7)
    rows[2]["label_id"] = 9
    with pytest.raises(ManifestError, match="rows 2"):
        write_manifest(to_table(rows), tmp_path / "x.parquet", get_label_set("fer2013"))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- weights files

WEIGHT_KINDS = ("truncated", "foreign", "pickle")


def _ckpt_cases() -> list[Case]:
    cases = []
    for kind in WEIGHT_KINDS:
        ck = lambda b, t, kind=kind: checkpoint_copy(b["run"], t / "ck", kind)  # noqa: E731
        w = lambda t: t / "ck" / "best.safetensors"  # noqa: E731
        cases += [
            Case(f"eval-{kind}", lambda b, t, ck=ck: ["train", "eval", "-c", ck(b, t), "-m", b["test"], "--out", t / "o"],
                 lambda b, t, w=w: [str(w(t))], lambda b, t: [t / "o"]),
            Case(f"predict-{kind}", lambda b, t, ck=ck: ["train", "predict", b["img"], "-c", ck(b, t), "--detector", "none"],
                 lambda b, t, w=w: [str(w(t))]),
            Case(f"calibrate-{kind}", lambda b, t, ck=ck: ["train", "calibrate", "-c", ck(b, t), "--val", b["val"],
                                                           "--train-manifest", b["train"], "--out", t / "o"],
                 lambda b, t, w=w: [str(w(t))], lambda b, t: [t / "o" / "best.safetensors"]),
            Case(f"export-{kind}", lambda b, t, ck=ck: ["train", "export", "-c", ck(b, t), "--out", t / "o.onnx"],
                 lambda b, t, w=w: [str(w(t))], lambda b, t: [t / "o.onnx"]),
            Case(f"teacher-{kind}", lambda b, t, ck=ck: ["train", "run", "--manifest", b["train"], "--val", b["val"],
                                                         "--model", "vgg", "--epochs", "1", "--teacher", ck(b, t),
                                                         "--out", t / "o"],
                 lambda b, t, w=w: [str(w(t))], lambda b, t: [t / "o" / "best.safetensors"]),
        ]
    return cases


def _pretrained_cases() -> list[Case]:
    cases = []
    for kind in WEIGHT_KINDS:
        hw = lambda t, kind=kind: hostile_weights(t / "w", kind)  # noqa: E731
        cases += [
            Case(f"resnet-pretrained-{kind}",
                 lambda b, t, hw=hw: ["train", "run", "--manifest", b["train"], "--val", b["val"], "--model", "resnet18",
                                      "--model-opt", f"pretrained={hw(t)}", "--epochs", "1", "--out", t / "o"],
                 lambda b, t, kind=kind: [str(t / "w" / f"{kind}.pth")], lambda b, t: [t / "o" / "best.safetensors"]),
            Case(f"cmaen-effnet-pretrained-{kind}",
                 lambda b, t, hw=hw: ["train", "run", "--manifest", b["train"], "--val", b["val"], "--model", "cmaen",
                                      "--loss", "cmaen", "--model-opt", f"effnet_pretrained={hw(t)}", "--model-opt", "input_size=48",
                                      "--epochs", "1", "--out", t / "o"],
                 lambda b, t, kind=kind: [str(t / "w" / f"{kind}.pth")], lambda b, t: [t / "o" / "best.safetensors"]),
            Case(f"efficientnet-lite-{kind}",
                 lambda b, t, hw=hw: ["train", "run", "--manifest", b["train"], "--val", b["val"], "--model",
                                      "efficientnet-lite0", "--model-opt", f"pretrained={hw(t)}", "--epochs", "1",
                                      "--out", t / "o"],
                 lambda b, t, kind=kind: [str(t / "w" / f"{kind}.pth")], lambda b, t: [t / "o" / "best.safetensors"]),
            Case(f"embed-resnet18-{kind}",
                 lambda b, t, hw=hw: ["pipeline", "embed", "--in", b["test"], "--out", t / "o.parquet", "--encoder",
                                      "resnet18", "--weights", hw(t)],
                 lambda b, t, kind=kind: [str(t / "w" / f"{kind}.pth")], lambda b, t: [t / "o.parquet"]),
            Case(f"enhance-swinir-{kind}",
                 lambda b, t, hw=hw: ["pipeline", "enhance", "--in", b["test"], "--out", t / "o.parquet", "--sr",
                                      f"swinir:{hw(t)}", "--device", "cpu"],
                 lambda b, t, kind=kind: [str(t / "w" / f"{kind}.pth")], lambda b, t: [t / "o.parquet"]),
            Case(f"faces-retinaface-{kind}",
                 lambda b, t, kind=kind: ["pipeline", "faces", "--in", b["test"], "--out", t / "o.parquet", "--backend",
                                          "retinaface", "--weights-dir", _retina_dir(t, kind), "--device", "cpu"],
                 lambda b, t: ["detection_Resnet50_Final.pth"], lambda b, t: [t / "o.parquet"]),
            Case(f"predict-retinaface-{kind}",
                 lambda b, t, kind=kind: ["train", "predict", b["img"], "-c", b["run"], "--detector", "retinaface",
                                          "--weights-dir", _retina_dir(t, kind)],
                 lambda b, t: ["detection_Resnet50_Final.pth"]),
        ]
    return cases


def _retina_dir(t: Path, kind: str) -> Path:
    d = t / "retina"
    d.mkdir(exist_ok=True)
    shutil.move(hostile_weights(t / "w", kind), d / "detection_Resnet50_Final.pth")
    return d


MODEL_CASES = {c.id: c for c in _ckpt_cases() + _pretrained_cases()}


@pytest.mark.parametrize("case_id", list(MODEL_CASES))
def test_hostile_weight_files(base, tmp_path, case_id):
    c = MODEL_CASES[case_id]
    if "efficientnet-lite" in case_id:
        pytest.importorskip("timm", reason="efficientnet-lite needs the pretrained extra (timm)")
    if "retinaface" in case_id:
        pytest.importorskip("facexlib", reason="RetinaFace needs facexlib")
    if "embed" in case_id or "enhance" in case_id or "faces" in case_id:
        # RGB models over a grey manifest: the file is read before any pixel, which is the point
        pass
    argv = c.argv(base, tmp_path)
    line = assert_one_line(run_cli(argv), c.names(base, tmp_path))
    assert not (tmp_path / "w" / "PWNED").exists(), "a planted pickle ran code"
    for o in c.outputs(base, tmp_path):
        assert not Path(o).exists(), o
    assert "object at 0x" not in line


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Tiny random BLIP, DistilBERT and CLIP folders (save_pretrained layout), built offline."""
    from tiny_models import tiny_blip_captioner, tiny_clip_vision, tiny_distilbert

    d = tmp_path_factory.mktemp("hf")
    return {"caption": tiny_blip_captioner(d / "blip"), "distilbert": tiny_distilbert(d / "dist"),
            "clip": tiny_clip_vision(d / "clip")}


HF_COMMANDS = {
    "caption": lambda m, w, t: ["pipeline", "caption", "--in", m, "--out", t / "o.parquet", "--model", w],
    "distilbert": lambda m, w, t: ["pipeline", "embed", "--in", m, "--out", t / "o.parquet", "--encoder", "distilbert",
                                   "--weights", w],
    "clip": lambda m, w, t: ["pipeline", "embed", "--in", m, "--out", t / "o.parquet", "--encoder", "clip",
                             "--weights", w],
}


@pytest.mark.parametrize("kind", ["truncated", "pickle"])
@pytest.mark.parametrize("model", list(HF_COMMANDS))
def test_hostile_hugging_face_folders(hf_models, tmp_path, model, kind):
    """A save_pretrained folder whose weights file is truncated, or replaced by a pickle."""
    from tiny_models import write_face_manifest

    folder = tmp_path / "model"
    shutil.copytree(hf_models[model], folder)
    weights = folder / "model.safetensors"
    if kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
        weights = _evil_pickle(folder / "pytorch_model.bin", tmp_path / "PWNED")
    m = write_face_manifest(tmp_path / "in.parquet", n=4, captions=["a face"] * 4)
    assert_one_line(run_cli(HF_COMMANDS[model](m, folder, tmp_path)), [str(weights), "pipeline weights"])
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "o.parquet").exists()


def test_resnet_imagenet_names_the_file_and_where(base, tmp_path):
    r = run_cli(["train", "run", "--manifest", base["train"], "--val", base["val"], "--model", "resnet18",
                 "--model-opt", 'pretrained="imagenet"', "--epochs", "1", "--out", tmp_path / "o"],
                env={"TORCH_HOME": str(tmp_path / "torch")})
    assert_one_line(r, ["resnet18-f37072fd.pth", str(tmp_path / "torch" / "hub" / "checkpoints"), "pipeline weights"])


def test_cmaen_refuses_pretrained_weights_for_the_tiny_backbone(base, tmp_path):
    r = run_cli(["train", "run", "--manifest", base["train"], "--val", base["val"], "--model", "cmaen",
                 "--loss", "cmaen", "--model-opt", "effnet=tiny", "--model-opt", f"effnet_pretrained={tmp_path / 'x.pth'}",
                 "--epochs", "1", "--out", tmp_path / "o"])
    assert_one_line(r, ["effnet_pretrained", "effnet=s"])


def test_sidecar_without_preprocess_mean(base, tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    shutil.copy(base["run"] / "best.safetensors", d)
    side = json.loads((base["run"] / "best.json").read_text())
    del side["preprocess"]["mean"]
    (d / "best.json").write_text(json.dumps(side))
    for argv in (["train", "eval", "-c", d, "-m", base["test"], "--out", tmp_path / "o"],
                 ["train", "predict", base["img"], "-c", d, "--detector", "none"],
                 ["train", "export", "-c", d, "--out", tmp_path / "o.onnx"]):
        assert_one_line(run_cli(argv), "preprocess.mean")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.onnx").exists()


# ----------------------------------------------------------------------------- wrong device


DEVICE_COMMANDS = {
    "train eval": lambda b, t, dev: ["train", "eval", "-c", b["run"], "-m", b["test"], "--out", t / "o", "--device", dev],
    "train predict": lambda b, t, dev: ["train", "predict", b["img"], "-c", b["run"], "--detector", "none",
                                        "--device", dev],
    "train calibrate": lambda b, t, dev: ["train", "calibrate", "-c", b["run"], "--val", b["val"], "--train-manifest",
                                          b["train"], "--out", t / "o", "--device", dev],
    "train run": lambda b, t, dev: ["train", "run", "--manifest", b["train"], "--val", b["val"], "--model", "vgg",
                                    "--epochs", "1", "--out", t / "o", "--device", dev],
    "pipeline enhance": lambda b, t, dev: ["pipeline", "enhance", "--in", b["test"], "--out", t / "o.parquet",
                                           "--device", dev],
}


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:7"])
@pytest.mark.parametrize("command", list(DEVICE_COMMANDS))
def test_wrong_device(base, tmp_path, command, device):
    if CUDA and device != "gpu":
        pytest.skip("this machine has CUDA")
    assert_one_line(run_cli(DEVICE_COMMANDS[command](base, tmp_path, device)), ["--device", device])
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.parquet").exists()


def test_device_resolver():
    from features.device import DeviceError, resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if CUDA else "cpu")
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


# ----------------------------------------------------------------------------- unwritable outputs


def _blocked(t: Path) -> Path:
    """A path whose parent is a regular file: no user (root included) can create it."""
    (t / "afile").write_text("x")
    return t / "afile" / "sub"


OUTPUT_CASES = {
    "ingest-unwritable": (lambda b, t: ["pipeline", "ingest", _imagefolder(t), "--out", _blocked(t) / "p"],
                          lambda b, t: [str(_blocked(t))]),
    "enhance-out-is-dir": (lambda b, t: ["pipeline", "enhance", "--in", b["test"], "--out", t, "--device", "cpu"],
                           lambda b, t: [str(t), "folder"]),
    "enhance-unwritable": (lambda b, t: ["pipeline", "enhance", "--in", b["test"], "--out", _blocked(t) / "o.parquet",
                                         "--device", "cpu"], lambda b, t: [str(_blocked(t))]),
    "balance-out-is-dir": (lambda b, t: ["pipeline", "balance", "--in", b["train"], "--out", t],
                           lambda b, t: [str(t)]),
    "faces-unwritable": (lambda b, t: ["pipeline", "faces", "--in", b["test"], "--out", _blocked(t) / "o.parquet"],
                         lambda b, t: [str(_blocked(t))]),
    "eval-unwritable": (lambda b, t: ["train", "eval", "-c", b["run"], "-m", b["test"], "--out", _blocked(t)],
                        lambda b, t: [str(_blocked(t))]),
    "run-unwritable": (lambda b, t: ["train", "run", "--manifest", b["train"], "--val", b["val"], "--model", "vgg",
                                     "--epochs", "1", "--out", _blocked(t)], lambda b, t: [str(_blocked(t))]),
    "export-out-is-dir": (lambda b, t: ["train", "export", "-c", b["run"], "--out", t],
                          lambda b, t: [str(t)]),
}


def _imagefolder(t: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("happy", "sad"):
        (t / "imgs" / c).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(t / "imgs" / c / f"{i}.png")
    return t / "imgs"


@pytest.mark.parametrize("case_id", list(OUTPUT_CASES))
def test_unwritable_outputs(base, tmp_path, monkeypatch, case_id):
    argv, names = OUTPUT_CASES[case_id]
    if case_id.startswith("ingest"):
        import pipeline.ingest as ing

        def no_decoding(*a, **k):
            raise AssertionError("images decoded before the output was checked")

        monkeypatch.setattr(ing, "decode_records", no_decoding)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line(run_cli(argv(base, tmp_path)), names(base, tmp_path))
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.tmp"))
    assert set(before) <= {p.name for p in tmp_path.iterdir()}


def test_full_disk_keeps_the_old_file(base, tmp_path, monkeypatch):
    """ENOSPC mid-write: one line naming the output, the previous output intact, no temp file."""
    import errno

    out = tmp_path / "fer_test_x.parquet"
    assert run_cli(["pipeline", "enhance", "--in", base["test"], "--out", out, "--device", "cpu",
                    "--clean"]).exit_code == 0
    old = out.read_bytes()

    def full(table, where, **kw):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    import pipeline.runner as runner

    monkeypatch.setattr(runner.pq, "write_table", full)
    monkeypatch.setattr("features.manifest.pq.write_table", full)
    r = run_cli(["pipeline", "enhance", "--in", base["test"], "--out", out, "--sr", "none", "--color", "gray2rgb",
                 "--device", "cpu"])
    assert_one_line(r, [str(out), "No space left"])
    assert out.read_bytes() == old
    assert not [p for p in tmp_path.rglob("*.tmp")]


# ----------------------------------------------------------------------------- sets, locks, kills


def _ingest(src: Path, prefix: Path, seed: int = 0):
    r = run_cli(["pipeline", "ingest", src, "--layout", "imagefolder", "--out", prefix, "--seed", seed,
                 "--test-fraction", "0.3", "--val-fraction", "0.2"])
    assert r.exit_code == 0, r.output
    return r


def test_split_files_share_a_stamp_and_readers_check_it(base, tmp_path):
    src = _imagefolder(tmp_path)
    _ingest(src, tmp_path / "a" / "m", seed=0)
    _ingest(src, tmp_path / "b" / "m", seed=1)
    a = {s: tmp_path / "a" / f"m_{s}.parquet" for s in ("train", "val", "test")}
    check_same_set(a.values())  # one run: fine
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(a["train"], mixed / "m_train.parquet")
    shutil.copy(tmp_path / "b" / "m_val.parquet", mixed / "m_val.parquet")
    r = run_cli(["train", "run", "--manifest", mixed / "m_train.parquet", "--model", "vgg", "--epochs", "1",
                 "--out", tmp_path / "o"])
    assert_one_line(r, [str(mixed / "m_train.parquet"), "pipeline ingest"])
    assert not (tmp_path / "o" / "best.safetensors").exists()
    r = run_cli(["pipeline", "stats", mixed / "m_train.parquet", mixed / "m_val.parquet"])
    assert_one_line(r, ["different `pipeline ingest` runs"])
    assert run_cli(["pipeline", "stats", a["train"], a["val"], a["test"]]).exit_code == 0


KILL_AFTER_FIRST_RENAME = """
import os, signal, sys
sys.path.insert(0, {tests!r})
real = os.replace
n = [0]
def replace(a, b):
    real(a, b)
    n[0] += 1
    if str(b).endswith('.parquet') and n[0] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from pipeline.cli import main
main({argv!r})
"""

KILL_MID_WRITE = """
import os, signal
from features.manifest import atomic_write_bytes
def write(tmp):
    open(tmp, 'wb').write(b'half')
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write_bytes({path!r}, write)
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_killed_writer_leaves_a_temp_that_the_next_write_sweeps(tmp_path):
    target = tmp_path / "m.parquet"
    r = _python(KILL_MID_WRITE.format(path=str(target)))
    assert r.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".m.parquet.*.tmp"))
    assert len(left) == 1 and not target.exists()
    atomic_write_bytes(target, lambda tmp: Path(tmp).write_bytes(b"whole"))
    assert target.read_bytes() == b"whole"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


KILL_IN_STAGE = """
import os, signal
import pyarrow.parquet as pq
real = pq.write_table
n = [0]
def write_table(table, where, **kw):
    n[0] += 1
    if n[0] == {at}:  # half a file, then the power goes
        open(where, 'wb').write(b'PAR1 half')
        os.kill(os.getpid(), signal.SIGKILL)
    return real(table, where, **kw)
pq.write_table = write_table
from pipeline.cli import main
main({argv!r})
"""


@pytest.mark.parametrize("at", [1, 3])  # killed in a batch's part file, or later in the output itself
def test_a_killed_stage_leaves_no_temp_after_a_rerun(base, tmp_path, at):
    out = tmp_path / "o.parquet"
    argv = ["enhance", "--in", str(base["test"]), "--out", str(out), "--sr", "none", "--color", "gray2rgb",
            "--batch-size", "8", "--device", "cpu"]
    r = _python(KILL_IN_STAGE.format(at=at, argv=argv))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert list(tmp_path.rglob(".*.tmp")), "the kill should have left a temp file to sweep"
    assert run_cli(["pipeline", *argv]).exit_code == 0
    assert not list(tmp_path.rglob(".*.tmp"))
    assert pq.read_metadata(out).num_rows == pq.read_metadata(base["test"]).num_rows


def test_a_live_writers_temp_is_never_swept(tmp_path):
    from features.manifest import sweep_stale_tmp

    live = tmp_path / f".m.parquet.{os.getpid()}-abcdefgh.tmp"
    live.write_bytes(b"in progress")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.parquet.{int(dead.stdout)}-abcdefgh.tmp"
    stale.write_bytes(b"left by a dead writer")
    assert sweep_stale_tmp(tmp_path) == [stale]
    assert live.exists()


def test_a_killed_reingest_never_leaves_an_accepted_mixed_set(base, tmp_path):
    src = _imagefolder(tmp_path)
    prefix = tmp_path / "m"
    _ingest(src, prefix, seed=0)
    old = {s: (tmp_path / f"m_{s}.parquet").read_bytes() for s in ("train", "val", "test")}
    argv = ["ingest", str(src), "--layout", "imagefolder", "--out", str(prefix), "--seed", "1",
            "--test-fraction", "0.3", "--val-fraction", "0.2"]
    r = _python(KILL_AFTER_FIRST_RENAME.format(tests=str(ROOT / "tests"), argv=argv))
    assert r.returncode == -signal.SIGKILL, r.stderr
    files = [tmp_path / f"m_{s}.parquet" for s in ("train", "val", "test")]
    changed = [f for f in files if f.read_bytes() != old[f.stem.split("_")[1]]]
    assert len(changed) == 1  # killed between its renames: one new file beside two old ones
    with pytest.raises(ManifestError, match="different `pipeline ingest` runs"):
        check_same_set(files)
    r = run_cli(["train", "run", "--manifest", files[0], "--model", "vgg", "--epochs", "1", "--out", tmp_path / "o"])
    assert_one_line(r, "pipeline ingest")
    # the rerun the message asks for repairs the set and leaves no temp file behind
    _ingest(src, prefix, seed=1)
    check_same_set(files)
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_runs_into_one_folder(base, tmp_path):
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".lock", "a+") as f:  # another `train run` holds the folder
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run_cli(["train", "run", "--manifest", base["train"], "--val", base["val"], "--model", "vgg",
                     "--epochs", "1", "--out", out])
    assert_one_line(r, [str(out), "another `train run`"])
    assert not (out / "best.safetensors").exists()


# ----------------------------------------------------------------------------- ingest inputs


def test_fer2013_csv_bad_rows_are_rejects(tmp_path):
    rng = np.random.default_rng(0)
    px = lambda: " ".join(str(v) for v in rng.integers(0, 256, 48 * 48))  # noqa: E731
    lines = ["emotion,pixels,Usage"] + [f"{i % 7},{px()},Training" for i in range(20)] + \
        [f"{i % 7},{px()},PublicTest" for i in range(6)]
    lines += [f"3,{px().replace(' ', ' x', 1)},Training",   # 20+6 = row 26: a non-numeric pixel
              f"3,{' '.join(['7'] * 2303)},Training",       # row 27: a short pixel string
              f"3,{px()}",                                  # row 28: no Usage field
              f"3,{px()},Validation"]                       # row 29: unknown Usage
    csv = tmp_path / "fer2013.csv"
    csv.write_text("\n".join(lines) + "\n")
    r = run_cli(["pipeline", "ingest", csv, "--out", tmp_path / "m"])
    assert r.exit_code == 0, r.output
    rej = pq.read_table(tmp_path / "m_rejects.csv") if False else None  # noqa: F841
    import csv as _csv

    with open(tmp_path / "m_rejects.csv") as f:
        got = {row["source_path"]: row["reason"] for row in _csv.DictReader(f)}
    assert set(got) == {f"fer2013.csv#{i}" for i in (26, 27, 28, 29)}
    assert "not a number" in got["fer2013.csv#26"] and "Usage" in got["fer2013.csv#29"]
    n = sum(pq.read_metadata(tmp_path / f"m_{s}.parquet").num_rows for s in ("train", "val", "test"))
    assert n == 26  # every good row kept


def test_reject_reasons_name_the_row_not_an_object(tmp_path):
    src = _imagefolder(tmp_path)
    (src / "happy" / "broken.png").write_bytes(b"\x89PNG not really")
    r = run_cli(["pipeline", "ingest", src, "--layout", "imagefolder", "--out", tmp_path / "m"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "m_rejects.csv").read_text()
    assert "happy/broken.png" in text and "0x" not in text


def test_ferplus_votes_beside_fer2013_are_not_dropped_silently(tmp_path):
    d = tmp_path / "fer2013"
    d.mkdir()
    rows = _rows(12, "train")
    pq.write_table(pa.table({"image": [r["image"] for r in rows], "label": [r["label"] for r in rows]}),
                   d / "train.parquet")
    pq.write_table(pa.table({"image": [r["image"] for r in rows[:6]], "label": [r["label"] for r in rows[:6]]}),
                   d / "test.parquet")
    pq.write_table(pa.table({"fer2013_source_path": ["train.parquet#0"]}), d / "ferplus.parquet")
    r = run_cli(["pipeline", "ingest", d, "--out", tmp_path / "m"])
    assert r.exit_code == 0, r.output
    assert "ignored" in r.output and "ferplus.parquet" in r.output and "--layout ferplus" in r.output


# ----------------------------------------------------------------------------- quiet decisions


def test_eval_of_a_shipped_checkpoint_writes_outside_the_package():
    from train.evaluate import default_out

    weights = ROOT / "train" / "weights"
    shipped = next(weights.glob("*.safetensors"))
    out = default_out([shipped], Path("manifests/fer_test.parquet"))
    assert not out.resolve().is_relative_to(ROOT / "train")
    assert out == Path("runs/eval") / f"{shipped.stem}-fer_test"
    assert default_out([ROOT / "tests"], Path("m.parquet")) == ROOT / "tests" / "eval-m"  # a user's run dir


def test_logged_lr_is_the_epochs_own(base, tmp_path):
    r = run_cli(["train", "run", "--manifest", base["train"], "--val", base["val"], "--model", "vgg",
                 "--model-opt", 'stages=[8,16]', "--model-opt", "fc_dim=16", "--epochs", "2", "--lr", "0.01",
                 "--scheduler", "cosine", "--warmup", "0", "--batch-size", "14", "--out", tmp_path / "o",
                 "--threads", "1"])
    assert r.exit_code == 0, r.output
    log = [json.loads(x) for x in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert log[0]["lr"] == pytest.approx(0.01)  # epoch 1 ran at the full rate; cosine lowers epoch 2's
    assert log[1]["lr"] < log[0]["lr"]
