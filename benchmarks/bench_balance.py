"""Benchmark (not a test): the FER2013 training split through `pipeline balance` in pixel space.

    python benchmarks/bench_balance.py --manifest manifests/fer_train.parquet

When that manifest does not exist yet, one is built in a temporary folder from
../shared/data/fer2013/train.parquet (all 28,709 training rows, no val carved out). Prints the
seconds of each step, the rows made, and the process's peak resident memory. Target on the
2-core CPU machine: <= 2 minutes for BorderlineSMOTE.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.labels import get_label_set  # noqa: E402
from features.manifest import read_manifest, sample_id, to_table, write_manifest  # noqa: E402
from pipeline.balance import BalanceConfig, balance_manifest  # noqa: E402


def manifest_from_shared(data: Path, out: Path) -> Path:
    """The shared FER2013 train.parquet as a train-only manifest (what `pipeline ingest` would give,
    minus the validation carve-out)."""
    import pyarrow.parquet as pq

    src = data / "train.parquet"
    if not src.exists():
        raise SystemExit(f"neither the manifest nor {src} exists; pass --manifest or --data")
    t = pq.read_table(src)
    n = t.num_rows
    paths = t.column("source_path").to_pylist()
    ls = get_label_set("fer2013")
    labels = t.column("label").to_pylist()
    rows = {
        "sample_id": [sample_id("fer2013", p) for p in paths], "dataset": ["fer2013"] * n, "split": ["train"] * n,
        "orig_split": t.column("usage").to_pylist(), "source_path": paths, "label": labels,
        "label_id": [ls.index(x) for x in labels], "label_set": [ls.name] * n, "image": t.column("image"),
        "image_format": ["jpeg"] * n, "width": [48] * n, "height": [48] * n, "channels": [1] * n,
        "pixel_hash": t.column("pixel_sha1"), "synthetic": [False] * n, "leak": [False] * n,
    }
    import pyarrow as pa

    table = to_table(pa.table(rows))
    return write_manifest(table, out, ls, {"command": "benchmarks/bench_balance.py", "source": str(src)})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, default=ROOT / "manifests" / "fer_train.parquet")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fer2013")
    ap.add_argument("--method", default="borderline", choices=["borderline", "smote", "random"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="the full report as JSON: alone, printed; with PATH, written there")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_balance_") as tmp:
        path = args.manifest
        if not path.exists():
            print(f"{path} not found; building a train manifest from {args.data}/train.parquet", flush=True)
            path = manifest_from_shared(args.data, Path(tmp) / "fer_train.parquet")
        t0 = time.perf_counter()
        table, ls = read_manifest(path)
        t_read = time.perf_counter() - t0
        out, rep = balance_manifest(table, ls, BalanceConfig(method=args.method, seed=args.seed))
        t1 = time.perf_counter()
        write_manifest(out, Path(tmp) / "balanced.parquet", ls, {"command": "bench_balance"})
        t_write = time.perf_counter() - t1
        size_mb = (Path(tmp) / "balanced.parquet").stat().st_size / 1e6

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    total = t_read + rep["seconds"] + t_write
    print(f"manifest: {path} ({rep['rows_in']:,} rows, {rep['space']} dims)")
    print(f"method {args.method}, seed {args.seed}: +{rep['rows_new']:,} synthetic rows")
    for c in rep["classes"]:
        print(f"  {c['label']:<9} {c['before']:>6,} -> {c['after']:>6,} (target {c['target']:,})")
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in {"read": t_read, **rep["seconds_by_step"], "write": t_write}.items())
    print(f"seconds: {total:.1f} total ({steps})")
    print(f"peak resident memory: {peak_mb:,.0f} MB; balanced manifest {size_mb:.0f} MB")
    print(f"parents exact: {rep['parents_exact']} (max distance {rep['parent_max_distance']:.2g})")
    for m in rep["shortfalls"]:
        print("warning:", m)
    if args.json:
        text = json.dumps(rep | {"total_seconds": total, "peak_rss_mb": peak_mb}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
