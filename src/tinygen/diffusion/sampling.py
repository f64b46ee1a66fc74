"""The reverse process: DDPM and DDIM steps as pure functions, timestep spacing, one sample loop.

`ddpm_step` is DDPM's ancestral step (Ho et al. 2020, Alg. 2 / eq. 7); `ddim_step` is DDIM's
generalised step (Song et al. 2020, eq. 12), whose eta interpolates between deterministic
sampling (eta = 0) and DDPM's posterior variance (eta = 1, eq. 16). Neither keeps state: the
current and previous timesteps are arguments, so any chain (strided, custom, resumed) works.
Both match diffusers' `DDPMScheduler.step` / `DDIMScheduler.step` bit for bit for the same
t and t_prev. Unlike diffusers' DDIM, `sample` steps to the *next timestep in the list*; see
docs/diffusion.md for why diffusers is wrong for `linspace` and some `trailing` spacings.

`SamplerConfig` holds the user-facing sampler settings once (validated in one place), and
`img2img_timesteps` + `sample(..., x_start=, strength=)` start the chain part-way down from
a noised input (SDEdit, Meng et al. 2021): image-to-image and inpainting use the same loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from tinygen.diffusion.schedule import NoiseSchedule, Timestep, check_prediction_type
from tinygen.errors import TinygenError
from tinygen.fields import check_fields

SPACINGS = ("leading", "trailing", "linspace")
SAMPLERS = ("ddpm", "ddim")
VARIANCE_TYPES = ("fixed_small", "fixed_large")

ModelFn = Callable[[Tensor, Tensor], Tensor]


def inference_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> Tensor:
    """The descending timesteps a sampler visits (Lin et al. 2023, "Common diffusion noise
    schedules and sample steps are flawed", Table 2): `leading` = k * (T // N) + offset,
    `trailing` = round(T - k * T / N) - 1, `linspace` = round(linspace(0, T - 1, N)).

    Same values as diffusers' `set_timesteps`, except that diffusers' `trailing` returns N + 1
    steps ending at -1 for some N (e.g. N = 61 of T = 1000); we return exactly N.
    `steps_offset` applies to `leading` only, as in diffusers.
    """
    if spacing not in SPACINGS:
        raise TinygenError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise TinygenError(
            f"num_inference_steps must be in [1, {num_train_timesteps}] (the training steps), "
            f"got {num_inference_steps}; use --steps {num_train_timesteps} or fewer"
        )
    n, total = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        steps = np.linspace(0, total - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        steps = (np.arange(0, n) * (total // n)).round()[::-1].copy().astype(np.int64)
        steps += steps_offset
    else:
        steps = np.round(np.arange(total, 0, -total / n)).astype(np.int64)[:n] - 1
    if steps.min() < 0 or steps.max() >= total:
        raise TinygenError(
            f"steps_offset={steps_offset} pushes timesteps outside [0, {total - 1}] for "
            f"{n} steps; lower steps_offset"
        )
    return torch.from_numpy(steps)


@dataclass(frozen=True)
class SamplerConfig:
    """How to run the reverse process: the settings `generate`, evaluation and the CLI share.

    sampler: `ddim` (any eta) or `ddpm` (ancestral). steps: network calls. eta: DDIM's noise
    (0 deterministic, 1 DDPM's variance; Song et al. eq. 16). spacing: which training
    timesteps the steps visit (`inference_timesteps`). clip_sample: clip each predicted x_0
    to [-1, 1] (diffusers' and DDPM's default; only for pixel models). thresholding: Imagen's
    dynamic thresholding instead (Saharia et al. 2022, sec. 2.3). recompute_eps (DDIM): the
    noise direction from the clipped x_0 (GLIDE's choice; diffusers'
    `use_clipped_model_output`), which keeps strong guidance from drifting to the
    complementary colour (docs/benchmarks.md measures it).
    """

    sampler: str = field(
        default="ddim", metadata={"help": "ddim (any eta) or ddpm", "choices": SAMPLERS}
    )
    steps: int = field(default=50, metadata={"help": "sampling steps (network calls)", "min": 1})
    eta: float = field(
        default=0.0,
        metadata={"help": "DDIM noise: 0 deterministic, 1 DDPM's variance", "min": 0, "max": 1},
    )
    spacing: str = field(
        default="leading",
        metadata={"help": "which training timesteps the steps visit", "choices": SPACINGS},
    )
    clip_sample: bool = True
    thresholding: bool = False
    recompute_eps: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise TinygenError(
                f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise TinygenError(f"--steps must be a positive integer, got {self.steps!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise TinygenError(
                f"eta must be in [0, 1] (0 = DDIM, 1 = DDPM variance), got {self.eta}"
            )
        if self.spacing not in SPACINGS:
            raise TinygenError(
                f"unknown timestep spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}"
            )
        check_fields(self)  # (the rules above, with their own words; anything else declared)

    def check_fits(self, num_train_timesteps: int) -> None:
        if self.steps > num_train_timesteps:
            raise TinygenError(
                f"--steps {self.steps} exceeds the {num_train_timesteps} training steps; "
                f"use at most {num_train_timesteps}"
            )

    def timesteps(self, num_train_timesteps: int) -> Tensor:
        self.check_fits(num_train_timesteps)
        return inference_timesteps(self.steps, num_train_timesteps, self.spacing)

    @property
    def name(self) -> str:
        """e.g. `DDIM-50, eta 0.5, trailing spacing` (defaults left out)."""
        text = f"{self.sampler.upper()}-{self.steps}"
        if self.thresholding:
            text += ", dynamic thresholding"
        if not self.recompute_eps:
            text += ", unclipped eps"
        if self.eta:
            text += f", eta {self.eta:g}"
        if self.spacing != "leading":
            text += f", {self.spacing} spacing"
        return text

    def sample_options(self) -> dict:
        """The keyword arguments of `sample` these settings stand for."""
        return {
            "sampler": self.sampler,
            "num_inference_steps": self.steps,
            "eta": self.eta,
            "spacing": self.spacing,
            "clip_sample": self.clip_sample,
            "thresholding": self.thresholding,
            "use_clipped_model_output": self.recompute_eps,  # (ignored by DDPM: it needs no eps)
        }


def img2img_timesteps(timesteps: Tensor | list[int], strength: float) -> tuple[Tensor, int]:
    """The tail of a descending timestep list that image-to-image runs (SDEdit).

    With n timesteps, the chain starts `init_timestep = min(int(n * strength), n)` steps
    before the end: `t_start = max(n - init_timestep, 0)`, and returns
    (timesteps[t_start:], t_start) -- exactly diffusers' `StableDiffusionImg2ImgPipeline.
    get_timesteps`. strength 1 runs every step (from pure noise in effect), strength 0 none
    (the input comes back unchanged).
    """
    if not 0.0 <= strength <= 1.0:
        raise TinygenError(f"--strength must be in [0, 1] (0 keeps the image), got {strength}")
    timesteps = torch.as_tensor(timesteps)
    n = len(timesteps)
    init_timestep = min(int(n * strength), n)
    t_start = max(n - init_timestep, 0)
    return timesteps[t_start:], t_start


def threshold_sample(
    x0: Tensor, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0
) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, "Imagen", sec. 2.3): per sample, s is the
    `ratio` quantile of |x_0| clamped to [1, sample_max_value]; x_0 is clipped to [-s, s] / s."""
    dtype, shape = x0.dtype, x0.shape
    flat = x0.reshape(shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), dynamic_thresholding_ratio, dim=1)
    s = torch.clamp(s, min=1, max=sample_max_value).unsqueeze(1)  # (B, 1)
    return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)


def _clip_x0(
    x0: Tensor,
    clip_sample: bool,
    clip_sample_range: float,
    thresholding: bool,
    dynamic_thresholding_ratio: float,
    sample_max_value: float,
) -> Tensor:
    if thresholding:
        return threshold_sample(x0, dynamic_thresholding_ratio, sample_max_value)
    if clip_sample:
        return x0.clamp(-clip_sample_range, clip_sample_range)
    return x0


def _draw_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise like `like`, drawn on the generator's device (CPU generators stay
    reproducible across devices), as diffusers' `randn_tensor` draws it."""
    device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)


def ddpm_step(
    schedule: NoiseSchedule,
    model_output: Tensor,
    t: Timestep,
    x_t: Tensor,
    *,
    t_prev: Timestep | None = None,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    mean_shift_fn: Callable[[Tensor, Tensor, Tensor, Timestep], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """One ancestral step x_t -> x_{t_prev} ~ N(mu(x_t, x_0_hat), sigma^2) (DDPM Alg. 2).

    The mean is the q-posterior mean at the predicted x_0 (DDPM eq. 7); the variance is
    `fixed_small` (the posterior variance, beta-tilde) or `fixed_large` (beta'), where for a
    strided chain beta' = 1 - alpha_bar_t / alpha_bar_prev. t_prev defaults to t - 1. Noise is
    added where t > 0 (drawn from `generator` unless `noise` is given).

    `mean_shift_fn(mean, variance, x_t, t) -> mean` lets classifier guidance move the mean
    (Dhariwal & Nichol Alg. 1); see `tinygen.diffusion.guidance.classifier_mean_shift`.

    Returns (x_prev, pred_x0), both shaped like x_t.
    """
    if variance_type not in VARIANCE_TYPES:
        raise TinygenError(
            f"unknown variance_type {variance_type!r}; choose one of {VARIANCE_TYPES}"
        )
    if t_prev is None:
        t_prev = t - 1
    pred_x0 = schedule.predict_x0(model_output, x_t, t, prediction_type)
    pred_x0 = _clip_x0(
        pred_x0, clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
        sample_max_value,
    )  # fmt: skip
    mean, variance, _ = schedule.q_posterior(pred_x0, x_t, t, t_prev)
    if variance_type == "fixed_large":
        alpha_prod = schedule.gather("alphas_cumprod", t, x_t)
        variance = 1 - alpha_prod / schedule.alpha_prod_prev(t_prev, x_t)
    if mean_shift_fn is not None:
        mean = mean_shift_fn(mean, variance, x_t, t)
    t_tensor = torch.as_tensor(t, device=x_t.device)
    if bool((t_tensor > 0).any()):
        if noise is None:
            noise = _draw_noise(model_output, generator)
        std = variance**0.5
        if t_tensor.dim() == 1:  # no noise on the samples that reach t = 0
            std = torch.where((t_tensor > 0).view(-1, *([1] * (x_t.dim() - 1))), std, 0.0)
        mean = mean + std * noise
    return mean, pred_x0


def ddim_step(
    schedule: NoiseSchedule,
    model_output: Tensor,
    t: Timestep,
    x_t: Tensor,
    *,
    t_prev: Timestep,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    use_clipped_model_output: bool = False,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    final_alpha_cumprod: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2020, eq. 12):

        x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,
        sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)   (eq. 16).

    t_prev < 0 ends the chain with ab_prev = `final_alpha_cumprod` (1.0 is diffusers'
    `set_alpha_to_one=True`). As in diffusers, eps_hat comes from the unclipped prediction
    unless `use_clipped_model_output` (GLIDE's choice). Returns (x_prev, pred_x0).
    """
    check_prediction_type(prediction_type)
    if not 0.0 <= eta <= 1.0:
        raise TinygenError(f"eta must be in [0, 1] (0 = DDIM, 1 = DDPM variance), got {eta}")
    alpha_prod = schedule.gather("alphas_cumprod", t, x_t)
    alpha_prod_prev = schedule.alpha_prod_prev(t_prev, x_t, final_alpha_cumprod)
    beta_prod = 1 - alpha_prod
    pred_x0 = schedule.predict_x0(model_output, x_t, t, prediction_type)
    pred_eps = schedule.predict_epsilon(model_output, x_t, t, prediction_type)
    pred_x0 = _clip_x0(
        pred_x0, clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
        sample_max_value,
    )  # fmt: skip
    variance = (1 - alpha_prod_prev) / beta_prod * (1 - alpha_prod / alpha_prod_prev)
    std = eta * variance**0.5
    if use_clipped_model_output:
        pred_eps = (x_t - alpha_prod**0.5 * pred_x0) / beta_prod**0.5
    direction = (1 - alpha_prod_prev - std**2) ** 0.5 * pred_eps  # "pointing to x_t"
    x_prev = alpha_prod_prev**0.5 * pred_x0 + direction
    if eta > 0:
        if noise is None:
            noise = _draw_noise(model_output, generator)
        x_prev = x_prev + std * noise
    return x_prev, pred_x0


def sample(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    *,
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    num_inference_steps: int = 50,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    clip_sample: bool = False,
    progress: bool = True,
    callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
    x_T: Tensor | None = None,
    x_start: Tensor | None = None,
    strength: float = 1.0,
    spacing: str = "leading",
    steps_offset: int = 0,
    variance_type: str = "fixed_small",
    final_alpha_cumprod: float = 1.0,
    guidance_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    mean_shift_fn: Callable[[Tensor, Tensor, Tensor, Timestep], Tensor] | None = None,
    post_step_fn: Callable[[Tensor, int], Tensor] | None = None,
    **clip_options: float | bool,
) -> Tensor:
    """Generate from pure noise, or from a noised input: the one sample loop of every model.

    Args:
        model_fn: `model_fn(x_t, t_batch) -> model_output`, x_t (B, C, H, W), t_batch (B,)
            int64; wrap a conditional model with `guidance.classifier_free_guidance`.
        shape: (B, C, H, W) of the images (or (B, ...) of latents or vectors).
        x_T: the starting noise (default: drawn from `generator`).
        x_start, strength: start part-way down the chain (SDEdit, Meng et al. 2021): run
            only the last timesteps of `img2img_timesteps(timesteps, strength)`, from
            x_start (shaped `shape`) noised to the first of them with noise from `generator`
            (or `x_T`). strength 0 returns x_start unchanged.
        sampler: `ddim` (any eta in [0, 1]) or `ddpm` (ancestral; with fewer steps than
            training it walks the strided chain, t_prev = the next timestep in the list).
        guidance_fn: `guidance_fn(x_t, t_batch, model_output) -> model_output`, applied after
            every model call, e.g. the classifier eps-shift (`guidance.classifier_eps_shift`).
        mean_shift_fn: DDPM only, `mean_shift_fn(mean, variance, x_t, t_batch) -> mean`
            (`guidance.classifier_mean_shift`).
        post_step_fn: `post_step_fn(x_prev, t_prev) -> x_prev` after every step (t_prev = -1
            after the last), e.g. inpainting's known-region replacement (`diffusion.inpainting`).
        callback: `callback(step_index, t, x_t, pred_x0)` at every step, with the x_t fed to
            the model and its predicted x_0 (for denoising strips).
        clip_options: `clip_sample_range`, `thresholding`, `dynamic_thresholding_ratio`,
            `sample_max_value`, `use_clipped_model_output` (DDIM), passed to the step.

    Returns x_0 (B, C, H, W) on `device`. Runs under `torch.no_grad()`; guidance functions that
    need gradients enable them themselves.
    """
    if sampler not in SAMPLERS:
        raise TinygenError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not 0.0 <= eta <= 1.0:
        raise TinygenError(f"eta must be in [0, 1] (0 = DDIM, 1 = DDPM variance), got {eta}")
    check_prediction_type(prediction_type)
    if mean_shift_fn is not None and sampler != "ddpm":
        raise TinygenError("mean_shift_fn works with the ddpm sampler; for ddim use guidance_fn")
    known = {
        "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
        "use_clipped_model_output",
    }  # fmt: skip
    unknown = set(clip_options) - known
    if unknown:
        raise TinygenError(f"unknown sample() options {sorted(unknown)}; known: {sorted(known)}")
    timesteps = inference_timesteps(
        num_inference_steps, schedule.num_train_timesteps, spacing, steps_offset
    )
    device = torch.device(device)
    if x_T is None:
        x = _draw_noise(torch.empty(shape, device=device), generator)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise TinygenError(f"x_T has shape {tuple(x_T.shape)} but shape is {tuple(shape)}")
        x = x_T.to(device)
    if x_start is not None:
        if tuple(x_start.shape) != tuple(shape):
            raise TinygenError(
                f"x_start has shape {tuple(x_start.shape)} but the samples have {tuple(shape)}"
            )
        timesteps, _ = img2img_timesteps(timesteps, strength)
        if len(timesteps) == 0:
            return x_start.to(device)
        x = schedule.add_noise(x_start.to(device, x.dtype), x, int(timesteps[0]))  # q(x_t | x_0)
    elif strength != 1.0:
        raise TinygenError("strength < 1 needs an x_start (an image to start from)")
    timesteps = timesteps.tolist()
    step_options = dict(clip_options)
    if sampler == "ddpm":
        step_options.pop("use_clipped_model_output", None)

    from tqdm.auto import tqdm

    bar = tqdm(timesteps, desc=f"{sampler} sampling", disable=not progress, leave=False)
    with torch.no_grad():
        for index, t in enumerate(bar):
            t_prev = timesteps[index + 1] if index + 1 < len(timesteps) else -1
            t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
            model_output = model_fn(x, t_batch)
            if guidance_fn is not None:
                model_output = guidance_fn(x, t_batch, model_output)
            if sampler == "ddpm":
                x_prev, pred_x0 = ddpm_step(
                    schedule, model_output, t_batch, x, t_prev=t_prev,
                    prediction_type=prediction_type,
                    variance_type=variance_type, clip_sample=clip_sample, generator=generator,
                    mean_shift_fn=mean_shift_fn, **step_options,
                )  # fmt: skip
            else:
                x_prev, pred_x0 = ddim_step(
                    schedule, model_output, t_batch, x, t_prev=t_prev, eta=eta,
                    prediction_type=prediction_type, clip_sample=clip_sample,
                    generator=generator, final_alpha_cumprod=final_alpha_cumprod, **step_options,
                )  # fmt: skip
            if callback is not None:
                callback(index, t, x, pred_x0)
            x = x_prev.to(x.dtype) if post_step_fn is None else post_step_fn(x_prev, t_prev)
    return x
