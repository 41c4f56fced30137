"""The same stage on the same manifest: local executor vs Ray Data at 1 and 2 workers.

Prints images/s, the ratio to local, and Ray's start-up overhead (ray.init on this machine).
Each run gets a fresh work dir, so nothing is reused between them.

    python benchmarks/bench_scale.py --manifest manifests/fer_val.parquet --rows 1024
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.manifest import read_manifest, write_manifest  # noqa: E402
from pipeline.enhance import EnhanceStage  # noqa: E402
from pipeline.parts import RayConfig, RunConfig  # noqa: E402
from pipeline.runner import run_stage  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default="manifests/fer_val.parquet")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sr", default="bicubic")
    ap.add_argument("--json", default="runs/bench/scale.json")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    table, ls = read_manifest(args.manifest)
    src = write_manifest(table.slice(0, args.rows), tmp / "in.parquet", ls, {"bench": "scale"})
    n = min(args.rows, table.num_rows)
    stage = EnhanceStage(sr=args.sr, color="gray2rgb")

    def timed(name, cfg):
        out = tmp / f"{name}.parquet"
        t0 = time.perf_counter()
        run_stage(stage, src, out, cfg)
        dt = time.perf_counter() - t0
        shutil.rmtree(tmp / f"{name}.parquet.work", ignore_errors=True)
        return dt

    results = []
    local_s = timed("local", RunConfig(batch_size=args.batch_size))
    results.append({"executor": "local", "workers": 1, "seconds": local_s, "images_per_s": n / local_s})

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    for workers in (1, 2):
        cfg = RunConfig(batch_size=args.batch_size, executor="ray", ray=RayConfig(concurrency=workers))
        s = timed(f"ray{workers}", cfg)
        results.append({"executor": "ray", "workers": workers, "seconds": s, "images_per_s": n / s})
    ray.shutdown()

    print(f"\nstage: enhance --sr {args.sr} --color gray2rgb, {n} rows of {args.manifest}, "
          f"batch {args.batch_size}; Ray start-up {startup:.1f} s (not included below)")
    print(f"{'executor':10} {'workers':>7} {'seconds':>8} {'img/s':>8} {'vs local':>8}")
    for r in results:
        r["ratio_to_local"] = r["images_per_s"] / results[0]["images_per_s"]
        print(f"{r['executor']:10} {r['workers']:>7} {r['seconds']:>8.1f} {r['images_per_s']:>8.1f} "
              f"{r['ratio_to_local']:>8.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": n, "ray_startup_s": startup, "results": results}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
