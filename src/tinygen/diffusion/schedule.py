"""Noise schedules and the forward process q(x_t | x_0) of a diffusion model.

A schedule is a sequence of betas beta_1..beta_T (Ho et al. 2020, "DDPM"). Everything else
derives from them: alpha_t = 1 - beta_t and the cumulative product
alpha_bar_t = prod_{s<=t} alpha_s, so that (DDPM eq. 4)

    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps,   eps ~ N(0, I).

The network can be trained to predict one of three equivalent quantities
(diffusers' vocabulary `prediction_type`): the noise `epsilon`, the clean image `sample`
(x_0), or the velocity `v_prediction`, v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x_0
(Salimans & Ho 2022, "Progressive distillation", sec. 4). `NoiseSchedule` converts between them.

Timesteps are 0-based like diffusers: t = 0 is the least noisy step, T - 1 the noisiest.
Every number here is float32 and computed in the same order as diffusers' `DDPMScheduler`,
so the two agree to the last bit (tests/test_diffusion_parity.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tinygen.errors import TinygenError

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

# (beta_start, beta_end) defaults: DDPM's linear range, and Stable Diffusion's scaled range.
_DEFAULT_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}

Timestep = int | Tensor


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2);

    beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), capped at `max_beta` so the last steps stay finite.
    Computed in Python floats, then float32, as diffusers' `squaredcos_cap_v2` does.
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = []
    for i in range(num_train_timesteps):
        t1, t2 = i / num_train_timesteps, (i + 1) / num_train_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise TinygenError(
            f"unknown prediction_type {prediction_type!r}; "
            f"choose one of {', '.join(PREDICTION_TYPES)}"
        )


class NoiseSchedule:
    """The betas of a diffusion process and everything derived from them (all float32, CPU).

    Args:
        beta_schedule: `linear` (1e-4 -> 0.02), `scaled_linear` (0.00085 -> 0.012, linear in
            sqrt space, Stable Diffusion) or `cosine` (= diffusers' `squaredcos_cap_v2`).
        num_train_timesteps: T, the number of forward steps.
        beta_start, beta_end: override the range of `linear` / `scaled_linear`.

    Methods take a timestep `t` as a Python int or a LongTensor (B,) on any device; the
    per-timestep coefficient is broadcast over the trailing dims of the image (B, C, H, W).
    """

    def __init__(
        self,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ) -> None:
        if beta_schedule not in BETA_SCHEDULES:
            raise TinygenError(
                f"unknown beta schedule {beta_schedule!r}; "
                f"choose one of {', '.join(BETA_SCHEDULES)}"
            )
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise TinygenError(
                f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}"
            )
        if beta_schedule in ("cosine", "squaredcos_cap_v2"):
            if beta_start is not None or beta_end is not None:
                raise TinygenError(
                    "beta_start/beta_end do not apply to the cosine schedule; leave them unset "
                    "or use --schedule linear / scaled_linear"
                )
            betas = cosine_betas(num_train_timesteps)
        else:
            default_start, default_end = _DEFAULT_RANGE[beta_schedule]
            beta_start = default_start if beta_start is None else float(beta_start)
            beta_end = default_end if beta_end is None else float(beta_end)
            if not 0.0 < beta_start <= beta_end < 1.0:
                raise TinygenError(
                    f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                    f"beta_end={beta_end}"
                )
            if beta_schedule == "linear":
                betas = torch.linspace(
                    beta_start, beta_end, num_train_timesteps, dtype=torch.float32
                )
            else:
                betas = (
                    torch.linspace(
                        beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32
                    )
                    ** 2
                )
        self.beta_schedule = beta_schedule
        self.num_train_timesteps = num_train_timesteps
        self.betas = betas  # (T,)
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod**0.5
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod) ** 0.5
        self._on_device: dict[tuple[str, str], Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule({self.beta_schedule!r}, num_train_timesteps={self.num_train_timesteps})"
        )

    # -- indexing -------------------------------------------------------------------------
    def check_timesteps(self, t: Timestep, name: str = "t", allow_end: bool = False) -> None:
        """Raise a TinygenError if `t` is outside [0, T) (any t < 0 is allowed with `allow_end`).

        Only CPU values are checked, so a CUDA training loop never waits on a device sync.
        """
        if isinstance(t, Tensor):
            if t.device.type != "cpu" or t.numel() == 0:
                return
            if t.is_floating_point():
                raise TinygenError(f"{name} must be integer timesteps, got dtype {t.dtype}")
            low, high = int(t.min()), int(t.max())
        else:
            low = high = int(t)
        if (low < 0 and not allow_end) or high >= self.num_train_timesteps:
            floor = "-inf" if allow_end else 0
            raise TinygenError(
                f"{name} must lie in [{floor}, {self.num_train_timesteps - 1}], got values in "
                f"[{low}, {high}]; timesteps are 0-based indices into a schedule of "
                f"{self.num_train_timesteps} steps"
            )

    def _table(self, name: str, device: torch.device) -> Tensor:
        key = (name, str(device))
        if key not in self._on_device:
            self._on_device[key] = getattr(self, name).to(device)
        return self._on_device[key]

    def gather(self, name: str, t: Timestep, like: Tensor) -> Tensor:
        """`self.<name>[t]` shaped to broadcast against `like`.

        0-d for an int t, (B, 1, 1, 1) for t of shape (B,); on `like`'s device, float32.
        """
        self.check_timesteps(t)
        table = self._table(name, like.device)
        index = torch.as_tensor(t, device=like.device, dtype=torch.long)
        values = table[index]
        if values.dim() == 1:
            values = values.view(-1, *([1] * (like.dim() - 1)))
        return values

    def _coefs(self, t: Timestep, like: Tensor) -> tuple[Tensor, Tensor]:
        alpha_prod = self.gather("alphas_cumprod", t, like)
        return alpha_prod**0.5, (1 - alpha_prod) ** 0.5

    # -- forward process ------------------------------------------------------------------
    def add_noise(self, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given noise (DDPM eq. 4). x0, noise: (B, C, H, W)."""
        if x0.shape != noise.shape:
            raise TinygenError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must match")
        sqrt_ab, sqrt_1mab = self._coefs(t, x0)
        return sqrt_ab.to(x0.dtype) * x0 + sqrt_1mab.to(x0.dtype) * noise

    def snr(self, t: Timestep) -> Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021), float32."""
        self.check_timesteps(t)
        device = t.device if isinstance(t, Tensor) else torch.device("cpu")
        alpha_prod = self._table("alphas_cumprod", device)[torch.as_tensor(t, device=device)]
        return alpha_prod / (1 - alpha_prod)

    # -- parameterisations ----------------------------------------------------------------
    def velocity(self, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x_0 (Salimans & Ho 2022, sec. 4)."""
        sqrt_ab, sqrt_1mab = self._coefs(t, x0)
        return sqrt_ab * noise - sqrt_1mab * x0

    def target(self, x0: Tensor, noise: Tensor, t: Timestep, prediction_type: str) -> Tensor:
        """The training target for a model of `prediction_type`: eps, x_0 or v."""
        check_prediction_type(prediction_type)
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return x0
        return self.velocity(x0, noise, t)

    def predict_x0(
        self, model_output: Tensor, x_t: Tensor, t: Timestep, prediction_type: str
    ) -> Tensor:
        """x_0 implied by a model output: (x_t - sqrt(1-ab) eps) / sqrt(ab) (DDPM eq. 15) etc."""
        check_prediction_type(prediction_type)
        alpha_prod = self.gather("alphas_cumprod", t, x_t)
        beta_prod = 1 - alpha_prod
        if prediction_type == "epsilon":
            return (x_t - beta_prod**0.5 * model_output) / alpha_prod**0.5
        if prediction_type == "sample":
            return model_output
        return alpha_prod**0.5 * x_t - beta_prod**0.5 * model_output

    def predict_epsilon(
        self, model_output: Tensor, x_t: Tensor, t: Timestep, prediction_type: str
    ) -> Tensor:
        """The noise eps implied by a model output (DDIM paper eq. 12's eps_theta)."""
        check_prediction_type(prediction_type)
        alpha_prod = self.gather("alphas_cumprod", t, x_t)
        beta_prod = 1 - alpha_prod
        if prediction_type == "epsilon":
            return model_output
        if prediction_type == "sample":
            return (x_t - alpha_prod**0.5 * model_output) / beta_prod**0.5
        return alpha_prod**0.5 * model_output + beta_prod**0.5 * x_t

    # -- reverse process ------------------------------------------------------------------
    def alpha_prod_prev(
        self, t_prev: Timestep, like: Tensor, final_alpha_cumprod: float = 1.0
    ) -> Tensor:
        """alpha_bar at t_prev, or `final_alpha_cumprod` where t_prev < 0 (the chain's end)."""
        self.check_timesteps(t_prev, name="t_prev", allow_end=True)
        if not isinstance(t_prev, Tensor):
            if t_prev < 0:
                return torch.tensor(float(final_alpha_cumprod), device=like.device)
            return self.gather("alphas_cumprod", t_prev, like)
        t_prev = t_prev.to(like.device)
        inside = self.gather("alphas_cumprod", t_prev.clamp(min=0), like)
        end = torch.full_like(inside, float(final_alpha_cumprod))
        return torch.where((t_prev >= 0).view(inside.shape), inside, end)

    def q_posterior(
        self, x0: Tensor, x_t: Tensor, t: Timestep, t_prev: Timestep | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of q(x_{t_prev} | x_t, x_0) (DDPM eqs. 6-7).

        With t_prev < t any earlier timestep (a strided chain) the one-step beta is replaced by
        beta' = 1 - alpha_bar_t / alpha_bar_prev, as in diffusers and Nichol & Dhariwal's
        respacing. t_prev defaults to t - 1; t_prev < 0 means alpha_bar_prev = 1. The variance
        is clamped at 1e-20 so its log stays finite at t = 0.
        """
        if t_prev is None:
            t_prev = t - 1
        alpha_prod = self.gather("alphas_cumprod", t, x_t)
        alpha_prod_prev = self.alpha_prod_prev(t_prev, x_t)
        beta_prod = 1 - alpha_prod
        beta_prod_prev = 1 - alpha_prod_prev
        current_alpha = alpha_prod / alpha_prod_prev
        current_beta = 1 - current_alpha
        x0_coef = (alpha_prod_prev**0.5 * current_beta) / beta_prod
        xt_coef = current_alpha**0.5 * beta_prod_prev / beta_prod
        mean = x0_coef * x0 + xt_coef * x_t
        variance = torch.clamp(beta_prod_prev / beta_prod * current_beta, min=1e-20)
        return mean, variance, torch.log(variance)
