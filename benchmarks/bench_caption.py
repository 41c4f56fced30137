"""Captioning speed: the stage's batched bf16 path vs the per-image fp32 loop the seeds use.

BLIP at the *base* architecture size (BlipConfig defaults: ViT-B/16 at 384 px + BERT-base
decoder, as Salesforce/blip-image-captioning-base) with random weights: speed does not depend
on weight values, and no download is needed. Both paths decode greedily and generate exactly
`--tokens` new tokens (min_new_tokens = max_new_tokens), since random weights would otherwise
stop at random points.

    python benchmarks/bench_caption.py [--n 32] [--batch 16] [--tokens 20] [--data ../shared/data/fer2013]

Faces: the first N FER2013 test images (48x48 grey) when --data has test.parquet, else random
48x48 grey images; the BLIP processor upsamples both to 384x384. Variants run interleaved, one
chunk of `--batch` images at a time each, so a shared machine's drifting load hits them alike;
wall and process-CPU seconds are both reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def faces(n: int, data: Path | None) -> tuple[list[np.ndarray], str]:
    from PIL import Image

    if data is not None and (data / "test.parquet").exists():
        import pyarrow.parquet as pq

        blobs = pq.read_table(data / "test.parquet", columns=["image"]).column("image")[:n].to_pylist()
        return [np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in blobs], f"FER2013 test[:{n}]"
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(n)], "random 48x48 grey"


def build_base_blip():
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig()).eval()
    return model, BlipImageProcessor()  # 384x384, bicubic, as the base checkpoint's processor


def naive(model, proc, imgs, tokens: int) -> None:
    """One image at a time, fp32, no autocast: what the seed scripts do."""
    import torch

    for im in imgs:
        pix = proc(images=np.repeat(im[..., None], 3, axis=2), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            model.generate(pixel_values=pix, max_new_tokens=tokens, min_new_tokens=tokens, num_beams=1,
                           do_sample=False)


class _NoText:
    """Timing only: random weights make the text meaningless, so skip detokenizing."""

    def __init__(self, p):
        self.p = p

    def __call__(self, **kw):
        return self.p(**kw)

    def batch_decode(self, ids, **kw):
        return [""] * len(ids)


def batched(model, proc, imgs, tokens: int, batch: int, dtype: str) -> None:
    """The stage's own function (pipeline.caption.caption_images) over batches."""
    from features.blip import Blip
    from pipeline.caption import CaptionConfig, caption_images

    blip = Blip(model, _NoText(proc), None, "random-base")
    cfg = CaptionConfig(max_new_tokens=tokens, min_new_tokens=tokens, dtype=dtype)
    for i in range(0, len(imgs), batch):
        caption_images(blip, imgs[i:i + batch], cfg, "cpu")


def interleaved(runs: dict, imgs: list, chunk: int) -> dict[str, tuple[float, float]]:
    """Run every variant on the same chunk of images before the next chunk, rotating the order.

    On a shared machine the load drifts over minutes; interleaving gives each variant the same
    mix of busy and quiet periods, so their ratio is fair. Returns (wall s, process CPU s).
    """
    wall = dict.fromkeys(runs, 0.0)
    cpu = dict.fromkeys(runs, 0.0)
    names = list(runs)
    for c, start in enumerate(range(0, len(imgs), chunk)):
        part = imgs[start:start + chunk]
        for name in names[c % len(names):] + names[:c % len(names)]:
            t, p = time.perf_counter(), time.process_time()
            runs[name](part)
            wall[name] += time.perf_counter() - t
            cpu[name] += time.process_time() - p
    return {k: (wall[k], cpu[k]) for k in names}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013")
    ap.add_argument("--variants", default="naive,batched_fp32,batched_bf16",
                    help="comma list of naive, batched_fp32, batched_bf16, single_bf16")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)

    import torch

    imgs, source = faces(a.n, a.data)
    model, proc = build_base_blip()
    n_params = sum(p.numel() for p in model.parameters())
    # warm-up (first-call allocations, oneDNN kernel selection) kept out of every timing
    batched(model, proc, imgs[:2], 2, 2, "bf16")
    batched(model, proc, imgs[:1], 2, 1, "fp32")
    runs = {
        "naive": lambda part: naive(model, proc, part, a.tokens),
        "batched_fp32": lambda part: batched(model, proc, part, a.tokens, a.batch, "fp32"),
        "batched_bf16": lambda part: batched(model, proc, part, a.tokens, a.batch, "bf16"),
        "single_bf16": lambda part: batched(model, proc, part, a.tokens, 1, "bf16"),
    }
    runs = {k: runs[k] for k in a.variants.split(",")}
    res = {"images": a.n, "source": source, "tokens": a.tokens, "batch": a.batch, "params": n_params,
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__, "wall_s": {}, "cpu_s": {}, "images_per_s": {}}
    for name, (wall, cpu) in interleaved(runs, imgs, a.batch).items():
        res["wall_s"][name] = round(wall, 2)
        res["cpu_s"][name] = round(cpu, 2)
        res["images_per_s"][name] = round(a.n / wall, 3)
        print(f"{name:>14}: {wall:8.2f} s wall  {cpu:8.2f} s CPU  {a.n / wall:6.3f} img/s", flush=True)
    if "naive" in runs:
        for key in ("wall_s", "cpu_s"):
            res[f"speedup_{key}"] = {k: round(res[key]["naive"] / v, 2) for k, v in res[key].items()}
        print("speed-up vs naive (wall):", res["speedup_wall_s"])
        print("speed-up vs naive (CPU): ", res["speedup_cpu_s"])
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
