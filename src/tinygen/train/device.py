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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full fp32 on CPU (CPU bf16 is slower and less exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
