"""Models by name: a registry of (name -> config dataclass, builder), torchvision/timm style.

Every model is built from a frozen config dataclass; the config is what a checkpoint sidecar
stores (``config_to_dict``), so a checkpoint rebuilds its own model (nanoGPT's GPTConfig idea).

The trainer's contract, for every registered model (see ``FERModel``):

* ``model(x, text=None, text_mask=None)`` -> logits ``(B, num_classes)``.
* ``model(x, ..., with_aux=True)`` -> ``{"logits": ..., **extras}``; pass that dict to
  ``model.loss(outputs, target)``. It returns a Tensor for models with their own loss (cmaen)
  and ``None`` for the rest (then use your criterion on ``outputs["logits"]``). Going through
  ``forward`` (not a side method) keeps DistributedDataParallel's gradient hooks working.
* ``input_kind``: "image" (B,C,H,W), "clip" (B,T,C,H,W) or "feature" (B,D).
* ``needs_text``: the model wants text features (B,D) or tokens (B,L,D) + mask (B,L).
* ``channels_last_ok``: whether the trainer may convert model and inputs to channels_last.
* ``param_groups(epoch, base_lr)`` -> optimizer groups, or None for "all params, base_lr";
  build the optimizer once from it. Calling it (or ``set_epoch(epoch)``) at the start of every
  epoch applies freezing schedules (clip-adapter's unfreeze); a no-op for the other models.
* ``cam_layer()`` -> the module Grad-CAM should hook, or None.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from typing import Any

from train.models.base import FERModel, ModelConfig

__all__ = [
    "FERModel", "ModelConfig", "register_model", "list_models", "model_config", "build_model",
    "config_to_dict", "config_from_dict", "model_name_of", "UnknownModel",
]

# Families register themselves on import; the registry imports them on first use so that
# importing this module stays cheap and order-independent.
_FAMILY_MODULES = (
    "train.models.cnn",
    "train.models.resnet",
    "train.models.miniaffectgpt",
    "train.models.cmaen",
    "train.models.clip_adapter",
    "train.models.video",
    "train.models.efficientnet_lite",
)

_REGISTRY: dict[str, tuple[type, Callable[[Any], FERModel]]] = {}
_NAME_OF_CONFIG: dict[type, str] = {}
_loaded = False


class UnknownModel(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register_model(name: str, config_cls: type) -> Callable:
    """Decorator for a builder ``fn(cfg) -> FERModel`` (a class works too).

    Raises on a duplicate name or a config class already bound to another name: the config's
    type is how ``build_model(cfg)`` finds its builder, so it must be unique per name.
    """
    if not (dataclasses.is_dataclass(config_cls) and config_cls.__dataclass_params__.frozen):
        raise TypeError(f"model {name!r}: config {config_cls.__name__} must be a frozen dataclass")

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        if config_cls in _NAME_OF_CONFIG:
            raise ValueError(f"config {config_cls.__name__} already belongs to model "
                             f"{_NAME_OF_CONFIG[config_cls]!r}; give {name!r} its own subclass")
        _REGISTRY[name] = (config_cls, fn)
        _NAME_OF_CONFIG[config_cls] = name
        return fn

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for mod in _FAMILY_MODULES:   # a failed import raises here and is retried next call
            importlib.import_module(mod)
        _loaded = True


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def _entry(name: str):
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") \
            from None


def model_config(name: str, **overrides) -> ModelConfig:
    """The default config of ``name`` with ``overrides`` applied; ``None`` values are dropped
    so that unset CLI flags keep the model's defaults (timm's create_model does the same)."""
    cfg_cls, _ = _entry(name)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise TypeError(f"model {name!r} has no option(s) {unknown}; its options are: "
                        f"{', '.join(sorted(fields))}")
    return cfg_cls(**_coerce(cfg_cls, kwargs))


def model_name_of(cfg: ModelConfig) -> str:
    _ensure_loaded()
    try:
        return _NAME_OF_CONFIG[type(cfg)]
    except KeyError:
        raise UnknownModel(f"{type(cfg).__name__} is not the config of a registered model") from None


def build_model(name_or_cfg: str | ModelConfig, **overrides) -> FERModel:
    """Build from a name (+ overrides) or from a config (e.g. read back from a checkpoint)."""
    if isinstance(name_or_cfg, str):
        cfg = model_config(name_or_cfg, **overrides)
    else:
        cfg = name_or_cfg
        kwargs = {k: v for k, v in overrides.items() if v is not None}
        if kwargs:
            cfg = dataclasses.replace(cfg, **_coerce(type(cfg), kwargs))
    name = model_name_of(cfg)
    model = _REGISTRY[name][1](cfg)
    model.config = cfg
    model.model_name = name
    return model


def config_to_dict(cfg: ModelConfig) -> dict:
    """JSON-safe dict (tuples become lists); ``config_from_dict`` turns them back."""
    return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_from_dict(name: str, d: dict) -> ModelConfig:
    """Rebuild a config from a sidecar; keys the current config no longer has are an error
    (silently dropping them would rebuild a different model than the one that was saved)."""
    cfg_cls, _ = _entry(name)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"saved config of {name!r} has option(s) {unknown} that this version "
                         f"does not know; its options are: {', '.join(sorted(fields))}")
    # None is kept here (unlike model_config): a saved None is a value, not "unset".
    return cfg_cls(**_coerce(cfg_cls, dict(d)))


def _jsonable(v):
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


def _coerce(cfg_cls: type, kwargs: dict) -> dict:
    """JSON and CLI give lists where a config wants tuples (kept hashable and frozen)."""
    hints = typing.get_type_hints(cfg_cls)
    out = {}
    for k, v in kwargs.items():
        hint = hints.get(k)
        origin = typing.get_origin(hint)
        if isinstance(v, list) and (origin is tuple or hint is tuple):
            v = tuple(v)
        # a value of the wrong kind fails here, named, not deep inside the model's constructor
        if (origin is tuple or hint is tuple) and not isinstance(v, tuple):
            raise ValueError(f"{k}={v!r}: a list is wanted, e.g. {k}=[16,48,96,192] (JSON)")
        if hint in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                     or (hint is int and isinstance(v, float) and not v.is_integer())):
            raise ValueError(f"{k}={v!r}: {'a whole number' if hint is int else 'a number'} is wanted")
        out[k] = int(v) if hint is int else v
    return out
