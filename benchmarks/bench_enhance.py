"""Enhancement throughput: bicubic, and SwinIR at the official lightweight size, batched vs the naive loop.

The SwinIR has random weights (speed does not depend on weight values), built with the official
lightweight x4 hyper-parameters (002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4: embed_dim 60,
depths 6x4, heads 6x4, window 8, pixelshuffledirect), saved as {'params': state_dict} and loaded
through the same path `pipeline enhance --sr swinir:FILE` takes. The naive way is the seeds' way:
one image at a time, float32, no autocast. Inputs are 48x48 grey faces (FER2013 size).

    .venv/bin/python benchmarks/bench_enhance.py --n 16 --batch-size 8 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _faces(n: int, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):  # smooth blobs, not white noise: closer to a face's statistics
        img = 128 + 60 * np.sin(xx / rng.uniform(3, 8)) * np.cos(yy / rng.uniform(3, 8)) + rng.normal(0, 8, (size, size))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _rate(fn, images, batch: int, repeat: int = 1) -> float:
    fn(images[:batch])  # warm-up: allocator, kernels, lazy init
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            fn(images[i:i + batch])
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="images per measurement")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    from spandrel.architectures.SwinIR import SwinIR

    from pipeline.enhance import EnhanceStage

    torch.set_num_threads(args.threads)
    images = _faces(args.n)
    rows = []

    bic = EnhanceStage(sr="bicubic", device="cpu")
    rows.append(("bicubic x4, batched", _rate(bic.enhance_arrays, images, args.batch_size, 3)))
    rows.append(("bicubic x4, per image", _rate(bic.enhance_arrays, images, 1, 3)))

    torch.manual_seed(0)
    net = SwinIR(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6],
                 embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler="pixelshuffledirect",
                 resi_connection="1conv")
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth"
        torch.save({"params": net.state_dict()}, ckpt)
        params = sum(p.numel() for p in net.parameters())
        for precision in ("fp32", "bf16"):
            st = EnhanceStage(sr=f"swinir:{ckpt}", precision=precision, device="cpu")
            st.setup()
            rows.append((f"SwinIR-S x4 ({params / 1e6:.2f} M params), batch {args.batch_size}, {precision}",
                         _rate(st.enhance_arrays, images, args.batch_size)))
        naive = EnhanceStage(sr=f"swinir:{ckpt}", precision="fp32", device="cpu")
        naive.setup()
        rows.append(("SwinIR-S x4, naive: one image at a time, fp32", _rate(naive.enhance_arrays, images, 1)))

    result = {
        "machine": f"CPU, torch threads={args.threads}",
        "n_images": args.n, "input": "48x48 grey",
        "rows": [{"what": w, "images_per_s": round(r, 2)} for w, r in rows],
    }
    naive_rate = rows[-1][1]
    best = max(rows[2][1], rows[3][1])
    result["swinir_batched_over_naive"] = round(best / naive_rate, 2)
    result["bicubic_batched_over_per_image"] = round(rows[0][1] / rows[1][1], 2)
    width = max(len(w) for w, _ in rows)
    for w, r in rows:
        print(f"{w:<{width}}  {r:10.2f} img/s")
    print(f"SwinIR best batched / naive: {result['swinir_batched_over_naive']}x;"
          f" bicubic batched / per image: {result['bicubic_batched_over_per_image']}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
