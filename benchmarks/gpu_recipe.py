"""The full-length recipes for a CUDA machine, in one command, through the user's own CLIs.

    python benchmarks/gpu_recipe.py --out runs/gpu_recipe            # on a CUDA machine
    python benchmarks/gpu_recipe.py --out /tmp/r --device cpu --smoke  # the same steps, tiny, on CPU

Steps (each a `train run`, then `train eval` on the test rows once at the end):

1. ``vgg73``: the from-scratch VGG of Khaireddin & Chen 2021 (73.28 % FER2013 test, their
   paper's recipe: SGD with Nesterov momentum 0.9, lr 0.01, weight decay 1e-4, batch 64, strong
   augmentation; they ran 300 epochs with a plateau schedule, here a cosine schedule over
   `--vgg-epochs` so the run fits the lent time);
2. ``lite0``: the pretrained EfficientNet-Lite0 at `--lite-size` px (one-cycle AdamW 1e-3,
   label smoothing 0.1), the best pretrained recipe measured on the CPU;
3. ``student``: the default's architecture (VGG 16-48-96-192, 48 px grey) distilled from
   ``lite0`` (alpha 0.5, T 4), then logit-adjusted on validation (`train calibrate`).

GPU settings: bf16 autocast, channels_last where the model allows it, batch augmentation on the
device (the trainer moves each uint8 batch to the GPU before augmenting), the decoded dataset in
memory. Everything lands in `--out`: one folder per step (checkpoints, log.csv, curves), each
step's test report, `summary.json` with wall times, the machine and the commands, and
`summary.md`. A step whose checkpoint exists is skipped, so a stopped run continues
(interrupted steps resume from their last epoch).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

BIN = Path(sys.executable).parent


def _cmd(name: str) -> str:
    exe = BIN / name
    return str(exe) if exe.exists() else name


def steps(a) -> list[tuple[str, list[str]]]:
    """(step name, train run arguments) in order; the student reads lite0's folder."""
    out = Path(a.out)
    common = ["--manifest", a.train, "--val", a.val, "--device", a.device, "--threads", str(a.threads)]
    if a.device != "cpu":
        common += ["--amp", "--amp-dtype", "bf16", "--channels-last", "auto"]
    if a.smoke:
        common += ["--max-steps", "2"]
    ep = (lambda n: "1") if a.smoke else str
    small = ["--model-opt", "stages=[16,48,96,192]", "--model-opt", "fc_dim=512"]
    return [
        ("vgg73", common + ["--model", "vgg", "--epochs", ep(a.vgg_epochs), "--batch-size", "64",
                            "--optimizer", "sgd", "--lr", "0.01",  # momentum 0.9 (default), Nesterov
                            "--weight-decay", "1e-4", "--scheduler", "cosine", "--warmup", "1" if not a.smoke else "0",
                            "--augment", "strong", "--select-metric", "acc",
                            *( ["--model-opt", "stages=[8,16,16,32]", "--model-opt", "fc_dim=32"] if a.smoke else []),
                            "--out", str(out / "vgg73")]),
        ("lite0", common + ["--model", "efficientnet-lite0", "--model-opt", f"input_size={a.lite_size}",
                            "--epochs", ep(a.lite_epochs), "--batch-size", "128", "--optimizer", "adamw",
                            "--lr", "1e-3", "--weight-decay", "0.01", "--scheduler", "onecycle",
                            "--label-smoothing", "0.1", "--augment", "light", "--select-metric", "acc",
                            *(["--model-opt", "pretrained=null"] if a.no_pretrained else []),
                            "--out", str(out / "lite0")]),
        ("student", common + ["--model", "vgg", *small, "--epochs", ep(a.student_epochs),
                              "--batch-size", "64", "--lr", "2e-3", "--weight-decay", "5e-4",
                              "--label-smoothing", "0.1", "--augment", "light", "--select-metric", "uar",
                              "--teacher", str(out / "lite0"), "--distill-alpha", "0.5",
                              "--distill-temperature", "4", "--out", str(out / "student")]),
    ]


def run(cmd: list[str], log) -> float:
    log.write("$ " + shlex.join(cmd) + "\n")
    log.flush()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"gpu_recipe: `{shlex.join(cmd[1:2] + cmd[-2:])}` failed (exit {r.returncode}); "
                         f"see {log.name}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu_recipe")
    ap.add_argument("--train", default="manifests/fer_train.parquet")
    ap.add_argument("--val", default="manifests/fer_val.parquet")
    ap.add_argument("--test", default="manifests/fer_test.parquet")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--vgg-epochs", type=int, default=60)
    ap.add_argument("--lite-epochs", type=int, default=15)
    ap.add_argument("--lite-size", type=int, default=112)
    ap.add_argument("--student-epochs", type=int, default=40)
    ap.add_argument("--smoke", action="store_true", help="1 epoch of 2 steps per step (tests, CPU)")
    ap.add_argument("--no-pretrained", action="store_true", help="lite0 from a random start (tests)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"date": date.today().isoformat(), "machine": _machine(a.device), "steps": {}}
    t_all = time.perf_counter()
    with open(out / "gpu_recipe.log", "a") as log:
        for name, args in steps(a):
            run_dir = out / name
            cmd = [_cmd("train"), "run", *args]
            done = run_dir / "recipe_step_done"  # written only after the step exited 0
            if done.exists():
                secs = None  # finished earlier
            else:
                if (run_dir / "resume.pt").exists():
                    cmd.append("--resume")  # a stopped step continues from its last epoch
                secs = run(cmd, log)
                done.write_text(shlex.join(cmd) + "\n")
            summary["steps"][name] = {"command": shlex.join(cmd), "train_s": secs}
        calib = out / "student_la"
        cal_cmd = [_cmd("train"), "calibrate", "-c", str(out / "student"), "--out", str(calib)]
        if not (calib / "best.safetensors").exists():
            run(cal_cmd, log)
        summary["steps"]["student_la"] = {"command": shlex.join(cal_cmd)}
        for name in ("vgg73", "lite0", "student_la"):
            rep = out / f"eval_{name}"
            ev = [_cmd("train"), "eval", "-c", str(out / name), "--manifest", a.test, "--tta", "flip",
                  "--out", str(rep)]
            secs = run(ev, log) if not (rep / "report.json").exists() else None
            summary["steps"][name]["eval_command"] = shlex.join(ev)
            summary["steps"][name]["test"] = _test_numbers(rep / "report.json")
    summary["total_s"] = round(time.perf_counter() - t_all, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    print(f"gpu_recipe: {len(summary['steps'])} steps in {summary['total_s']} s; {out}/summary.md")
    return summary


def _test_numbers(path: Path) -> dict:
    if not path.exists():
        return {}
    rep = json.loads(path.read_text())
    keep = {}
    for subset, by_tta in (rep.get("variants") or {}).items():  # all / leak_free / private_test ...
        for tta, m in (by_tta or {}).items():  # plain / flip
            if isinstance(m, dict) and "war" in m:
                keep[f"{subset} {tta}"] = {k: m.get(k) for k in ("war", "uar", "macro_f1")}
    return keep


def _machine(device: str) -> str:
    s = f"{platform.machine()} {platform.processor() or ''}".strip()
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            s = torch.cuda.get_device_name(0) + ", " + s
    except ImportError:
        pass
    return s


def _markdown(summary: dict) -> str:
    lines = [f"# GPU recipe ({summary['date']}, {summary['machine']})", "",
             "| step | train s | test variant | WAR | UAR | macro-F1 |", "|---|---|---|---|---|---|"]
    for name, d in summary["steps"].items():
        for variant, m in (d.get("test") or {"-": {}}).items():
            cells = [f"{100 * m[k]:.2f} %" if isinstance(m.get(k), float) else "-"
                     for k in ("war", "uar", "macro_f1")]
            t = d.get("train_s")
            lines.append(f"| {name} | {t:.0f} |" if t else f"| {name} | - |")
            lines[-1] += f" {variant} | " + " | ".join(cells) + " |"
    lines += ["", f"Total {summary['total_s']} s.", "", "Commands:", ""]
    lines += [f"    {d['command']}" for d in summary["steps"].values()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
