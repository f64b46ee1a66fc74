"""Guidance: trading diversity for fidelity at sampling time, as wrappers around a model function.

Classifier-free guidance (Ho & Salimans 2022, eq. 6): one model trained with the condition
dropped part of the time predicts both eps(x_t, c) and eps(x_t, null); sampling uses

    eps_hat = eps_uncond + s * (eps_cond - eps_uncond),

s = 0 unconditional, s = 1 conditional, s > 1 sharper. `classifier_free_guidance` builds a
`model_fn(x_t, t)` for `sampling.sample` that evaluates both branches in ONE batched forward;
the condition is a tensor (class labels) or a `Condition` dict (labels, tokens, context,
embedding: GLIDE, unCLIP and latent diffusion use the same wrapper).

Score-function guidance steers the samples with the gradient g = grad_x log_score(x_t, t) of
any differentiable score of the noisy sample: a noisy classifier's log p(y | x_t, t)
(Dhariwal & Nichol 2021) or a noised CLIP's image-text similarity f(x_t, t) . g(c) (GLIDE,
Nichol et al. 2021, sec. 2.4):
  - Alg. 1 (DDPM): shift the ancestral mean, mu + s * Sigma * g   -> `ddpm_mean_shift`,
    plugged into `sample(..., sampler="ddpm", mean_shift_fn=score_mean_shift(...))`;
  - Alg. 2 (DDIM): shift the noise, eps - sqrt(1 - ab_t) * s * g   -> `ddim_eps_shift`,
    plugged into `sample(..., guidance_fn=score_eps_shift(...))` (either sampler).
`classifier_*` and `clip_*` are these with the classifier's and CLIP's score.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tinygen.diffusion.schedule import NoiseSchedule, Timestep, check_prediction_type
from tinygen.errors import TinygenError

CondModel = Callable[[Tensor, Tensor, Any], Tensor]
Classifier = Callable[[Tensor, Tensor], Tensor]
LogScore = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t (B,)) -> per-sample score (B,)


def guided_output(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """uncond + scale * (cond - uncond) (Ho & Salimans 2022, eq. 6)."""
    return uncond + scale * (cond - uncond)


def _batch_of(cond: Tensor | dict) -> int:
    if isinstance(cond, Tensor):
        return cond.shape[0]
    sizes = {value.shape[0] for value in cond.values()}
    if len(sizes) != 1:
        raise TinygenError(f"the tensors of a condition disagree on the batch size: {sizes}")
    return sizes.pop()


def _shape_of(cond: Tensor | dict) -> Any:
    if isinstance(cond, Tensor):
        return tuple(cond.shape)
    return {key: tuple(value.shape) for key, value in sorted(cond.items())}


def _apply(cond: Tensor | dict, fn: Callable[[Tensor], Tensor]) -> Tensor | dict:
    """fn on the tensor, or on every tensor of a dict condition."""
    if isinstance(cond, Tensor):
        return fn(cond)
    return {key: fn(value) for key, value in cond.items()}


def classifier_free_guidance(
    model: CondModel, cond: Tensor | dict, null_cond: Tensor | dict, scale: float
) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap `model(x, t, cond)` into `model_fn(x_t, t)` that applies classifier-free guidance.

    Args:
        model: the conditional network, `model(x (B, ...), t (B,), cond)`.
        cond: the condition for each sample: a tensor (B, ...) (labels, embeddings, token
            ids) or a dict of such tensors (a `tinygen.models.conditioning.Condition`).
        null_cond: the learned "no condition" value, of the same kind and keys, each tensor
            with batch B or 1 (broadcast to B).
        scale: the guidance scale s >= 0.

    Both branches run in one forward pass on the batch [x_t; x_t] with [cond; null_cond]
    (concatenated key by key for a dict), then split. At s = 0 only the unconditional half
    runs and at s = 1 only the conditional half (same result, half the work).
    """
    if scale < 0:
        raise TinygenError(f"guidance scale must be >= 0, got {scale}")
    if isinstance(cond, Tensor) != isinstance(null_cond, Tensor):
        raise TinygenError("the condition and the null condition must both be tensors or dicts")
    if isinstance(cond, dict) and set(cond) != set(null_cond):
        raise TinygenError(
            f"the null condition has keys {sorted(null_cond)} but the condition "
            f"{sorted(cond)}; give both the same keys"
        )
    batch_size = _batch_of(cond)

    def broadcast(value: Tensor) -> Tensor:
        return value.expand(batch_size, *value.shape[1:]) if value.shape[0] == 1 else value

    null_cond = _apply(null_cond, broadcast)
    if _shape_of(null_cond) != _shape_of(cond):
        raise TinygenError(
            f"null condition {_shape_of(null_cond)} must match the condition "
            f"{_shape_of(cond)} (or have batch size 1)"
        )
    if isinstance(cond, Tensor):
        both_cond = torch.cat([cond, null_cond])
    else:
        both_cond = {key: torch.cat([cond[key], null_cond[key]]) for key in cond}

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        batch = x_t.shape[0]
        if batch_size != batch:
            raise TinygenError(
                f"condition has batch {batch_size} but the images have batch {batch}; "
                "give one condition per image"
            )

        def to_device(value: Tensor) -> Tensor:
            return value.to(x_t.device)

        if scale == 0:
            return model(x_t, t, _apply(null_cond, to_device))
        if scale == 1:
            return model(x_t, t, _apply(cond, to_device))
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), _apply(both_cond, to_device))
        out_cond, out_uncond = both[:batch], both[batch:]  # (B, ...) each
        return guided_output(out_uncond, out_cond, scale)

    return model_fn


def score_grad(log_score_fn: LogScore, x_t: Tensor, t: Tensor) -> Tensor:
    """grad_x log_score(x_t, t) for a per-sample score `log_score_fn(x, t) -> (B,)`.

    Each sample's score depends only on its own input, so the gradient of the sum is every
    sample's own gradient. Works inside `torch.no_grad()` (enables grad locally).
    """
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        score = log_score_fn(x, t)
        if score.shape != (x.shape[0],):
            raise TinygenError(
                f"a guidance score must be one number per sample ({x.shape[0]},), got "
                f"{tuple(score.shape)}"
            )
        (grad,) = torch.autograd.grad(score.float().sum(), x)
    return grad.detach()


def classifier_log_score(classifier_fn: Classifier, y: Tensor) -> LogScore:
    """log p(y | x_t, t) of a noisy classifier `classifier_fn(x_t, t) -> logits (B, K)`."""
    if y.dim() != 1:
        raise TinygenError(f"labels y must have shape (B,), got {tuple(y.shape)}")

    def log_score(x: Tensor, t: Tensor) -> Tensor:
        if y.shape[0] != x.shape[0]:
            raise TinygenError(f"labels y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        logits = classifier_fn(x, t)  # (B, K)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise TinygenError(f"classifier must return logits (B, K), got {tuple(logits.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise TinygenError(f"labels must be in [0, {logits.shape[1] - 1}], got {y.tolist()}")
        log_probs = F.log_softmax(logits.float(), dim=-1)
        return log_probs[torch.arange(x.shape[0], device=x.device), y.to(x.device)]

    return log_score


def clip_log_score(image_encoder: Callable[[Tensor, Tensor], Tensor], text_emb: Tensor) -> LogScore:
    """A noised CLIP's similarity f(x_t, t) . g(c) (GLIDE, Nichol et al. 2021, sec. 2.4):
    `image_encoder(x_t, t) -> (B, E)` image embeddings, `text_emb` (B, E) or (1, E) text
    embeddings; both are L2-normalised, so the score is the cosine similarity."""

    def log_score(x: Tensor, t: Tensor) -> Tensor:
        image = F.normalize(image_encoder(x, t).float(), dim=-1)  # (B, E)
        text = F.normalize(text_emb.to(image.device).float(), dim=-1)
        return (image * text).sum(-1)

    return log_score


def classifier_grad(classifier_fn: Classifier, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """grad_x log p(y | x_t, t) for a noisy classifier `classifier_fn(x_t, t) -> logits (B, K)`."""
    if y.dim() != 1 or y.shape[0] != x_t.shape[0]:
        raise TinygenError(f"labels y must have shape ({x_t.shape[0]},), got {tuple(y.shape)}")
    return score_grad(classifier_log_score(classifier_fn, y), x_t, t)


def ddpm_mean_shift(mean: Tensor, variance: Tensor, grad: Tensor, scale: float) -> Tensor:
    """Dhariwal & Nichol Alg. 1: mu + s * Sigma * grad log p(y | x_t)."""
    return mean + scale * variance * grad


def ddim_eps_shift(
    eps: Tensor, grad: Tensor, scale: float, schedule: NoiseSchedule, t: Timestep
) -> Tensor:
    """Dhariwal & Nichol Alg. 2: eps - sqrt(1 - ab_t) * s * grad log p(y | x_t)."""
    return eps - schedule.gather("sqrt_one_minus_alphas_cumprod", t, eps) * scale * grad


def score_mean_shift(
    log_score_fn: LogScore, scale: float
) -> Callable[[Tensor, Tensor, Tensor, Timestep], Tensor]:
    """A `mean_shift_fn(mean, variance, x_t, t)` for DDPM sampling guided by a score (Alg. 1)."""

    def mean_shift_fn(mean: Tensor, variance: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        t_batch = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        return ddpm_mean_shift(mean, variance, score_grad(log_score_fn, x_t, t_batch), scale)

    return mean_shift_fn


def score_eps_shift(
    log_score_fn: LogScore,
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
        grad = score_grad(log_score_fn, x_t, t)
        eps = schedule.predict_epsilon(model_output, x_t, t, prediction_type)
        eps = ddim_eps_shift(eps, grad, scale, schedule, t)
        if prediction_type == "epsilon":
            return eps
        x0 = schedule.predict_x0(eps, x_t, t, "epsilon")
        return schedule.target(x0, eps, t, prediction_type)

    return guidance_fn


def classifier_mean_shift(
    classifier_fn: Classifier, y: Tensor, scale: float
) -> Callable[[Tensor, Tensor, Tensor, Timestep], Tensor]:
    """A `mean_shift_fn(mean, variance, x_t, t)` for DDPM sampling with classifier guidance."""
    return score_mean_shift(classifier_log_score(classifier_fn, y), scale)


def classifier_eps_shift(
    classifier_fn: Classifier,
    y: Tensor,
    scale: float,
    schedule: NoiseSchedule,
    prediction_type: str = "epsilon",
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """A `guidance_fn(x_t, t, model_output)`: Alg. 2's eps shift with a noisy classifier."""
    return score_eps_shift(classifier_log_score(classifier_fn, y), scale, schedule, prediction_type)
