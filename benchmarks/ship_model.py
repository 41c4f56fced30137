"""Make a trained run the package's default model: copy its best checkpoint into train/weights/,
evaluate it once on the FER2013 test manifest (plain and flip-TTA), and write the results and
the model card next to it.

    python benchmarks/ship_model.py --run runs/fer_vgg_w05 --test manifests/fer_test.parquet

The test split is read here, once, after training chose its checkpoint on validation rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WEIGHTS = Path(__file__).resolve().parents[1] / "train" / "weights"


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a `train run` output folder")
    ap.add_argument("--test", default="manifests/fer_test.parquet", type=Path)
    ap.add_argument("--name", default="fer2013_vgg")
    ap.add_argument("--command", default="", help="the train run command line, for the card")
    args = ap.parse_args(argv)

    from train.evaluate import EvalConfig, evaluate, training_log_of

    WEIGHTS.mkdir(parents=True, exist_ok=True)
    dst = WEIGHTS / f"{args.name}.safetensors"
    shutil.copyfile(args.run / "best.safetensors", dst)
    shutil.copyfile(args.run / "best.json", WEIGHTS / f"{args.name}.json")
    report = evaluate(dst, args.test, EvalConfig(tta="flip", plots=True), out_dir=args.run / "test_eval")
    sidecar = json.loads((WEIGHTS / f"{args.name}.json").read_text())
    log_path = training_log_of(args.run)  # a `train calibrate` output: its source run's log
    if log_path is None:
        raise SystemExit(f"{args.run} has no log.jsonl (nor does the run it was calibrated from)")
    log = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    v = report["variants"]
    results = {
        "checkpoint": dst.name,
        "test_manifest": str(args.test),
        "machine": f"{platform.processor() or platform.machine()}, CPU only",
        "selected_on": sidecar.get("selected_on"),
        "epoch": sidecar.get("epoch"),
        "val_metrics": sidecar.get("metrics"),
        "logit_adjustment": sidecar.get("logit_adjustment"),
        "teacher": sidecar.get("teacher"),
        "test": {name: {mode: {k: s[k] for k in ("n", "war", "uar", "macro_f1") if k in s}
                        for mode, s in modes.items()} for name, modes in v.items()},
        "curve": [{k: e[k] for k in ("epoch", "val_acc", "val_uar", "train_loss", "train_s") if k in e}
                  for e in log],
        "command": args.command,
    }
    (WEIGHTS / f"{args.name}.results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["test"], indent=2))
    print(f"size: {dst.stat().st_size / 1e6:.2f} MB; eval report: {args.run / 'test_eval' / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
