"""DDIM inversion: the deterministic DDIM sampler run backwards, x_0 -> x_T.

DDIM with eta = 0 (Song et al. 2020, eq. 12) is the Euler discretisation of an ODE, so it
can be run the other way (Song et al. sec. 4.3; Dhariwal & Nichol 2021, app. F): from a
sample x at timestep t, the model's predictions

    x0_hat = predict_x0(model(x, t)),   eps_hat = (x - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)

take it *up* to the next timestep t' > t:

    x_t' = sqrt(ab_t') x0_hat + sqrt(1 - ab_t') eps_hat.

Walking the sampler's timesteps in ascending order from the clean input (read as the
sample at the smallest timestep) gives the x_T from which deterministic DDIM lands
(nearly) on the input again -- unCLIP's variations start from it (Ramesh et al. 2022,
sec. 3.1), so what the CLIP embedding does not capture (the exact layout) is kept while
DDIM with eta > 0 varies the rest. The error of the round trip is that of the ODE
discretisation: small for a smooth model and enough steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tinygen.diffusion.sampling import inference_timesteps
from tinygen.diffusion.schedule import NoiseSchedule, check_prediction_type

ModelFn = Callable[[Tensor, Tensor], Tensor]


def ddim_inverse_step(
    schedule: NoiseSchedule,
    model_output: Tensor,
    t: int,
    t_next: int,
    x_t: Tensor,
    *,
    prediction_type: str = "epsilon",
) -> Tensor:
    """One step up the deterministic DDIM chain: x_t (model_output = model(x_t, t)) -> x_t'."""
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    x0 = schedule.predict_x0(model_output, x_t, t_batch, prediction_type)
    eps = schedule.predict_epsilon(model_output, x_t, t_batch, prediction_type)
    ab_next = schedule.gather("alphas_cumprod", torch.full_like(t_batch, t_next), x_t)
    return ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    x_0: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction_type: str = "epsilon",
    num_inference_steps: int = 50,
    spacing: str = "leading",
    callback: Callable[[int, int, Tensor], None] | None = None,
) -> Tensor:
    """x_T of the deterministic DDIM chain of `num_inference_steps` (the sampler's own
    timesteps, `inference_timesteps`) that leads to x_0 (B, ...): N - 1 inverse steps from
    the smallest timestep up to the largest, each with one call of `model_fn(x_t, t_batch)`
    (wrap a conditional model with `guidance.classifier_free_guidance`)."""
    check_prediction_type(prediction_type)
    ascending = (
        inference_timesteps(num_inference_steps, schedule.num_train_timesteps, spacing)
        .flip(0)
        .tolist()
    )
    x = x_0.float()
    for index, (t, t_next) in enumerate(zip(ascending[:-1], ascending[1:], strict=True)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x = ddim_inverse_step(
            schedule, model_fn(x, t_batch).float(), t, t_next, x, prediction_type=prediction_type
        )
        if callback is not None:
            callback(index, t_next, x)
    return x
