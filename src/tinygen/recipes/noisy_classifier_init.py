"""Warm-starting a noisy classifier from one trained on clean images.

The lesson of the noised CLIP (docs/benchmarks.md, section glide): trained from scratch on
x_t at uniform t, a small model learns colour first and shape only after thousands of steps,
because most of its batch is too noisy to show a shape; started from the same model trained
on clean images, it keeps what it knows and only has to learn what noise changes. The
noisy classifier of issue 6 had the first problem (26 % accuracy on clean images after
1,500 steps), so it gets the same cure in two stages:

1. `tinygen train noisy-classifier --clean`: the classifier on x_0 alone (t = 0), which is
   an ordinary image classifier (95 % of validation images right after 1,000 steps).
2. `tinygen train noisy-classifier --init-from CLEAN_RUN`: the same network, fine-tuned on
   x_t at uniform t. At its first step it *is* the clean classifier at every t: the last
   layer of the time MLP starts with zero weights and, as bias, the clean run's embedding
   of t = 0 (`freeze_time_embedding`), so every t maps to the embedding the clean run was
   trained with. Training then learns how t should change it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from tinygen.errors import TinygenError
from tinygen.models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig


@torch.no_grad()
def freeze_time_embedding(model: NoisyClassifier, t_value: int = 0) -> None:
    """Make the time embedding constant in t, equal to its current value at `t_value`:
    the time MLP's last Linear gets zero weights and that embedding as its bias."""
    encoder = model.encoder
    device = next(model.parameters()).device
    emb = encoder.embed(torch.full((1,), t_value, dtype=torch.long, device=device))[0]
    last = encoder.time_mlp[-1]
    if not isinstance(last, nn.Linear):  # pragma: no cover - the U-Net's layout
        raise TinygenError("the classifier's time MLP does not end in a Linear layer")
    last.weight.zero_()
    last.bias.copy_(emb.to(last.bias.dtype))


def warm_start(clean_run: str | Path, config: NoisyClassifierConfig):
    """load(model) for a fresh noisy-classifier run: the weights of the classifier in
    `clean_run` (same network and classes), then `freeze_time_embedding`. Raises one clear
    error for a run of another kind, one trained on noise, or another network."""
    from tinygen.models.runs import load_model

    source, run_config = load_model(clean_run, expect="noisy-classifier")
    if not run_config.get("clean"):
        raise TinygenError(
            f"--init-from {clean_run}: that classifier was trained on noisy images; start "
            "from one trained with --clean"
        )
    source_config = NoisyClassifierConfig(**run_config["model"])
    differ = [
        f"{f.name}: {getattr(source_config, f.name)!r} there, {getattr(config, f.name)!r} here"
        for f in dataclasses.fields(NoisyClassifierConfig)
        if getattr(source_config, f.name) != getattr(config, f.name)
    ]
    if differ:
        raise TinygenError(
            f"--init-from {clean_run}: its network differs from the one asked for ("
            + "; ".join(differ)
            + "); drop the model flags, or give the values of that run"
        )

    def load(model: NoisyClassifier) -> None:
        model.load_state_dict(source.state_dict())
        freeze_time_embedding(model)

    return load
