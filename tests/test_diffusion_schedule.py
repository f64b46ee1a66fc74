"""NoiseSchedule: beta schedules against their formulas, q(x_t | x_0) statistics, conversions."""

from __future__ import annotations

import math

import pytest
import torch

from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.errors import TinygenError

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]


def test_linear_and_scaled_linear_betas_follow_their_formulas() -> None:
    linear = NoiseSchedule("linear", 1000)
    assert linear.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert linear.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    steps = linear.betas[1:] - linear.betas[:-1]
    torch.testing.assert_close(
        steps, torch.full_like(steps, (0.02 - 1e-4) / 999), atol=1e-8, rtol=0
    )
    scaled = NoiseSchedule("scaled_linear", 1000)
    roots = scaled.betas.double().sqrt()
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64)
    torch.testing.assert_close(roots, expected, atol=1e-6, rtol=0)
    custom = NoiseSchedule("linear", 10, beta_start=0.001, beta_end=0.1)
    assert custom.betas[0].item() == pytest.approx(0.001, rel=1e-6)
    assert custom.betas[-1].item() == pytest.approx(0.1, rel=1e-6)


def test_cosine_alphas_cumprod_follow_nichol_dhariwal_eq_17() -> None:
    schedule = NoiseSchedule("cosine", 1000)
    assert torch.equal(schedule.betas, NoiseSchedule("squaredcos_cap_v2", 1000).betas)

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    # alpha_bar_t = f((t + 1) / T) / f(0) wherever no beta was capped (all but the last steps).
    capped = schedule.betas >= 0.999
    assert int(capped.sum()) <= 2 and bool(capped[-1])
    expected = torch.tensor([f((t + 1) / 1000) / f(0) for t in range(1000)], dtype=torch.float64)
    ok = ~capped.cumsum(0).bool()
    torch.testing.assert_close(
        schedule.alphas_cumprod.double()[ok], expected[ok], atol=1e-5, rtol=1e-4
    )


def test_derived_terms_are_consistent() -> None:
    s = NoiseSchedule("scaled_linear", 100)
    for name in ("betas", "alphas", "alphas_cumprod", "sqrt_alphas_cumprod"):
        assert getattr(s, name).dtype == torch.float32 and getattr(s, name).shape == (100,)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas.double(), 0).float())
    torch.testing.assert_close(s.sqrt_alphas_cumprod**2, s.alphas_cumprod)
    torch.testing.assert_close(s.sqrt_one_minus_alphas_cumprod**2, 1 - s.alphas_cumprod)
    t = torch.arange(100)
    snr = s.snr(t)
    torch.testing.assert_close(snr, s.alphas_cumprod / (1 - s.alphas_cumprod))
    assert bool((snr[1:] < snr[:-1]).all()), "SNR must fall as noise grows"
    assert s.snr(5).item() == pytest.approx(snr[5].item())


@pytest.mark.parametrize("t", [0, 250, 999])
def test_add_noise_has_the_right_mean_and_variance(t: int) -> None:
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps: per-pixel mean sqrt(ab) x0, variance 1 - ab."""
    schedule = NoiseSchedule("linear")
    n = 20000
    g = torch.Generator().manual_seed(0)
    x0 = torch.linspace(-1, 1, 12).view(1, 3, 2, 2).expand(n, 3, 2, 2)
    x_t = schedule.add_noise(x0, torch.randn(n, 3, 2, 2, generator=g), t).double()
    ab = schedule.alphas_cumprod[t].double()
    var = 1 - ab
    # Tolerances: 5 standard errors of the sample mean and of the sample variance.
    mean_tol = 5 * math.sqrt(var / n)
    var_tol = 5 * var * math.sqrt(2 / (n - 1))
    assert (x_t.mean(0) - ab.sqrt() * x0[0]).abs().max() < mean_tol
    assert (x_t.var(0) - var).abs().max() < var_tol


def test_add_noise_broadcasts_a_batch_of_timesteps() -> None:
    schedule = NoiseSchedule("cosine")
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([3, 400, 998])
    batched = schedule.add_noise(x0, noise, t)
    for i in range(3):
        torch.testing.assert_close(
            batched[i], schedule.add_noise(x0[i : i + 1], noise[i : i + 1], int(t[i]))[0]
        )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_conversions_invert_the_training_target(prediction_type: str, beta_schedule: str) -> None:
    schedule = NoiseSchedule(beta_schedule)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 100, 600, 950])  # cosine's t = 999 has ab ~ 0: x0 is unrecoverable
    x_t = schedule.add_noise(x0, noise, t)
    output = schedule.target(x0, noise, t, prediction_type)
    torch.testing.assert_close(
        schedule.predict_x0(output, x_t, t, prediction_type), x0, atol=2e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        schedule.predict_epsilon(output, x_t, t, prediction_type), noise, atol=2e-4, rtol=1e-4
    )


def test_velocity_matches_its_definition() -> None:
    schedule = NoiseSchedule()
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([10, 700])
    ab = schedule.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(
        schedule.velocity(x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0
    )
    # v rotates (x0, eps): x0 = sqrt(ab) x_t - sqrt(1 - ab) v (Salimans & Ho 2022, sec. 4).
    x_t = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(
        ab.sqrt() * x_t - (1 - ab).sqrt() * schedule.velocity(x0, noise, t), x0
    )


def test_q_posterior_matches_ddpm_eq_7_in_float64() -> None:
    """Coefficients of x0 and x_t and the variance, against eq. 7 computed in float64.

    Like diffusers we form beta' = 1 - ab_t / ab_prev in float32, which cancels: the relative
    error is about float32 epsilon / beta_t, so the tolerance scales with that.
    """
    schedule = NoiseSchedule("linear")
    betas = schedule.betas.double()
    ab = torch.cumprod(1 - betas, 0)
    one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    for t in (1, 50, 999):
        rel = 10 * 2**-24 / betas[t].item()
        coef_x0 = schedule.q_posterior(one, zero, t)[0].item()
        coef_xt = schedule.q_posterior(zero, one, t)[0].item()
        _, variance, log_variance = schedule.q_posterior(zero, zero, t)
        assert coef_x0 == pytest.approx((betas[t] * ab[t - 1].sqrt() / (1 - ab[t])).item(), rel=rel)
        expected_xt = (1 - betas[t]).sqrt() * (1 - ab[t - 1]) / (1 - ab[t])
        assert coef_xt == pytest.approx(expected_xt.item(), rel=rel)
        expected_var = ((1 - ab[t - 1]) / (1 - ab[t]) * betas[t]).item()
        assert variance.item() == pytest.approx(expected_var, rel=rel)
        assert log_variance.item() == pytest.approx(math.log(expected_var), abs=rel)
    # At t = 0 the posterior is a point mass on x0.
    x0, x_t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mean, variance, _ = schedule.q_posterior(x0, x_t, 0)
    torch.testing.assert_close(mean, x0)
    assert variance.item() == pytest.approx(1e-20)


def test_q_posterior_of_a_strided_step_uses_the_effective_beta() -> None:
    """Strided chain t -> s: the process is a DDPM with beta' = 1 - ab_t / ab_s."""
    schedule = NoiseSchedule()
    ab = schedule.alphas_cumprod.double()
    x0, x_t = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2)
    mean, variance, _ = schedule.q_posterior(x0, x_t, 900, 800)
    beta = 1 - ab[900] / ab[800]
    expected_mean = (
        beta * ab[800].sqrt() / (1 - ab[900]) * x0.double()
        + (1 - beta).sqrt() * (1 - ab[800]) / (1 - ab[900]) * x_t.double()
    )
    torch.testing.assert_close(mean.double(), expected_mean, atol=1e-5, rtol=1e-4)
    assert variance.item() == pytest.approx(((1 - ab[800]) / (1 - ab[900]) * beta).item(), rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"beta_schedule": "quadratic"}, "unknown beta schedule"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start <= beta_end"),
        ({"beta_schedule": "cosine", "beta_end": 0.02}, "do not apply to the cosine"),
    ],
)
def test_bad_schedule_arguments_raise_clear_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(TinygenError, match=fragment):
        NoiseSchedule(**kwargs)


def test_bad_timesteps_and_prediction_types_raise_clear_errors() -> None:
    schedule = NoiseSchedule(num_train_timesteps=100)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(TinygenError, match=r"must lie in \[0, 99\]"):
        schedule.add_noise(x, x, 100)
    with pytest.raises(TinygenError, match="must lie in"):
        schedule.add_noise(x, x, torch.tensor([-1, 5]))
    with pytest.raises(TinygenError, match="integer timesteps"):
        schedule.add_noise(x, x, torch.tensor([1.0, 2.0]))
    with pytest.raises(TinygenError, match="must match"):
        schedule.add_noise(x, torch.zeros(2, 1, 4, 5), 3)
    with pytest.raises(TinygenError, match="unknown prediction_type"):
        schedule.predict_x0(x, x, 3, "score")
    with pytest.raises(TinygenError, match="unknown prediction_type"):
        schedule.target(x, x, 3, "x0")
