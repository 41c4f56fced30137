"""`train models`: list the model registry with each model's input and default config."""

from __future__ import annotations

from typing import Annotated

import typer


def command(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every config field.")] = False,
) -> None:
    """List every registered model: name, input kind, text fusion, size, parameters, config."""
    import torch
    import dataclasses

    from rich.console import Console
    from rich.table import Column, Table

    from train.models.registry import build_model, config_to_dict, list_models, model_config

    table = Table("input", "text", "classes", "input size", "params")
    table.columns.insert(0, Column("model", no_wrap=True))
    if verbose:
        table.add_column("config", overflow="fold")
    for name in list_models():
        cfg = model_config(name)
        # on the meta device nothing is allocated or initialised: listing resnet101 and cmaen
        # costs milliseconds instead of seconds
        # ... and no pretrained file is read into it (a no-op on meta tensors that warns per tensor)
        shape_only = dataclasses.replace(cfg, pretrained=None) if hasattr(cfg, "pretrained") else cfg
        with torch.device("meta"):
            model = build_model(shape_only)
        params = sum(p.numel() for p in model.parameters())
        d = {k: v for k, v in config_to_dict(cfg).items() if k not in ("num_classes", "in_chans", "input_size")}
        text = ", ".join(f"{k}={v}" for k, v in d.items())
        table.add_row(name, model.input_kind, "yes" if model.needs_text else "no", str(cfg.num_classes),
                      f"{cfg.in_chans}x{cfg.input_size}", f"{params / 1e6:.2f}M",
                      *([text] if verbose else []))
    Console().print(table)
