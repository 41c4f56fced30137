"""The model registry: build any FER model by name from a frozen config (see registry.py)."""

from train.models.base import FERModel, ModelConfig, logits_of
from train.models.registry import (
    UnknownModel, build_model, config_from_dict, config_to_dict, list_models, model_config,
    model_name_of, register_model,
)

__all__ = [
    "FERModel", "ModelConfig", "UnknownModel", "build_model", "config_from_dict", "config_to_dict",
    "list_models", "logits_of", "model_config", "model_name_of", "register_model",
]
