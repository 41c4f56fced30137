"""One throughput table from the JSON files the stage and training benchmarks write.

    python benchmarks/bench_all.py [--dir runs/bench] [--out runs/bench/summary.json] [--only pipeline]

Each benchmark writes DIR/<name>.json (`make bench-<name>`); this script measures nothing
itself. It prints stage | ours (img/s) | naive (img/s) | ratio | note, where "naive" is the
seeds' one-image-at-a-time fp32 loop wherever the benchmark times one (blank otherwise) and
ratio = ours / naive. A benchmark whose JSON is missing gives a row "not run (make bench-X)".
The machine block (CPU model, cores, load average, GPU) is read when this script runs; each
row's `measured_at` in summary.json is its JSON file's modification time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Row:
    stage: str
    ours: float | None = None
    naive: float | None = None
    note: str = ""
    source: str = ""
    measured_at: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.naive:
            return None
        return self.ours / self.naive


# ---- one reader per benchmark: its JSON (as the script writes it) -> rows -------------------

def _ingest(d: dict) -> list[Row]:
    q = ", ".join(f"{k} {v:.3f} s" for k, v in d.get("query_median_s", {}).items())
    return [Row(f"ingest: FER2013 parquet -> manifests ({d['images']:,} images)", d["images_per_s"],
                note=f"workers={d.get('workers', '?')}, {d['seconds']} s; median {q}" if q else "")]


def _enhance(d: dict) -> list[Row]:
    rows = {r["what"]: r["images_per_s"] for r in d["rows"]}

    def find(*parts: str, without: str = "") -> list[tuple[str, float]]:
        return [(w, v) for w, v in rows.items() if all(p in w for p in parts) and not (without and without in w)]

    out = []
    bic_b, bic_1 = find("bicubic", "batched"), find("bicubic", "per image")
    if bic_b:
        out.append(Row("enhance: bicubic x4, batched", bic_b[0][1], bic_1[0][1] if bic_1 else None,
                       "naive = one image at a time"))
    naive = find("SwinIR", "naive")
    for what, v in find("SwinIR", without="naive"):
        prec = "bf16" if what.endswith("bf16") else "fp32"
        batch = what.split("batch ")[-1].split(",")[0] if "batch " in what else "?"
        out.append(Row(f"enhance: SwinIR-S x4 (random weights), batch {batch}, {prec}", v,
                       naive[0][1] if naive else None, "naive = one image at a time, fp32"))
    extra = f"{d.get('n_images', '?')} images {d.get('input', '')}".strip()
    return [Row(r.stage, r.ours, r.naive, f"{r.note}; {extra}") for r in out]


def _caption(d: dict) -> list[Row]:
    ips = d["images_per_s"]
    naive = ips.get("naive")
    names = {"batched_fp32": f"batch {d.get('batch', '?')}, fp32", "batched_bf16": f"batch {d.get('batch', '?')}, bf16",
             "single_bf16": "batch 1, bf16"}
    note = f"{d.get('images', '?')} images ({d.get('source', '?')}), {d.get('tokens', '?')} tokens"
    cpu = d.get("speedup_cpu_s", {})
    return [Row(f"caption: BLIP-base (random weights), {names.get(k, k)}", v, naive,
                note + (f"; CPU-time ratio {cpu[k]}x" if k in cpu else ""))
            for k, v in ips.items() if k != "naive"] or [Row("caption: BLIP-base", None, naive, "no batched variant")]


def _embed(d: dict) -> list[Row]:
    what = {"minilm": ("embed: MiniLM-L6 text", "captions/s, not images"),
            "resnet18_random": ("embed: ResNet-18 image (random weights)", ""),
            "clip_b32_random": ("embed: CLIP ViT-B/32 image (random weights)", "")}
    return [Row(label, d[k]["per_s"], note=(note + "; " if note else "") + f"batch {d.get('batch', '?')}")
            for k, (label, note) in what.items() if k in d]


def _balance(d: dict) -> list[Row]:
    method = d.get("settings", {}).get("method", "?")
    total = d.get("total_seconds") or d["seconds"]
    return [Row(f"balance: {method} in pixel space", d["rows_in"] / total,
                note=f"input rows/s; {d['rows_in']:,} rows +{d['rows_new']:,} new in {total:.1f} s, "
                     f"peak RSS {d.get('peak_rss_mb', 0):,.0f} MB")]


def _train(d: dict) -> list[Row]:
    out = []
    for r in d["rows"]:
        if "error" in r:
            out.append(Row(f"train: {r['what']} {r.get('amp', '')}".rstrip(), note=f"failed: {r['error'][:80]}"))
        elif r["what"].startswith("loader"):
            out.append(Row(f"train {r['what']}", r["images_per_s"], note="no model"))
        else:
            clips = r.get("items_per_s") if r.get("items_per_s") != r["images_per_s"] else None
            note = f"forward+backward+step, batch {r['batch']}" + (f"; {clips} clips/s" if clips else "")
            out.append(Row(f"train: {r['what']} {r['amp']}", r["images_per_s"], note=note))
    dev = d.get("device", "")
    return [Row(r.stage, r.ours, r.naive, f"{r.note}; {dev}" if dev and i == 0 else r.note)
            for i, r in enumerate(out)]


def _scale(d: dict) -> list[Row]:
    res = d["results"]
    local = next((r["images_per_s"] for r in res if r["executor"] == "local"), None)
    out = []
    for r in res:
        label = "local" if r["executor"] == "local" else f"{r['executor']}, {r['workers']} worker(s)"
        note = f"{d.get('rows', '?')} rows, enhance bicubic"
        if local and r["executor"] != "local":
            note += f"; {r['images_per_s'] / local:.2f}x local; start-up {d.get('ray_startup_s', 0):.1f} s excluded"
        out.append(Row(f"scale: {label}", r["images_per_s"], note=note))
    return out


@dataclass(frozen=True)
class Source:
    name: str  # DIR/<name>.json, written by `make bench-<name>`
    group: str  # "pipeline" or "train": what `--only` selects
    label: str  # the row's stage when the JSON is missing or unreadable
    read: Callable[[dict], list[Row]]


SOURCES = (
    Source("ingest", "pipeline", "ingest", _ingest),
    Source("enhance", "pipeline", "enhance", _enhance),
    Source("caption", "pipeline", "caption", _caption),
    Source("embed", "pipeline", "embed", _embed),
    Source("balance", "pipeline", "balance", _balance),
    Source("train", "train", "train", _train),
    Source("scale", "train", "scale (local vs Ray)", _scale),
)


def collect(directory: Path, only: str | None = None) -> list[Row]:
    rows: list[Row] = []
    for src in SOURCES:
        if only and src.group != only:
            continue
        path = directory / f"{src.name}.json"
        if not path.exists():
            rows.append(Row(src.label, note=f"not run (make bench-{src.name})", source=str(path)))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
        try:
            got = src.read(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            # an old or hand-edited file must not hide every other row
            rows.append(Row(src.label, note=f"unreadable {path.name} ({type(e).__name__}: {e}); "
                                             f"re-run make bench-{src.name}", source=str(path)))
            continue
        rows += [Row(r.stage, r.ours, r.naive, r.note, str(path), when) for r in got]
    return rows


# ---- the machine, read now -----------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {"cpu": cpu, "cores": cores, "load_average_1_5_15": load, "gpu": gpus() or "none"}


def gpus() -> str:
    """NVIDIA GPUs from the driver's /proc files: no torch import, so this script stays instant."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    return ", ".join(names)


# ---- output --------------------------------------------------------------------------------

def _num(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}" if x < 1 else f"{x:.1f}"


def table(rows: list[Row]) -> str:
    head = ("stage", "ours (img/s)", "naive (img/s)", "ratio", "note")
    body = [(r.stage, _num(r.ours), _num(r.naive), f"{r.ratio:.2f}x" if r.ratio else "", r.note) for r in rows]
    w = [max(len(x[i]) for x in [head, *body]) for i in range(4)]

    def fmt(c) -> str:
        return f"{c[0]:<{w[0]}}  {c[1]:>{w[1]}}  {c[2]:>{w[2]}}  {c[3]:>{w[3]}}  {c[4]}".rstrip()

    return "\n".join([fmt(head), fmt(["-" * n for n in w] + ["----"]), *map(fmt, body)])


def summary(rows: list[Row], mach: dict) -> dict:
    return {"generated_at": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": mach,
            "rows": [asdict(r) | {"ratio": round(r.ratio, 3) if r.ratio else None} for r in rows],
            "not_run": [r.note.split("(make ")[1].rstrip(")") for r in rows if r.note.startswith("not run")]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("runs/bench"), help="where the benchmarks wrote <name>.json")
    ap.add_argument("--out", type=Path, default=None, help="summary JSON (default DIR/summary.json)")
    ap.add_argument("--only", choices=["pipeline", "train"], default=None, help="only these benchmarks' rows")
    a = ap.parse_args(argv)
    if not a.dir.is_dir():
        print(f"no folder {a.dir}: run `make bench` (or a `make bench-<name>`) first, or pass --dir",
              file=sys.stderr)
        return 2
    rows = collect(a.dir, a.only)
    mach = machine()
    load = " ".join(map(str, mach["load_average_1_5_15"])) or "?"
    print(f"machine: {mach['cpu']}, {mach['cores']} cores, load average {load} (now), GPU {mach['gpu']}")
    print(table(rows))
    # the JSON files may come from different days or machines: say when each was written
    when = {Path(r.source).stem: r.measured_at for r in rows if r.measured_at}
    if when:
        print("measured: " + "; ".join(f"{k} {v}" for k, v in when.items()))
    out = a.out or a.dir / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary(rows, mach), indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
