"""features.device: the one autocast policy (pipeline stages, --amp in train, the encoders) and
the rank devices torchrun gets from the one resolver."""

from __future__ import annotations

import pytest
import torch

from features.device import DeviceError, autocast, autocast_dtype

CUDA = torch.cuda.is_available()


def _matmul_dtype(ctx) -> torch.dtype:
    with ctx:
        return (torch.ones(4, 4) @ torch.ones(4, 4)).dtype


@pytest.mark.parametrize("dtype, want", [(None, None), ("none", None), ("fp32", None), ("float32", None),
                                         ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
                                         ("fp16", torch.float16), ("float16", torch.float16),
                                         ("auto", torch.bfloat16)])
def test_autocast_dtype_on_cpu(dtype, want):
    assert autocast_dtype("cpu", dtype) is want


def test_autocast_runs_in_the_asked_dtype_on_cpu():
    assert _matmul_dtype(autocast("cpu", "bf16")) == torch.bfloat16
    assert _matmul_dtype(autocast("cpu", "auto")) == torch.bfloat16
    assert _matmul_dtype(autocast("cpu", "fp32")) == torch.float32
    assert _matmul_dtype(autocast("cpu", None)) == torch.float32


def test_bad_autocast_dtype_is_one_clear_error():
    with pytest.raises(DeviceError, match=r"autocast dtype 'gpu': expected auto, bf16, fp16 or fp32"):
        autocast_dtype("cpu", "gpu")


def test_train_amp_is_bf16_on_cpu_even_when_fp16_is_asked():
    from train.loop import autocast as train_autocast

    assert _matmul_dtype(train_autocast("cpu", True, "fp16")) == torch.bfloat16
    assert _matmul_dtype(train_autocast("cpu", True, "bf16")) == torch.bfloat16
    assert _matmul_dtype(train_autocast("cpu", False, "bf16")) == torch.float32


def test_rank_device_goes_through_the_one_resolver():
    from train.distributed import rank_device

    assert rank_device("cpu", 3) == "cpu"
    assert rank_device("auto", 1) == ("cuda:1" if CUDA and torch.cuda.device_count() > 1 else
                                      "cuda:0" if CUDA else "cpu")
    with pytest.raises(DeviceError, match="--device gpu: expected auto, cpu, cuda or cuda:N"):
        rank_device("gpu")
    if not CUDA:
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            rank_device("cuda")
