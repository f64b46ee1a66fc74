"""AdamW with weight decay on matrices only, fused where the build supports it."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from tinygen.train.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """Decay weight matrices and embeddings (dim >= 2); never biases or norm gains,
    as nanoGPT and GPT-3 do. Only parameters that require grad are optimised."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": config.learning_rate, "betas": (config.beta1, config.beta2)}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in (
        "cpu",
        "cuda",
    ):
        kwargs["fused"] = True
    try:
        return torch.optim.AdamW(groups, **kwargs)
    except (RuntimeError, ValueError):  # a build without the fused kernel for this device
        kwargs.pop("fused", None)
        return torch.optim.AdamW(groups, **kwargs)
