"""The sample loop and the step functions: properties that hold whatever the network is."""

from __future__ import annotations

import pytest
import torch

from tinygen.diffusion.sampling import (
    ddim_step,
    ddpm_step,
    inference_timesteps,
    sample,
    threshold_sample,
)
from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.errors import TinygenError

SHAPE = (3, 2, 8, 8)


def oracle_model(schedule: NoiseSchedule, x0: torch.Tensor, prediction_type: str):
    """The ideal network for a one-image data set: it knows x0, so its output is exact."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return schedule.target(x0, eps, t, prediction_type)

    return model_fn


def smooth_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear stand-in for a network: depends on x_t and t, no parameters."""
    return torch.tanh(0.7 * x_t + 0.001 * t.view(-1, 1, 1, 1).float()) * 0.9


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_oracle_model_samples_its_training_image(
    prediction_type: str, sampler: str, eta: float
) -> None:
    """With the exact x0 prediction every chain ends at x0: the last step has ab_prev = 1."""
    schedule = NoiseSchedule("cosine")
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = sample(
        oracle_model(schedule, x0, prediction_type), SHAPE, schedule=schedule, sampler=sampler,
        num_inference_steps=20, eta=eta, prediction_type=prediction_type, progress=False,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)


def test_ddim_eta_zero_is_deterministic_given_x_T() -> None:
    schedule = NoiseSchedule()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    runs = [
        sample(smooth_model, SHAPE, schedule=schedule, num_inference_steps=10, x_T=x_T,
               progress=False, generator=torch.Generator().manual_seed(seed))
        for seed in (1, 2)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    stochastic = [
        sample(smooth_model, SHAPE, schedule=schedule, num_inference_steps=10, x_T=x_T, eta=1.0,
               progress=False, generator=torch.Generator().manual_seed(seed))
        for seed in (1, 2)
    ]  # fmt: skip
    assert not torch.allclose(stochastic[0], stochastic[1])


def test_ddim_eta_one_over_all_steps_equals_ddpm() -> None:
    """DDIM eq. 16 with eta = 1 is DDPM's posterior variance, and the means coincide."""
    schedule = NoiseSchedule("linear")
    runs = {
        sampler: sample(
            smooth_model,
            SHAPE,
            schedule=schedule,
            sampler=sampler,
            num_inference_steps=1000,
            eta=1.0,
            progress=False,
            generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
        for sampler in ("ddim", "ddpm")
    }
    assert runs["ddpm"].abs().max() > 0.1  # a real sample, not a collapsed one
    # float32 over 1,000 steps: the two formulas round differently, ~1e-5 relative.
    torch.testing.assert_close(runs["ddim"], runs["ddpm"], atol=1e-4, rtol=2e-4)
    deterministic = sample(
        smooth_model, SHAPE, schedule=schedule, num_inference_steps=1000, eta=0.0,
        progress=False, generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    assert (deterministic - runs["ddpm"]).abs().max() > 0.1  # eta matters


def test_ddim_step_with_eta_one_has_ddpm_mean_and_variance() -> None:
    schedule = NoiseSchedule("scaled_linear")
    x_t, out = torch.randn(SHAPE), torch.randn(SHAPE)
    zero = torch.zeros(SHAPE)
    for t, t_prev in [(999, 998), (600, 580), (5, -1)]:
        ddpm_mean, _ = ddpm_step(schedule, out, t, x_t, t_prev=t_prev, noise=zero)
        ddim_mean, _ = ddim_step(schedule, out, t, x_t, t_prev=t_prev, eta=1.0, noise=zero)
        torch.testing.assert_close(ddim_mean, ddpm_mean, atol=2e-5, rtol=1e-4)
        unit = torch.ones(SHAPE)
        ddpm_std = ddpm_step(schedule, out, t, x_t, t_prev=t_prev, noise=unit)[0] - ddpm_mean
        ddim_std = (
            ddim_step(schedule, out, t, x_t, t_prev=t_prev, eta=1.0, noise=unit)[0] - ddim_mean
        )
        torch.testing.assert_close(ddim_std, ddpm_std, atol=2e-5, rtol=1e-3)


def test_ddpm_sampler_with_all_steps_is_the_plain_t_minus_one_chain() -> None:
    schedule = NoiseSchedule(num_train_timesteps=50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    expected = x
    for t in range(49, -1, -1):
        t_batch = torch.full((SHAPE[0],), t)
        expected, _ = ddpm_step(schedule, smooth_model(expected, t_batch), t, expected, generator=g)
    out = sample(
        smooth_model, SHAPE, schedule=schedule, sampler="ddpm", num_inference_steps=50,
        progress=False, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_callback_sees_every_step_in_order() -> None:
    schedule = NoiseSchedule()
    seen = []
    sample(
        smooth_model, SHAPE, schedule=schedule, num_inference_steps=7, spacing="trailing",
        progress=False, callback=lambda i, t, x, x0: seen.append((i, t, x.shape, x0.shape)),
    )  # fmt: skip
    assert [s[0] for s in seen] == list(range(7))
    assert [s[1] for s in seen] == inference_timesteps(7, 1000, "trailing").tolist()
    assert all(s[2] == SHAPE and s[3] == SHAPE for s in seen)


def test_batched_timesteps_equal_per_sample_steps() -> None:
    schedule = NoiseSchedule("cosine")
    x_t, out, noise = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([900, 300, 0])
    t_prev = torch.tensor([850, 250, -1])
    for step, kwargs in [(ddpm_step, {}), (ddim_step, {"eta": 0.5})]:
        batched, _ = step(schedule, out, t, x_t, t_prev=t_prev, noise=noise, **kwargs)
        for i in range(3):
            single, _ = step(
                schedule, out[i : i + 1], int(t[i]), x_t[i : i + 1], t_prev=int(t_prev[i]),
                noise=noise[i : i + 1], **kwargs,
            )  # fmt: skip
            torch.testing.assert_close(batched[i : i + 1], single)


def test_clip_and_threshold_bound_the_predicted_x0() -> None:
    schedule = NoiseSchedule()
    x_t, out = torch.randn(SHAPE), torch.randn(SHAPE) * 5
    _, clipped = ddim_step(
        schedule, out, 500, x_t, t_prev=400, prediction_type="sample", clip_sample=True
    )
    assert clipped.abs().max() <= 1.0 and torch.equal(clipped, out.clamp(-1, 1))
    thresholded = threshold_sample(out, 0.9, sample_max_value=10.0)
    flat = out.reshape(SHAPE[0], -1).abs()
    s = torch.quantile(flat, 0.9, dim=1).clamp(min=1)
    for i in range(SHAPE[0]):
        torch.testing.assert_close(thresholded[i], out[i].clamp(-s[i], s[i]) / s[i])
    assert thresholded.abs().max() <= 1.0
    out = sample(
        smooth_model, SHAPE, schedule=schedule, num_inference_steps=5, prediction_type="sample",
        thresholding=True, dynamic_thresholding_ratio=0.9, progress=False,
        callback=lambda i, t, x, x0: x0.abs().max() <= 1.0 or pytest.fail("x0 not thresholded"),
    )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_inference_steps": 1001}, "num_inference_steps must be in"),
        ({"num_inference_steps": 0}, "num_inference_steps must be in"),
        ({"eta": 1.5}, "eta must be in"),
        ({"eta": -0.1}, "eta must be in"),
        ({"sampler": "euler"}, "unknown sampler"),
        ({"spacing": "random"}, "unknown timestep spacing"),
        ({"prediction_type": "x0"}, "unknown prediction_type"),
        ({"variance_type": "learned", "sampler": "ddpm"}, "unknown variance_type"),
        ({"x_T": torch.zeros(1, 2, 8, 8)}, "x_T has shape"),
        ({"clip_range": 2.0}, "unknown sample"),
        ({"steps_offset": 5, "num_inference_steps": 1000}, "steps_offset"),
        ({"mean_shift_fn": lambda m, v, x, t: m}, "mean_shift_fn works with the ddpm"),
    ],
)
def test_bad_sampling_arguments_raise_clear_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(TinygenError, match=fragment):
        sample(smooth_model, SHAPE, schedule=NoiseSchedule(), progress=False, **kwargs)


def test_step_functions_reject_bad_timesteps_and_eta() -> None:
    schedule = NoiseSchedule(num_train_timesteps=100)
    x = torch.zeros(SHAPE)
    with pytest.raises(TinygenError, match="must lie in"):
        ddpm_step(schedule, x, 100, x)
    with pytest.raises(TinygenError, match="eta must be in"):
        ddim_step(schedule, x, 50, x, t_prev=40, eta=2.0)
    with pytest.raises(TinygenError, match="t_prev must lie in"):
        ddim_step(schedule, x, 50, x, t_prev=100)
