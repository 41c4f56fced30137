"""What each fusion ingredient is worth on FER2013: one model, one budget, one ingredient changed.

    python benchmarks/bench_ablation.py [--epochs 4] [--runs runs/ablation] [--json runs/bench/ablation.json]

Arms (every arm runs the user's own commands: `pipeline balance`, `pipeline enhance`,
`train run`, `train eval`):

  baseline          vgg w0.5 (the shipped model's recipe, shorter), plain cross-entropy
  class-weights     the same, loss weighted by sklearn's 'balanced' class weights
  borderline-smote  the same, on `pipeline balance --method borderline` output (train split
                    only); capped at the baseline's optimizer steps per epoch (--max-steps),
                    so it sees as many images as the baseline, not 1.8x as many
  sr-none           vgg w0.25 at 96 px input on the raw 48 px faces (the loader's bilinear x2)
  sr-bicubic-x4     the same model on `pipeline enhance --sr bicubic --scale 4` output
                    (192 px, the loader resizes to 96); val and test enhanced the same way

The SR pair uses a narrower net at 96 px so that an epoch costs about what the 48 px w0.5
model costs (a 4x larger input, a 4x smaller net); the two SR arms compare with each other,
not with the baseline. The checkpoint of each arm is chosen on validation UAR (validation comes
from the training split) and the test split is scored once, at the end of each arm.

Resumable: a finished arm (its eval/report.json exists) is skipped, a stopped one is continued
with `train run --resume`, and derived manifests are kept. Needs the FER2013 manifests
(`make manifests-fer`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMON = ["--model", "vgg", "--batch-size", "64", "--lr", "2e-3", "--optimizer", "adamw",
          "--scheduler", "cosine", "--warmup", "1", "--weight-decay", "5e-4", "--label-smoothing", "0.1",
          "--augment", "light", "--select-metric", "uar"]
W05 = ["--model-opt", "width=0.5", "--model-opt", "fc_dim=512"]
W025_96 = ["--model-opt", "width=0.25", "--model-opt", "fc_dim=512", "--model-opt", "input_size=96"]


def arms(m: Path, d: Path) -> dict[str, dict]:
    raw = {s: m / f"fer_{s}.parquet" for s in ("train", "val", "test")}
    x4 = {s: d / f"fer_{s}_x4.parquet" for s in ("train", "val", "test")}
    smote = {**raw, "train": d / "fer_train_bsmote.parquet"}
    return {
        "baseline": {"data": raw, "opts": W05, "what": "none (cross-entropy, label smoothing 0.1)"},
        "class-weights": {"data": raw, "opts": W05 + ["--class-weights", "balanced"],
                          "what": "balanced class weights in the loss"},
        "borderline-smote": {"data": smote, "opts": W05, "what": "BorderlineSMOTE-1 to the largest class",
                             "same_steps_as": "baseline"},
        "sr-none": {"data": raw, "opts": W025_96, "what": "raw 48 px, loader resize to 96"},
        "sr-bicubic-x4": {"data": x4, "opts": W025_96, "what": "bicubic x4 (192 px), loader resize to 96"},
    }


def sh(cmd: list, log: Path) -> float:
    """Run a command, its output appended to `log`; wall seconds. Fails loudly with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = "".join(open(log).readlines()[-15:])
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return time.perf_counter() - t0


def prepare(m: Path, d: Path, log: Path) -> dict:
    """The derived manifests; the seconds each took when it was made."""
    d.mkdir(parents=True, exist_ok=True)
    record = d / "prepare_seconds.json"  # kept beside the manifests, so a resumed run still reports it
    cost: dict[str, float | None] = json.loads(record.read_text()) if record.exists() else {}
    out = d / "fer_train_bsmote.parquet"
    if not out.exists():
        cost["balance"] = sh([BIN / "pipeline", "balance", "--in", m / "fer_train.parquet", "--out", out,
                              "--method", "borderline", "--seed", "0"], log)
    for s in ("train", "val", "test"):
        out = d / f"fer_{s}_x4.parquet"
        if not out.exists():
            cost[f"bicubic_x4_{s}"] = sh(
                [BIN / "pipeline", "enhance", "--in", m / f"fer_{s}.parquet", "--out", out, "--sr", "bicubic",
                 "--scale", "4", "--color", "none", "--batch-size", "256", "--clean"], log)
    record.write_text(json.dumps(cost, indent=2) + "\n")
    return cost


def steps_per_epoch(rows: int, batch: int = 64) -> int:
    n = -(-rows // batch)
    return n - 1 if rows % batch == 1 and n > 1 else n


def rows_of(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def run_arm(name: str, arm: dict, all_arms: dict, runs: Path, epochs: int, threads: int, log: Path) -> dict:
    out = runs / name
    report = out / "eval" / "report.json"
    result = {"arm": name, "what": arm["what"], "run": str(out),
              "train_rows": rows_of(arm["data"]["train"]), "epochs": epochs}
    cmd = [BIN / "train", "run", "--manifest", arm["data"]["train"], "--val", arm["data"]["val"], *COMMON,
           *arm["opts"], "--epochs", str(epochs), "--threads", str(threads), "--out", out]
    if "same_steps_as" in arm:
        ref = all_arms[arm["same_steps_as"]]["data"]["train"]
        result["max_steps_per_epoch"] = steps_per_epoch(rows_of(ref))
        cmd += ["--max-steps", str(result["max_steps_per_epoch"])]
    if not report.exists():
        if (out / "resume.pt").exists():
            cmd.append("--resume")
        sh(cmd, log)
        sh([BIN / "train", "eval", "--checkpoint", out, "--manifest", arm["data"]["test"], "--no-plots",
            "--tta", "flip", "--out", out / "eval"], log)
    rep = json.loads(report.read_text())
    v = rep["variants"]
    result["test"] = {k: {m: {s: v[k][m][s] for s in ("war", "uar", "macro_f1")} for m in v[k]}
                      for k in ("all", "leak_free", "private_test") if k in v}
    result["val"] = rep["checkpoint_meta"]["metrics"]
    result["best_epoch"] = rep["checkpoint_meta"]["epoch"]
    epochs_log = [json.loads(line) for line in open(out / "log.jsonl") if line.strip()]
    result["train_seconds"] = round(sum(e.get("train_s", 0.0) for e in epochs_log), 1)
    ips = [e["train_img_s"] for e in epochs_log if e.get("train_img_s")]
    result["train_img_per_s_median"] = sorted(ips)[len(ips) // 2] if ips else None
    return result


def _cells(r: dict) -> list[str]:
    """Shared by the terminal and Markdown tables: arm, ingredient, rows, val UAR, then the test
    scores (a manifest without leaks reports its leak-free column as all rows)."""
    a, fl = r["test"]["all"]["plain"], r["test"]["all"].get("flip")
    lf = r["test"].get("leak_free", r["test"]["all"])["plain"]
    pct = [100 * r["val"]["val_uar"], 100 * a["war"], 100 * lf["war"], 100 * a["uar"], 100 * a["macro_f1"]]
    return [r["arm"], r["what"], f"{r['train_rows']:,}", *(f"{v:.2f} %" for v in pct),
            f"{100 * fl['war']:.2f} %" if fl else "—"]


def print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="FER2013 ablation (test, plain / flip TTA; chosen on val UAR)")
    for c in ("arm", "ingredient", "train rows", "val UAR", "test acc", "leak-free", "UAR", "macro-F1",
              "acc (flip)", "img/s"):
        t.add_column(c, justify="left" if c in ("arm", "ingredient") else "right")
    for r in results:
        ips = r["train_img_per_s_median"]
        t.add_row(*_cells(r), f"{ips:.0f}" if ips else "—")
    Console(width=200).print(t)


def markdown(results: list[dict], epochs: int) -> str:
    """The table as Markdown, for the README and docs (written beside the JSON)."""
    lines = [f"| arm | ingredient | train rows | val UAR | test acc | leak-free acc | UAR | macro-F1 | "
             f"acc, flip TTA | train s ({epochs} epochs) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append("| " + " | ".join([*_cells(r), f"{r['train_seconds']:.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> Path:
    """Grouped bars: test accuracy, leak-free accuracy and UAR of each arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("test acc", lambda r: r["test"]["all"]["plain"]["war"]),
            ("leak-free acc", lambda r: r["test"].get("leak_free", r["test"]["all"])["plain"]["war"]),
            ("UAR", lambda r: r["test"]["all"]["plain"]["uar"])]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    w = 0.8 / len(keys)
    for k, (label, get) in enumerate(keys):
        xs = [i + (k - 1) * w for i in range(len(results))]
        vals = [100 * get(r) for r in results]
        bars = ax.bar(xs, vals, w, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(results)), [r["arm"] for r in results], fontsize=8)
    lo = min(100 * get(r) for r in results for _, get in keys)
    ax.set_ylim(max(0, lo - 10), None)
    ax.set_ylabel("% on FER2013 test")
    ax.set_title("FER2013 ablation: one ingredient changed per arm", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifests", type=Path, default=Path("manifests"))
    ap.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", nargs="*", help="arms to run (default: all)")
    ap.add_argument("--json", type=Path, default=Path("runs/bench/ablation.json"))
    args = ap.parse_args(argv)
    if not (args.manifests / "fer_train.parquet").exists():
        print(f"{args.manifests}/fer_train.parquet missing: run `make manifests-fer` first", file=sys.stderr)
        return 2
    args.runs.mkdir(parents=True, exist_ok=True)
    log = args.runs / "commands.log"
    cost = prepare(args.manifests, args.runs / "manifests", log)
    table = arms(args.manifests, args.runs / "manifests")
    results = []
    for name, arm in table.items():
        if args.only and name not in args.only:
            continue
        print(f"arm {name} ...", file=sys.stderr, flush=True)
        results.append(run_arm(name, arm, table, args.runs, args.epochs, args.threads, log))
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"epochs": args.epochs, "threads": args.threads,
                                     "prepare_seconds": cost, "arms": results,
                                     "load_average": os.getloadavg()}, indent=2) + "\n")
    args.json.with_suffix(".md").write_text(markdown(results, args.epochs))
    if results:
        plot(results, args.json.with_suffix(".png"))
    print(f"wrote {args.json} and {args.json.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
