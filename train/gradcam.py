"""Grad-CAM (Selvaraju et al. 2017) over a model's `cam_layer()`, and heat-map overlays.

Hand-written with two hooks rather than the `grad-cam` package: that package requires the full
`opencv-python` wheel, which conflicts with the headless OpenCV this project pins, and the
method itself is a dozen lines (weights = spatially averaged gradients of the class score).
"""

from __future__ import annotations

import numpy as np


class NoCamLayer(ValueError):
    pass


def grad_cam(model, x, target: int | None = None, layer=None) -> tuple[np.ndarray, int]:
    """Heat map for one input `x` (1, C, H, W) -> (array H x W in [0, 1], the class explained).

    A 1-frame clip (1, 1, C, H, W) works for per-frame clip models (dfew-2d), whose cam_layer
    sees the frame as a 2-D image.

    `target` None explains the predicted class. The map is upsampled to the input size so it
    lines up with the preprocessed face.
    """
    import torch
    import torch.nn.functional as F

    layer = layer if layer is not None else (model.cam_layer() if hasattr(model, "cam_layer") else None)
    if layer is None:
        raise NoCamLayer(f"{type(model).__name__} has no convolutional stage for Grad-CAM (cam_layer() is None)")
    if x.shape[0] != 1 or x.dim() not in (4, 5) or (x.dim() == 5 and x.shape[1] != 1):
        raise ValueError(f"grad_cam takes one image (1, C, H, W) or one 1-frame clip (1, 1, C, H, W), "
                         f"got {tuple(x.shape)}")
    store: dict = {}

    def fwd_hook(_m, _inp, out):
        out = out[0] if isinstance(out, (tuple, list)) else out
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(fwd_hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            xin = x.detach().clone().requires_grad_(True)  # so the graph exists even for frozen weights
            logits = model(xin)
            logits = logits["logits"] if isinstance(logits, dict) else logits
            cls = int(logits[0].argmax()) if target is None else int(target)
            model.zero_grad(set_to_none=True)
            logits[0, cls].backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)  # leave no gradients behind in a model used for inference
        model.train(was_training)
    act, grad = store.get("act"), store.get("grad")
    if act is None or grad is None or act.dim() != 4:
        got = "no activation" if act is None else f"a {act.dim()}-D activation"
        raise NoCamLayer(f"cam_layer of {type(model).__name__} gives {got}; Grad-CAM here explains "
                         "2-D convolutional stages (B, C, H, W)")
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach().float().cpu().numpy()
    lo, hi = float(cam.min()), float(cam.max())
    cam = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    return cam.astype(np.float32), cls


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heat map (any size) over a uint8 image (grey or RGB) -> RGB uint8."""
    import cv2

    from features.images import to_rgb

    rgb = to_rgb(np.asarray(image, dtype=np.uint8))
    h, w = rgb.shape[:2]
    heat = cv2.resize(np.asarray(cam, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return np.clip((1 - alpha) * rgb + alpha * heat, 0, 255).astype(np.uint8)
