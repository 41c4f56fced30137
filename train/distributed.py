"""torchrun support: process group from the environment, DDP wrapping, gathered evaluation.

`train run` is the same command with one process or under
`torchrun --nnodes N --nproc-per-node G ...`: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK
and this module turns them into a process group (NCCL on GPUs, gloo on CPUs). Without
those variables everything here is a no-op, so the single-process path has no extra cost.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from features.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def rank_device(pref: str, local_rank: int = 0) -> str:
    """features.device.resolve_device (its one-line DeviceError included), then one GPU per
    torchrun process: 'auto' or 'cuda' on a GPU machine -> cuda:{LOCAL_RANK % GPUs}."""
    import torch

    device = resolve_device(pref)
    if device == "cuda":
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


def init_from_env(device_pref: str = "auto") -> DistInfo:
    """Join the process group torchrun describes, or return a single-process DistInfo."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank, world, local_rank, device)


def wrap(model, info: DistInfo):
    """DistributedDataParallel around `model` when running under torchrun."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [int(info.device.split(":")[1])] if info.device.startswith("cuda") else None
    # frozen backbones (clip-adapter) and cmaen's optional branches leave parameters unused
    return DDP(model, device_ids=ids, find_unused_parameters=True)


def join(model, info: DistInfo):
    """Ranks may hold one batch more than others (exact, unpadded shards): DDP's join() lets
    the ranks that ran out shadow the others' gradient all-reduces instead of hanging."""
    if not info.enabled:
        return contextlib.nullcontext()
    return model.join()


def any_true(flag: bool, info: DistInfo, device: str = "cpu") -> bool:
    """True on every rank when `flag` is true on any (so all ranks stop together)."""
    if not info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_eval(logits, targets, index, info: DistInfo):
    """Every rank's (logits, targets, row index) -> the full set on every rank, in row order.

    all_gather needs equal shapes, so each rank pads to the largest share and the padding is
    cut off after the gather; sorting by row index makes the result identical to one process.
    """
    if not info.enabled:
        order = index.argsort()
        return logits[order], targets[order], index[order]
    import torch
    import torch.distributed as dist

    dev = info.device if info.device.startswith("cuda") else "cpu"
    n = torch.tensor([logits.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(info.world)]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))

    def gather(t):
        t = t.to(dev)
        pad = torch.zeros((m - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=dev)
        buf = [torch.empty((m, *t.shape[1:]), dtype=t.dtype, device=dev) for _ in range(info.world)]
        dist.all_gather(buf, torch.cat([t, pad]))
        return torch.cat([b[: int(s.item())] for b, s in zip(buf, sizes)]).cpu()

    all_logits, all_targets, all_index = gather(logits.float()), gather(targets), gather(index)
    order = all_index.argsort()
    return all_logits[order], all_targets[order], all_index[order]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
