"""What a row-to-row stage is, and the helpers the stages share.

A *stage* (faces, enhance, caption, embed) is a small picklable object that maps a batch of
manifest rows to output rows (`Stage`); pipeline/runner.py runs it batched, resumable and
sharded. The helpers here are what the stage modules need inside `process()`: the batch's pixels
(`decode_batch`), new pixels back into the batch with their size and hash (`replace_images`),
whole columns by name (`set_columns`) and halving a batch on CUDA out-of-memory (`oom_retry`).

Everything heavy (torch) is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import pyarrow as pa


class StageError(RuntimeError):
    """A stage cannot run as asked (bad option, missing checkpoint, wrong input); the message says why."""


@runtime_checkable
class Stage(Protocol):
    """Optional hooks a stage may define (looked up with getattr, so the Protocol stays small):
    `device` (attribute: set by the runner from RunConfig.device before setup()),
    `summarize(out_table) -> dict` (stored under "summary" in the producer metadata and returned in
    the report: e.g. the caption stage's emotion-word counts), and
    `write_output(table, path, producer)` (a stage that writes a feature file in its own format)."""

    name: str
    groups: tuple[str, ...]

    def settings(self) -> dict: ...

    def setup(self) -> None: ...

    def process(self, batch: pa.Table) -> tuple[pa.Table, list[dict]]: ...


# --------------------------------------------------------------------------- image helpers


def decode_batch(batch: pa.Table):
    """The batch's images as uint8 arrays (HxW grey or HxWx3 RGB), in row order."""
    from features.images import decode

    return [decode(b)[0] for b in batch.column("image").to_pylist()]


def replace_images(batch: pa.Table, arrays: Sequence, fmt: str = "png") -> pa.Table:
    """Put new pixels into the batch: image bytes, format, size, channels and pixel_hash."""
    from features.images import channels, encode, pixel_hash

    if len(arrays) != batch.num_rows:
        raise StageError(f"replace_images: {len(arrays)} images for {batch.num_rows} rows")
    cols = {
        "image": pa.array([encode(a, fmt) for a in arrays], pa.binary()),
        "image_format": pa.array([fmt] * len(arrays), pa.string()),
        "width": pa.array([a.shape[1] for a in arrays], pa.int32()),
        "height": pa.array([a.shape[0] for a in arrays], pa.int32()),
        "channels": pa.array([channels(a) for a in arrays], pa.int8()),
        "pixel_hash": pa.array([pixel_hash(a) for a in arrays], pa.string()),
    }
    return set_columns(batch, cols)


def set_columns(table: pa.Table, cols: dict[str, pa.Array]) -> pa.Table:
    """Replace (or append) whole columns by name."""
    for name, arr in cols.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


# --------------------------------------------------------------------------- out of memory


def oom_retry(fn: Callable[[Any], Any], items: Any, min_size: int = 1) -> Any:
    """fn(items); on CUDA out-of-memory, run the two halves instead (recursively) and join.

    `items` is a list or a tensor (split along dim 0); the results are joined the same way
    (lists concatenated, tensors with torch.cat). Below `min_size` the error is re-raised.
    """
    import torch

    try:
        return fn(items)
    except torch.cuda.OutOfMemoryError:
        n = len(items)
        if n <= min_size or n < 2:
            raise
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        half = n // 2
        a = oom_retry(fn, items[:half], min_size)
        b = oom_retry(fn, items[half:], min_size)
        return _join(a, b)


def _join(a: Any, b: Any) -> Any:
    """Concatenate two halves' results: tensors and arrays along dim 0, lists, tuples per item."""
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, np.ndarray):  # `+` would add elementwise
        return np.concatenate([a, b])
    if isinstance(a, tuple):
        return tuple(_join(x, y) for x, y in zip(a, b))
    return list(a) + list(b)
