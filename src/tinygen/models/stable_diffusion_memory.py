"""How much memory Stable Diffusion v1.5 needs to sample, by precision: weights + peak activations.

Weights: our U-Net, autoencoder and CLIP text tower built from the published v1.5 configs on
the meta device (no memory, no download), parameters counted, times the bytes per number.

Activations are measured, not estimated: each stage of one sampling step runs on the meta
device (shapes and dtypes, no arithmetic) at the requested size, under a dispatch mode that
adds up the bytes of every tensor an operation creates and subtracts them when the tensor is
freed; the peak of that sum is the stage's peak activation memory. Views and in-place
results share storage and are not counted again. Stages: the text encoder (the prompt and the
empty prompt), the U-Net on the classifier-free-guidance batch of 2, the autoencoder's
decoder (and its encoder, for img2img), one at a time as the pipeline runs them; the peak of
a run is the weights plus the largest stage.

Attention is measured twice, because the kernel decides: `fused` -- a flash / memory-efficient
kernel (what SDPA runs on CUDA and for CPU fp32/bf16) holds its output and a log-sum-exp row
per query; `math` -- softmax(QK^T)V materialised, a (B, heads, HW, HW) matrix per attention
(what the meta device's decomposition of SDPA does, and what runs where no fused kernel
applies). What the allocator rounds up, cuDNN workspaces and the CUDA context (~0.3-0.5 GB)
come on top and are not counted.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tinygen.errors import TinygenError
from tinygen.models.autoencoder import AutoencoderKL
from tinygen.models.clip import TextTransformer
from tinygen.models.convert.clip import clip_text_config_from_hf
from tinygen.models.convert.stable_diffusion import (
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)
from tinygen.nn.unet import UNet

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# runwayml/stable-diffusion-v1-5: unet/config.json, vae/config.json, text_encoder/config.json
SD_V1_5_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
)  # fmt: skip
SD_V1_5_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4, norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)  # fmt: skip
SD_V1_5_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, eos_token_id=2,
)  # fmt: skip


class LiveTensorBytes(TorchDispatchMode):
    """Adds up the bytes of the tensors operations create while they are alive; `peak`."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and id(t) not in inputs and not t._is_view():
                size = t.untyped_storage().nbytes()
                self.live += size
                weakref.finalize(t, self._free, size)
        self.peak = max(self.peak, self.live)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, *args, **kwargs) -> Tensor:
    """A stand-in for a flash / memory-efficient kernel: its output and a float32 log-sum-exp
    per query, no (Tq, Tk) matrix."""
    torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)  # the log-sum-exp rows
    return torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)


@contextlib.contextmanager
def _attention(kind: str):
    original = F.scaled_dot_product_attention
    if kind == "fused":
        F.scaled_dot_product_attention = _fused_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _peak(run, attention: str) -> int:
    with torch.no_grad(), _attention(attention), LiveTensorBytes() as tracker:
        run()
    return tracker.peak


def build_models() -> tuple[UNet, AutoencoderKL, TextTransformer]:
    """Our three SD v1.5 models on the meta device."""
    with torch.device("meta"):
        unet = UNet(unet_config_from_diffusers(SD_V1_5_UNET))
        vae = AutoencoderKL(vae_config_from_diffusers(SD_V1_5_VAE))
        text = TextTransformer(**clip_text_config_from_hf(SD_V1_5_TEXT))
    return unet, vae, text


def stable_diffusion_memory(precision: str, height: int = 512, width: int = 512) -> dict:
    """Weights and measured peak activation memory (bytes) of SD v1.5 sampling at
    height x width in `precision` (fp32, bf16, fp16), with the arithmetic as text.

    Returns {"precision", "height", "width", "parameters": {component: count},
    "weights_bytes", "activations_bytes": {attention: {stage: peak}},
    "peak_bytes": {attention: weights + largest stage}, "arithmetic": [lines]}.
    """
    if precision not in BYTES:
        raise TinygenError(f"precision must be one of {', '.join(BYTES)}, got {precision!r}")
    if height % 64 or width % 64 or height < 64 or width < 64:
        raise TinygenError(f"{width}x{height}: SD v1.5 needs sides that are multiples of 64")
    dtype, size = DTYPES[precision], BYTES[precision]
    unet, vae, text = (m.to(dtype) for m in build_models())
    counts = {
        name: sum(p.numel() for p in model.parameters())
        for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text))
    }
    weights = sum(counts.values()) * size
    with torch.device("meta"):
        latents = torch.empty(2, 4, height // 8, width // 8, dtype=dtype)
        ids = torch.zeros(2, 77, dtype=torch.long)
        context = torch.empty(2, 77, 768, dtype=dtype)
        t = torch.zeros(2, dtype=torch.long)
        image = torch.empty(1, 3, height, width, dtype=dtype)
    stages = {
        "text_encoder": lambda: text(ids, return_tokens=True),
        "unet": lambda: unet(latents, t, context=context),
        "vae_decode": lambda: vae.decode(latents[:1]),
        "vae_encode": lambda: vae.encode(image).mean,
    }
    activations = {
        kind: {s: _peak(run, kind) for s, run in stages.items()} for kind in ("fused", "math")
    }
    peak = {kind: weights + max(stage.values()) for kind, stage in activations.items()}
    gib = 2**30
    lines = [
        f"weights: ({counts['unet']:,} U-Net + {counts['vae']:,} VAE + "
        f"{counts['text_encoder']:,} text) parameters x {size} bytes = {weights / gib:.2f} GiB",
    ]
    for kind, stage in activations.items():
        largest = max(stage, key=stage.get)
        detail = ", ".join(f"{s} {b / gib:.2f}" for s, b in stage.items())
        lines.append(
            f"{kind} attention: stage peaks (GiB) {detail}; peak = weights + {largest} = "
            f"{weights / gib:.2f} + {stage[largest] / gib:.2f} = {peak[kind] / gib:.2f} GiB"
        )
    return {
        "precision": precision,
        "height": height,
        "width": width,
        "parameters": counts,
        "weights_bytes": weights,
        "activations_bytes": activations,
        "peak_bytes": peak,
        "arithmetic": lines,
    }
