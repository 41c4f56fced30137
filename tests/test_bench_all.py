"""benchmarks/bench_all.py: one table from the benchmarks' JSON files, "not run" rows, summary.json."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


bench_all = _load("bench_all")

# Shaped as each script writes them (keys taken from the scripts; numbers invented).
FAKE = {
    "ingest": {"images": 35887, "seconds": 25.0, "images_per_s": 1435.5, "read_decode_split_s": 20.0,
               "write_s": 5.0, "workers": "auto", "query_median_s": {"class-count query": 0.05}},
    "enhance": {"machine": "CPU, torch threads=2", "n_images": 16, "input": "48x48 grey", "rows": [
        {"what": "bicubic x4, batched", "images_per_s": 140.0},
        {"what": "bicubic x4, per image", "images_per_s": 70.0},
        {"what": "SwinIR-S x4 (0.93 M params), batch 8, fp32", "images_per_s": 0.4},
        {"what": "SwinIR-S x4 (0.93 M params), batch 8, bf16", "images_per_s": 0.5},
        {"what": "SwinIR-S x4, naive: one image at a time, fp32", "images_per_s": 0.1}],
        "swinir_batched_over_naive": 5.0, "bicubic_batched_over_per_image": 2.0},
    "caption": {"images": 16, "source": "FER2013 test[:16]", "tokens": 20, "batch": 16, "params": 1,
                "threads": 2, "cpu": "x86_64", "torch": "2", "wall_s": {}, "cpu_s": {},
                "images_per_s": {"naive": 0.05, "batched_fp32": 0.2, "batched_bf16": 0.25},
                "speedup_cpu_s": {"naive": 1.0, "batched_fp32": 2.8, "batched_bf16": 2.7}},
    "embed": {"n": 64, "batch": 64, "threads": 2, "minilm": {"per_s": 15.0},
              "resnet18_random": {"per_s": 4.8}, "clip_b32_random": {"per_s": 2.4}},
    "balance": {"settings": {"method": "borderline"}, "space": "pixels 2304", "seconds": 100.0,
                "rows_in": 28709, "rows_new": 21796, "total_seconds": 120.0, "peak_rss_mb": 1774.0},
    "train": {"device": "CPU (x86_64, 1 torch threads)", "rows": [
        {"what": "loader: in-memory batches, augment=none", "batch": 64, "seconds": 0.1, "images_per_s": 69630.3},
        {"what": "vgg", "amp": "fp32", "batch": 64, "steps": 2, "seconds": 25.8, "items_per_s": 5.0,
         "images_per_s": 5.0, "params_M": 40.37},
        {"what": "r3d18", "amp": "fp32", "batch": 2, "steps": 2, "seconds": 40.0, "items_per_s": 0.1,
         "images_per_s": 1.6, "params_M": 33.17},
        {"what": "cmaen", "amp": "fp32", "error": "RuntimeError: out of memory"}]},
    "scale": {"rows": 512, "ray_startup_s": 7.4, "results": [
        {"executor": "local", "workers": 1, "seconds": 16.0, "images_per_s": 32.0, "ratio_to_local": 1.0},
        {"executor": "ray", "workers": 2, "seconds": 160.0, "images_per_s": 3.2, "ratio_to_local": 0.1}]},
}


def _write(d: Path, names) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / f"{n}.json").write_text(json.dumps(FAKE[n]))
    return d


def _rows(summary: dict) -> dict[str, dict]:
    return {r["stage"]: r for r in summary["rows"]}


def test_every_benchmark_becomes_rows_with_ratios(tmp_path, capsys):
    d = _write(tmp_path / "bench", FAKE)
    assert bench_all.main(["--dir", str(d)]) == 0
    out = capsys.readouterr().out
    s = json.loads((d / "summary.json").read_text())
    rows = _rows(s)
    assert s["not_run"] == []
    assert "not run" not in out

    r = rows["enhance: SwinIR-S x4 (random weights), batch 8, bf16"]
    assert (r["ours"], r["naive"], r["ratio"]) == (0.5, 0.1, 5.0)
    assert rows["enhance: SwinIR-S x4 (random weights), batch 8, fp32"]["ratio"] == 4.0
    assert rows["enhance: bicubic x4, batched"]["ratio"] == 2.0
    c = rows["caption: BLIP-base (random weights), batch 16, fp32"]
    assert (c["ours"], c["naive"], c["ratio"]) == (0.2, 0.05, 4.0)
    assert "CPU-time ratio 2.8x" in c["note"]
    # no naive loop measured: naive and ratio stay empty, never invented
    for stage in ("ingest: FER2013 parquet -> manifests (35,887 images)", "train: vgg fp32", "scale: local",
                  "embed: ResNet-18 image (random weights)"):
        assert rows[stage]["ours"] is not None and rows[stage]["naive"] is None and rows[stage]["ratio"] is None
    assert rows["balance: borderline in pixel space"]["ours"] == pytest.approx(28709 / 120.0)
    assert "0.1 clips/s" in rows["train: r3d18 fp32"]["note"]
    assert rows["train: cmaen fp32"]["ours"] is None and "failed: RuntimeError" in rows["train: cmaen fp32"]["note"]
    assert "0.10x local" in rows["scale: ray, 2 worker(s)"]["note"]
    assert all(r["measured_at"] for r in s["rows"])

    # the printed table: header, one line per row, the ratio column filled where naive exists
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "GPU" in lines[0] and "cores" in lines[0]
    assert lines[1].split()[:6] == ["stage", "ours", "(img/s)", "naive", "(img/s)", "ratio"]
    body = [ln for ln in lines if ln.startswith(("ingest", "enhance", "caption", "embed", "balance", "train", "scale"))]
    assert len(body) == len(s["rows"])
    swin = next(ln for ln in body if "batch 8, bf16" in ln)
    assert "5.00x" in swin and "0.5" in swin


def test_missing_json_gives_not_run_rows(tmp_path, capsys):
    d = _write(tmp_path / "bench", ["enhance", "scale"])
    assert bench_all.main(["--dir", str(d), "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "s.json").read_text())
    assert sorted(s["not_run"]) == ["bench-balance", "bench-caption", "bench-embed", "bench-ingest", "bench-train"]
    for name in ("ingest", "caption", "balance", "train"):
        assert f"not run (make bench-{name})" in out
    rows = _rows(s)
    assert rows["caption"]["ours"] is None and rows["caption"]["note"] == "not run (make bench-caption)"
    assert rows["enhance: bicubic x4, batched"]["ours"] == 140.0


def test_only_pipeline_and_unreadable_file(tmp_path, capsys):
    d = _write(tmp_path / "bench", ["ingest", "train"])
    (d / "caption.json").write_text("{not json")
    (d / "enhance.json").write_text(json.dumps({"rows": [{"images_per_s": 1.0}]}))  # 'what' missing
    assert bench_all.main(["--dir", str(d), "--only", "pipeline"]) == 0
    s = json.loads((d / "summary.json").read_text())
    stages = [r["stage"] for r in s["rows"]]
    assert not any(x.startswith(("train", "scale")) for x in stages)
    rows = _rows(s)
    assert rows["caption"]["note"].startswith("unreadable caption.json") and "make bench-caption" in rows["caption"]["note"]
    assert rows["enhance"]["note"].startswith("unreadable enhance.json (KeyError")
    assert rows["ingest: FER2013 parquet -> manifests (35,887 images)"]["ours"] == 1435.5


def test_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert bench_all.main(["--dir", str(tmp_path / "nope")]) == 2
    assert "run `make bench`" in capsys.readouterr().err


def test_machine_block():
    m = bench_all.machine()
    assert m["cores"] >= 1 and isinstance(m["cpu"], str) and m["gpu"]
    assert len(m["load_average_1_5_15"]) == 3


def test_real_balance_json_is_read(tmp_path):
    """The reader against what bench_balance.py really writes (random copies of a tiny manifest: fast)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from train_fixtures import write_synth

    manifest = write_synth(tmp_path / "m.parquet", 30, "train")
    d = tmp_path / "bench"
    _load("bench_balance").main(["--manifest", str(manifest), "--method", "random", "--json", str(d / "balance.json")])
    rows = bench_all.collect(d)
    bal = next(r for r in rows if r.stage.startswith("balance"))
    assert bal.stage == "balance: random in pixel space" and bal.ours > 0 and "30 rows" in bal.note
