"""One device resolver for every command: ``auto | cpu | cuda | cuda:N``.

Every `--device` flag of both apps goes through `resolve_device`, so a machine without the
asked-for GPU gets the same one-line error everywhere instead of a CUDA traceback from deep
inside torch.
"""

from __future__ import annotations

import re

CHOICES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


class DeviceError(ValueError):
    """A --device value this machine cannot honour; the message says what to pass instead."""


def resolve_device(spec: str | None = "auto", flag: str = "--device") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cpu' -> 'cpu'; 'cuda[:N]' -> itself
    when that GPU exists. Anything else (e.g. 'gpu'), or CUDA on a machine without it (or
    without GPU N), raises DeviceError naming the flag and the devices this machine has.
    Imports torch only when CUDA is asked for (or 'auto')."""
    s = (spec or "auto").strip().lower()
    if s == "cpu":
        return "cpu"
    m = _CUDA.match(s)
    if s != "auto" and m is None:
        raise DeviceError(f"{flag} {spec}: expected {CHOICES}")
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if s == "auto":
        return "cuda" if n else "cpu"
    if n == 0:
        raise DeviceError(f"{flag} {spec}: torch sees no CUDA GPU on this machine; pass {flag} cpu "
                          "(or auto)")
    idx = int(m.group(1) or 0)
    if idx >= n:
        raise DeviceError(f"{flag} {spec}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")
    return s
