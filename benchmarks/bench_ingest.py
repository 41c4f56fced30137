"""Benchmark (not a test): ingest the whole shared FER2013 and time the stats queries.

    python benchmarks/bench_ingest.py --data ../shared/data/fer2013 [--workers 0] [--repeat 5]

Prints images/s for the full ingest (read, decode, hash, split, duplicate flags, write) and the
time of the DuckDB class-count query over the three manifests (target <= 0.1 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder with train.parquet / test.parquet")
    ap.add_argument("--workers", type=int, default=0, help="decoding processes (0 = auto)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each query (median reported)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if not (args.data / "train.parquet").exists():
        print(f"no {args.data}/train.parquet: point --data at the shared FER2013 folder", file=sys.stderr)
        return 2

    from features.query import class_counts, duplicate_summary
    from pipeline.ingest import IngestConfig, ingest, write_result

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        t0 = time.perf_counter()
        result = ingest(args.data, IngestConfig(layout="parquet", dataset="fer2013", workers=args.workers))
        t1 = time.perf_counter()
        written, _ = write_result(result, Path(tmp) / "fer")
        t2 = time.perf_counter()
        n = sum(t.num_rows for t in result.tables.values())
        print(f"ingest: {n:,} images in {t2 - t0:.1f} s ({n / (t2 - t0):,.0f} images/s; "
              f"read+decode+split {t1 - t0:.1f} s, write {t2 - t1:.1f} s; workers={args.workers or 'auto'})")
        res = {"images": n, "seconds": round(t2 - t0, 2), "images_per_s": round(n / (t2 - t0), 1),
               "read_decode_split_s": round(t1 - t0, 2), "write_s": round(t2 - t1, 2),
               "workers": args.workers or "auto", "query_median_s": {}}
        paths = [str(p) for p in written.values()]
        for name, fn in (("class-count query", lambda: class_counts(paths, "7", ("split", "orig_split"))),
                         ("duplicate summary", lambda: duplicate_summary(paths))):
            times = []
            for _ in range(args.repeat):
                s = time.perf_counter()
                fn()
                times.append(time.perf_counter() - s)
            res["query_median_s"][name] = round(statistics.median(times), 4)
            print(f"{name}: median {statistics.median(times):.3f} s over {args.repeat} runs "
                  f"(min {min(times):.3f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
