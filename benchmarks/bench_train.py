"""Training throughput per registered model, and the data loader's throughput on its own.

    python benchmarks/bench_train.py [--device cpu|cuda] [--models vgg,resnet18] [--steps 3]

Model rows time forward + backward + optimiser step on random tensors already on the device
(no data loading), so they measure the model; the loader rows time manifest decoding and the
in-memory loader with augmentation and normalisation (no model), so the two can be compared:
the loader must be much faster than any model or it is the bottleneck. bf16 autocast on/off
is timed for vgg and resnet18. Results: a Markdown table on stdout and JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# batch size per model on a CPU: big enough to be representative, small enough to finish
CPU_BATCH = {"vgg": 64, "resnet18": 64, "miniaffectgpt": 64, "clip-adapter": 256, "raf-compound": 16,
             "resnet50": 8, "resnet101": 8, "cmaen": 8, "dfew-2d": 2, "r3d18": 2}
AMP_MODELS = ("vgg", "resnet18")


def inputs_for(model, batch: int, device: str):
    import torch

    cfg = model.config
    if model.input_kind == "feature":
        x = torch.randn(batch, cfg.feature_dim)
    elif model.input_kind == "clip":
        x = torch.randn(batch, cfg.frames, cfg.in_chans, cfg.input_size, cfg.input_size)
    else:
        x = torch.randn(batch, cfg.in_chans, cfg.input_size, cfg.input_size)
    text = mask = None
    if model.needs_text:
        text = torch.randn(batch, 16, cfg.text_dim, device=device)  # 16 caption tokens
        mask = torch.ones(batch, 16, dtype=torch.bool, device=device)
    return x.to(device), text, mask


def time_model(name: str, batch: int, steps: int, device: str, amp: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from train.loop import autocast
    from train.models.base import logits_of
    from train.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(name).to(device).train()
    x, text, mask = inputs_for(model, batch, device)
    y = torch.randint(0, model.config.num_classes, (batch,), device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with autocast(device, amp, "bf16"):
            out = model(x, text, mask, with_aux=True)
        loss = model.loss(out, y)
        loss = F.cross_entropy(logits_of(out).float(), y) if loss is None else loss.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, autotuning, lazy init
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    items = batch * steps
    frames = getattr(model.config, "frames", 1) if model.input_kind == "clip" else 1
    return {"what": name, "amp": "bf16" if amp else "fp32", "batch": batch, "steps": steps,
            "seconds": round(dt, 3), "items_per_s": round(items / dt, 1),
            "images_per_s": round(items * frames / dt, 1),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


def time_loader(n: int, batch: int, device: str, workers: int) -> list[dict]:
    """Decode a synthetic 48x48 grey manifest into memory, then one epoch of batches."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from train_fixtures import write_synth

    from train.data import BatchLoader, InputSpec, load_split
    from train.loop import BatchPrep
    from train.transforms import Preprocess, build_augment

    with tempfile.TemporaryDirectory() as tmp:
        path = write_synth(Path(tmp) / "bench_train.parquet", n, "train")
        pre = Preprocess.default_for(48, 1)
        t0 = time.perf_counter()
        data = load_split(path, "train", InputSpec("image", pre), workers=workers)
        decode_s = time.perf_counter() - t0
    rows = [{"what": f"loader: decode {n} PNG 48x48 into memory ({workers} threads)", "batch": "",
             "seconds": round(decode_s, 3), "images_per_s": round(n / decode_s, 1)}]
    for aug in ("none", "light", "strong"):
        prep = BatchPrep(device, pre, build_augment(aug, (48, 48)))
        ld = BatchLoader(data, batch, True, seed=0)
        t0 = time.perf_counter()
        for b in ld:
            prep(b, train=True)
        dt = time.perf_counter() - t0
        rows.append({"what": f"loader: in-memory batches, augment={aug}", "batch": batch,
                     "seconds": round(dt, 3), "images_per_s": round(n / dt, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    from train.models.registry import list_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default=",".join(list_models()))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-scale", type=float, default=1.0, help="multiply the per-model batch sizes")
    ap.add_argument("--loader-n", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = time_loader(a.loader_n, 64, a.device, a.workers)
    for name in a.models.split(","):
        batch = max(1, int(CPU_BATCH.get(name, 8) * a.batch_scale))
        for amp in ((False, True) if name in AMP_MODELS else (False,)):
            try:
                rows.append(time_model(name, batch, a.steps, a.device, amp))
            except Exception as e:  # noqa: BLE001 - one model failing must not hide the others' figures
                rows.append({"what": name, "amp": "bf16" if amp else "fp32", "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"
    dev = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else cpu
    print(f"device: {dev}; torch {torch.__version__}; steps per model: {a.steps} after 1 warm-up\n")
    print("| what | precision | batch | images/s | clips/items per s | params (M) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['what']} | {r['amp']} | | failed: {r['error'][:80]} | | |")
        else:
            print(f"| {r['what']} | {r.get('amp', '')} | {r['batch']} | {r['images_per_s']} | "
                  f"{r.get('items_per_s', '')} | {r.get('params_M', '')} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"device": dev, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
