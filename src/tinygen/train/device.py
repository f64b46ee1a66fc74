"""Choosing the device and the autocast dtype."""

from __future__ import annotations

import contextlib
import sys

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
# Issue 17, `python benchmarks/diffusion_train_speed.py --batch 48 --repeats 3 --bf16` on an
# AVX2 host: fp32 49.0 images/s, bf16 autocast 2.5 -- bf16 is emulated there, 20x slower.
EMULATED_BF16_SPEED = "about 20x slower than fp32 (0.05x measured for the diffusion U-Net)"


def cpu_has_native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 in hardware, and what it has, in words.

    Native: AMX tiles (Intel Sapphire Rapids and later) or AVX-512 BF16 (Intel Cooper Lake,
    AMD Zen 4 and later), from torch's own CPU probe (`torch.cpu.get_capabilities()`, the
    cpuinfo flags). Not `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: that is true on
    every AVX-512 CPU, where oneDNN emulates bf16. Elsewhere (AVX2, most laptops) the reason
    is the kernel level torch dispatches to (`torch.backends.cpu.get_cpu_capability()`).
    Arm's BF16 is not counted: no measurement here shows it faster than fp32 yet.
    """
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older torch without the probe
        caps = {}
    if caps.get("amx_bf16"):
        return True, "AMX"
    if caps.get("avx512_bf16"):
        return True, "AVX-512 BF16"
    return False, torch.backends.cpu.get_cpu_capability()


def resolve_precision(
    device: torch.device, precision: str = "auto"
) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for `precision` on `device` (None: plain fp32), and why.

    auto: bf16 on CUDA and on CPUs with native bf16 (1.2-1.4x faster there for the
    diffusion U-Net), fp32 on every other CPU, where bf16 is emulated. bf16: autocast on
    any device, even where it is emulated (the reason then says how slow). fp32: none.
    """
    if precision not in PRECISIONS:
        raise TinygenError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None, "fp32 (asked for)"
    if device.type == "cuda":
        return torch.bfloat16, "bf16 autocast on CUDA"
    if device.type != "cpu":  # mps, xpu: autocast only when asked for, as before
        if precision == "bf16":
            return torch.bfloat16, "bf16 autocast (asked for)"
        return None, f"fp32 (bf16 autocast on {device.type} only with --precision bf16)"
    native, what = cpu_has_native_bf16()
    if precision == "auto":
        if native:
            return torch.bfloat16, f"bf16 autocast (this CPU runs bf16 natively: {what})"
        return None, f"fp32 (this CPU has no native bf16: {what})"
    if native:
        return torch.bfloat16, f"bf16 autocast (asked for; this CPU runs it natively: {what})"
    return torch.bfloat16, (
        f"bf16 autocast (asked for), but this CPU has no native bf16 ({what}): expect "
        f"{EMULATED_BF16_SPEED}; --precision auto picks fp32 here"
    )


def precision_notice(device: torch.device, precision: str = "auto") -> tuple[str, bool]:
    """The one line a training run prints about its precision, and whether it is a
    warning (bf16 asked for on a CPU that only emulates it)."""
    dtype, reason = resolve_precision(device, precision)
    slow = dtype is not None and device.type == "cpu" and not cpu_has_native_bf16()[0]
    prefix = "warning: " if slow else ""
    return f"{prefix}precision {precision}: {reason}", slow


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The mixed-precision context of a forward pass: `resolve_precision`'s choice."""
    dtype, _ = resolve_precision(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def announce_precision_and_threads(
    device: torch.device, precision: str, *, verbose: bool = True
) -> None:
    """What a training run says as it starts (rank 0, on stderr): one line for the
    precision and one for the CPU threads; with verbose=False only a slow-bf16 warning."""
    from tinygen.threads import describe_threads

    line, slow = precision_notice(device, precision)
    if verbose or slow:
        print(line, file=sys.stderr)
    if verbose:
        print(describe_threads(), file=sys.stderr)
