"""Tiny random-weight models in the official formats, for offline tests.

Each builder writes a `save_pretrained` folder (config + weights + tokenizer / processor), the
same shape a real hub snapshot has, so tests load it through the user's path (`--model PATH`,
`--weights PATH`). Random weights: outputs are meaningless but deterministic per seed.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("a", "the", "person", "man", "woman", "face", "with", "and", "of", "is", "open", "closed",
         "mouth", "eyes", "eyebrows", "raised", "smiling", "happy", "sad", "angry", "neutral", "looking",
         "at", "camera", "black", "white", "photo", "close", "up", "yes", "no", "what", "state", "describe",
         "expression", "facial", "?", ".", ",")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(SPECIALS + WORDS) + "\n")
    return path


def bert_tokenizer(folder: Path, **kw):
    from transformers import BertTokenizer

    # transformers 5 ignores vocab_file= as a keyword (it builds an empty vocab): pass it positionally.
    return BertTokenizer(str(write_vocab(folder)), **kw)


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _blip_config(tok, image_size: int = 32):
    from transformers import BlipConfig, BlipTextConfig, BlipVisionConfig

    vocab = len(tok)
    text = BlipTextConfig(vocab_size=vocab, hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                          bos_token_id=tok.convert_tokens_to_ids("[DEC]"), pad_token_id=tok.pad_token_id,
                          sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=8)
    cfg = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    # A wider init than BERT's 0.02, so random captions differ from image to image.
    cfg.initializer_range = cfg.text_config.initializer_range = cfg.vision_config.initializer_range = 0.2
    return cfg


def _blip_processor(folder: Path, image_size: int):
    from transformers import BlipImageProcessor, BlipProcessor

    tok = bert_tokenizer(folder.parent / f"{folder.name}_vocab", bos_token="[DEC]")
    img = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipProcessor(img, tok), tok


def _tiny_blip(head: str, folder: Path, seed: int, image_size: int) -> Path:
    """A random-weight BLIP (`head` = a transformers Blip* class name) saved like a hub snapshot."""
    import transformers

    _seed(seed)
    proc, tok = _blip_processor(folder, image_size)
    getattr(transformers, head)(_blip_config(tok, image_size)).eval().save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def tiny_blip_captioner(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    return _tiny_blip("BlipForConditionalGeneration", folder, seed, image_size)


def tiny_blip_vqa(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    return _tiny_blip("BlipForQuestionAnswering", folder, seed, image_size)


def tiny_distilbert(folder: Path, seed: int = 0) -> Path:
    from transformers import DistilBertConfig, DistilBertModel

    _seed(seed)
    tok = bert_tokenizer(folder.parent / f"{folder.name}_vocab")
    cfg = DistilBertConfig(vocab_size=len(tok), dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                           max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    DistilBertModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_clip_vision(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    _seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def random_resnet18(path: Path, seed: int = 0) -> Path:
    """A torchvision ResNet-18 state dict with random weights, saved as torchvision's file is."""
    import torch
    import torchvision

    _seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def face_rows(n: int, seed: int = 0, shapes=((48, 48), (40, 40, 3)), captions=None) -> list[dict]:
    """n manifest rows of random grey / RGB images, labels cycling through FER2013's classes."""
    import numpy as np

    from features.images import channels, encode, pixel_hash
    from features.labels import get_label_set
    from features.manifest import sample_id

    rng = np.random.default_rng(seed)
    ls = get_label_set("fer2013")
    rows = []
    for k in range(n):
        arr = rng.integers(0, 256, shapes[k % len(shapes)], dtype=np.uint8)
        label = ls.names[k % len(ls)]
        src = f"face{k:04d}.png"
        row = dict(sample_id=sample_id("tiny", src), dataset="tiny", split="train", orig_split="Training",
                   source_path=src, label=label, label_id=ls.index(label), label_set=ls.name,
                   image=encode(arr), image_format="png", width=arr.shape[1], height=arr.shape[0],
                   channels=channels(arr), pixel_hash=pixel_hash(arr))
        if captions is not None:
            row["caption"] = captions[k % len(captions)]
        rows.append(row)
    return rows


def write_face_manifest(path: Path, n: int = 8, seed: int = 0, captions=None, rows=None) -> Path:
    from features.labels import get_label_set
    from features.manifest import to_table, write_manifest

    rows = rows if rows is not None else face_rows(n, seed, captions=captions)
    groups = ("caption",) if any("caption" in r for r in rows) else ()
    write_manifest(to_table(rows, groups=groups), path, get_label_set("fer2013"), {"test": True})
    return path
