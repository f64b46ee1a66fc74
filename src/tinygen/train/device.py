"""Choosing the device and the autocast dtype."""

from __future__ import annotations

import contextlib

import torch

from tinygen.errors import TinygenError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; asking for CUDA without it is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TinygenError("--device cuda was asked for but no CUDA GPU is available; use cpu")
    if name.startswith("cuda"):
        # TF32 for the fp32 matmuls that autocast leaves in fp32 (as nanoGPT does)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


PRECISIONS = ("auto", "fp32", "bf16")


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The mixed-precision context of a forward pass.

    auto: bf16 autocast on CUDA, full fp32 on CPU (on most CPUs bf16 is slower, and it is
    always less exact). bf16: autocast on either device -- worth it on CPUs with AMX tiles
    (Intel Sapphire Rapids and later), where bf16 convolutions and matmuls run on the matrix
    unit. fp32: no autocast anywhere.
    """
    if precision not in PRECISIONS:
        raise TinygenError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
