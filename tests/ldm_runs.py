"""Seconds-long runs for the latent-diffusion tests: a tiny KL autoencoder (f = 4), a tiny
CLIP, and tiny latent-diffusion runs on them (the `tiny` presets, fewer steps)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch


def autoencoder_run(root: Path, kind: str = "kl", factor: int = 4) -> Path:
    from tinygen.recipes import autoencoder as ae_recipes

    out = root / f"ae-{kind}{factor}"
    preset = ae_recipes.preset("tiny")
    train = dataclasses.replace(preset.train, max_iters=10, eval_interval=10)
    ae_recipes.train_autoencoder(
        preset.model(kind, factor), train, preset.data, preset.loss, out, progress=False
    )
    return out


def clip_run(root: Path) -> Path:
    from tinygen.recipes import clip as clip_recipes

    out = root / "clip"
    preset = clip_recipes.PRESETS["tiny"]
    train = dataclasses.replace(preset.train, max_iters=5, eval_interval=5)
    clip_recipes.train_clip(preset.model, train, out, train_size=512, val_size=64, progress=False)
    return out


def ldm_run(root: Path, autoencoder: Path, text_encoder: str = "joint", name: str = "ldm") -> Path:
    from tinygen.recipes import latent_diffusion as ldm_recipes

    out = root / name
    preset = ldm_recipes.preset("tiny")
    train = dataclasses.replace(preset.train, max_iters=6, eval_interval=6, seed=3)
    torch.set_num_threads(1)
    ldm_recipes.train_latent_diffusion(
        autoencoder, preset.model, train, preset.extras["data"], out, text_encoder=text_encoder,
        progress=False,
    )  # fmt: skip
    return out
