"""The one diffusion training objective, for images, latents and vectors alike.

Ho et al. 2020, Alg. 1: draw t uniformly and eps ~ N(0, I), noise x_0 into
x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps (eq. 4), and regress the network output on the
target of the chosen parameterisation -- eps (`epsilon`), x_0 (`sample`) or
v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0 (`v_prediction`, Salimans & Ho 2022, sec. 4).

The squared error is averaged over every non-batch dimension, so the same function trains
a pixel U-Net on (B, C, H, W), a latent U-Net on (B, c, h, w) and unCLIP's prior on CLIP
embeddings (B, D). Optional min-SNR-gamma weighting (Hang et al. 2023) caps the weight of
the low-noise steps, where the eps loss over-weights easy denoising:
    epsilon: w = min(SNR, g) / SNR;   sample: w = min(SNR, g);   v: w = min(SNR, g) / (SNR + 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tinygen.diffusion.schedule import NoiseSchedule, check_prediction_type
from tinygen.errors import TinygenError


def min_snr_weights(snr: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023, eq. 12 and its x_0/v forms).

    The weight turns each parameterisation's MSE into the x_0-space MSE weighted by
    min(SNR, gamma): the eps loss is SNR times the x_0 loss, the v loss (SNR + 1) times it.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def draw_timesteps_and_noise(
    shape: tuple[int, ...], num_train_timesteps: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """t ~ U{0, ..., T - 1} (B,) and eps ~ N(0, I) of `shape`, drawn in that order from
    `generator` -- the random part of a training batch for any model of noisy inputs (the
    diffusion model, the noisy classifier), so that resume redraws the same batch."""
    t = torch.randint(num_train_timesteps, (shape[0],), generator=generator)
    return t, torch.randn(shape, generator=generator)


def diffusion_loss(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    noise: Tensor,
    t: Tensor,
    *,
    prediction_type: str,
    min_snr_gamma: float = 0.0,
) -> Tensor:
    """The (weighted) MSE of Ho et al. Alg. 1 for given x_0, eps (both (B, ...)) and t (B,).

    model_fn: `model_fn(x_t, t) -> output` shaped like x_0 (bind the condition in a closure).
    Returns the mean over the batch of each sample's mean squared error (times its min-SNR
    weight when min_snr_gamma > 0); computed in float32 whatever the autocast dtype.
    """
    check_prediction_type(prediction_type)
    if min_snr_gamma < 0:
        raise TinygenError(f"min_snr_gamma must be >= 0 (0 disables), got {min_snr_gamma}")
    if t.shape != (x0.shape[0],):
        raise TinygenError(f"need one timestep per sample ({x0.shape[0]},), got {tuple(t.shape)}")
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(x0, noise, t, prediction_type)
    output = model_fn(x_t, t)
    if output.shape != target.shape:
        raise TinygenError(
            f"the model output {tuple(output.shape)} must have the shape of its target "
            f"{tuple(target.shape)}"
        )
    per_sample = (output.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma > 0:
        per_sample = per_sample * min_snr_weights(schedule.snr(t), min_snr_gamma, prediction_type)
    return per_sample.mean()
