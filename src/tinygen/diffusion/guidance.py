"""Guidance: trading diversity for fidelity at sampling time, as wrappers around a model function.

Classifier-free guidance (Ho & Salimans 2022, eq. 6): one model trained with the condition
dropped part of the time predicts both eps(x_t, c) and eps(x_t, null); sampling uses

    eps_hat = eps_uncond + s * (eps_cond - eps_uncond),

s = 0 unconditional, s = 1 conditional, s > 1 sharper. `classifier_free_guidance` builds a
`model_fn(x_t, t)` for `sampling.sample` that evaluates both branches in ONE batched forward.

Classifier guidance (Dhariwal & Nichol 2021) uses the gradient g = grad_x log p_phi(y | x_t, t)
of a classifier trained on noisy images:
  - Alg. 1 (DDPM): shift the ancestral mean, mu + s * Sigma * g   -> `ddpm_mean_shift`,
    plugged into `sample(..., sampler="ddpm", mean_shift_fn=classifier_mean_shift(...))`;
  - Alg. 2 (DDIM): shift the noise, eps - sqrt(1 - ab_t) * s * g   -> `ddim_eps_shift`,
    plugged into `sample(..., guidance_fn=classifier_eps_shift(...))` (either sampler).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tinygen.diffusion.schedule import NoiseSchedule, Timestep, check_prediction_type
from tinygen.errors import TinygenError

CondModel = Callable[[Tensor, Tensor, Tensor], Tensor]
Classifier = Callable[[Tensor, Tensor], Tensor]


def guided_output(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """uncond + scale * (cond - uncond) (Ho & Salimans 2022, eq. 6)."""
    return uncond + scale * (cond - uncond)


def classifier_free_guidance(
    model: CondModel, cond: Tensor, null_cond: Tensor, scale: float
) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap `model(x, t, cond)` into `model_fn(x_t, t)` that applies classifier-free guidance.

    Args:
        model: the conditional network, `model(x (B, C, H, W), t (B,), cond (B, ...))`.
        cond: the condition for each sample, (B, ...) (labels, embeddings, token ids).
        null_cond: the learned "no condition" value, (B, ...) or (1, ...) (broadcast to B).
        scale: the guidance scale s >= 0.

    Both branches run in one forward pass on the batch [x_t; x_t] with [cond; null_cond], then
    split. At s = 0 only the unconditional half runs and at s = 1 only the conditional half
    (same result, half the work).
    """
    if scale < 0:
        raise TinygenError(f"guidance scale must be >= 0, got {scale}")
    if null_cond.shape[0] == 1 and cond.shape[0] != 1:
        null_cond = null_cond.expand(cond.shape[0], *null_cond.shape[1:])
    if null_cond.shape != cond.shape:
        raise TinygenError(
            f"null condition {tuple(null_cond.shape)} must match the condition "
            f"{tuple(cond.shape)} (or have batch size 1)"
        )

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        batch = x_t.shape[0]
        if cond.shape[0] != batch:
            raise TinygenError(
                f"condition has batch {cond.shape[0]} but the images have batch {batch}; "
                "give one condition per image"
            )
        if scale == 0:
            return model(x_t, t, null_cond.to(x_t.device))
        if scale == 1:
            return model(x_t, t, cond.to(x_t.device))
        both = model(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null_cond]).to(x_t.device)
        )  # (2B, C, H, W)
        out_cond, out_uncond = both[:batch], both[batch:]
        return guided_output(out_uncond, out_cond, scale)

    return model_fn


def classifier_grad(classifier_fn: Classifier, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """grad_x log p(y | x_t, t) for a noisy classifier `classifier_fn(x_t, t) -> logits (B, K)`.

    Each sample's log-probability depends only on its own image, so the gradient of the sum
    is every sample's own gradient. Works inside `torch.no_grad()` (enables grad locally).
    """
    if y.dim() != 1 or y.shape[0] != x_t.shape[0]:
        raise TinygenError(f"labels y must have shape ({x_t.shape[0]},), got {tuple(y.shape)}")
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier_fn(x, t)  # (B, K)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise TinygenError(f"classifier must return logits (B, K), got {tuple(logits.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise TinygenError(f"labels must be in [0, {logits.shape[1] - 1}], got {y.tolist()}")
        log_probs = F.log_softmax(logits.float(), dim=-1)
        selected = log_probs[torch.arange(x.shape[0], device=x.device), y.to(x.device)]
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad.detach()


def ddpm_mean_shift(mean: Tensor, variance: Tensor, grad: Tensor, scale: float) -> Tensor:
    """Dhariwal & Nichol Alg. 1: mu + s * Sigma * grad log p(y | x_t)."""
    return mean + scale * variance * grad


def ddim_eps_shift(
    eps: Tensor, grad: Tensor, scale: float, schedule: NoiseSchedule, t: Timestep
) -> Tensor:
    """Dhariwal & Nichol Alg. 2: eps - sqrt(1 - ab_t) * s * grad log p(y | x_t)."""
    return eps - schedule.gather("sqrt_one_minus_alphas_cumprod", t, eps) * scale * grad


def classifier_mean_shift(
    classifier_fn: Classifier, y: Tensor, scale: float
) -> Callable[[Tensor, Tensor, Tensor, Timestep], Tensor]:
    """A `mean_shift_fn(mean, variance, x_t, t)` for DDPM sampling with classifier guidance."""

    def mean_shift_fn(mean: Tensor, variance: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        t_batch = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        return ddpm_mean_shift(
            mean, variance, classifier_grad(classifier_fn, x_t, t_batch, y), scale
        )

    return mean_shift_fn


def classifier_eps_shift(
    classifier_fn: Classifier,
    y: Tensor,
    scale: float,
    schedule: NoiseSchedule,
    prediction_type: str = "epsilon",
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """A `guidance_fn(x_t, t, model_output)` applying Alg. 2's eps shift for any parameterisation.

    The model output is converted to eps, shifted, and converted back (x_0 recomputed from the
    shifted eps), so samplers see the prediction type they expect.
    """
    check_prediction_type(prediction_type)

    def guidance_fn(x_t: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        grad = classifier_grad(classifier_fn, x_t, t, y)
        eps = schedule.predict_epsilon(model_output, x_t, t, prediction_type)
        eps = ddim_eps_shift(eps, grad, scale, schedule, t)
        if prediction_type == "epsilon":
            return eps
        x0 = schedule.predict_x0(eps, x_t, t, "epsilon")
        return schedule.target(x0, eps, t, prediction_type)

    return guidance_fn
