"""tinygen's schedules and steps against diffusers' DDPMScheduler / DDIMScheduler (the reference).

Same configuration, same inputs, same noise -> the same numbers. Where diffusers is wrong
(DDIM's previous timestep for `linspace`, `trailing`'s extra step) the tests pin down the bug
and show that tinygen does the right thing; docs/diffusion.md explains both.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tinygen.diffusion.sampling import ddim_step, ddpm_step, inference_timesteps
from tinygen.diffusion.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
# Bit-identical: our ops run in the same order on the same float32 values.
ATOL = 0.0


def reference_kwargs(beta_schedule: str) -> dict:
    kwargs = {"beta_schedule": beta_schedule, "num_train_timesteps": 1000}
    if beta_schedule == "scaled_linear":
        kwargs.update(beta_start=0.00085, beta_end=0.012)
    return kwargs


def make_inputs(prediction_type: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(2, 3, 8, 8, generator=g)
    # Large outputs so that x_0 clipping and thresholding actually change values.
    model_output = torch.randn(2, 3, 8, 8, generator=g) * (
        3.0 if prediction_type == "sample" else 1.0
    )
    return model_output, x_t


@pytest.mark.parametrize("beta_schedule", SCHEDULES + ["cosine"])
@pytest.mark.parametrize("num_train_timesteps", [1000, 50])
def test_alphas_cumprod_equal_diffusers(beta_schedule: str, num_train_timesteps: int) -> None:
    name = "squaredcos_cap_v2" if beta_schedule == "cosine" else beta_schedule
    kwargs = reference_kwargs(name) | {"num_train_timesteps": num_train_timesteps}
    reference = diffusers.DDPMScheduler(**kwargs)
    ours = NoiseSchedule(beta_schedule, num_train_timesteps)
    assert ours.alphas_cumprod.dtype == torch.float32
    assert torch.equal(ours.betas, reference.betas)
    assert torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_inference_timesteps_equal_diffusers(spacing: str, steps_offset: int) -> None:
    """Every N from 1 to T (diffusers' `trailing` extra -1 aside, see below)."""
    reference = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    for n in range(1, 1001):
        if steps_offset and spacing == "leading" and n == 1000:
            continue  # 999 + 1 is outside the schedule: we raise, diffusers does not check
        reference.set_timesteps(n)
        ours = inference_timesteps(n, 1000, spacing, steps_offset)
        assert ours.dtype == torch.int64
        assert torch.equal(ours, reference.timesteps[:n]), (spacing, n)
        assert len(ours) == n and bool((ours[:-1] > ours[1:]).all())


def test_diffusers_trailing_returns_an_extra_negative_timestep() -> None:
    """diffusers bug: float arange gives N + 1 trailing steps for some N; we give exactly N."""
    reference = diffusers.DDIMScheduler(timestep_spacing="trailing")
    reference.set_timesteps(61)
    assert len(reference.timesteps) == 62 and int(reference.timesteps[-1]) == -1
    ours = inference_timesteps(61, 1000, "trailing")
    assert len(ours) == 61 and int(ours.min()) >= 0


@pytest.mark.parametrize(
    "prediction_type,variance_type,clip",
    list(
        itertools.product(
            PREDICTION_TYPES, ["fixed_small", "fixed_large"], ["none", "clip", "threshold"]
        )
    ),
)
def test_ddpm_step_equals_diffusers(prediction_type: str, variance_type: str, clip: str) -> None:
    options = {"clip_sample": clip == "clip", "thresholding": clip == "threshold"}
    if clip == "threshold":
        options.update(dynamic_thresholding_ratio=0.9, sample_max_value=2.5)
    if clip == "clip":
        options.update(clip_sample_range=0.8)
    for beta_schedule, strided in [
        ("linear", False),
        ("scaled_linear", True),
        ("squaredcos_cap_v2", True),
    ]:
        reference = diffusers.DDPMScheduler(
            prediction_type=prediction_type, variance_type=variance_type,
            **reference_kwargs(beta_schedule), **options,
        )  # fmt: skip
        schedule = NoiseSchedule(beta_schedule)
        if strided:
            reference.set_timesteps(20)
        timesteps = reference.timesteps.tolist() if strided else [999, 500, 1, 0]
        for index, t in enumerate(timesteps[:3] + timesteps[-2:]):
            model_output, x_t = make_inputs(prediction_type, seed=index)
            expected = reference.step(
                model_output, t, x_t, generator=torch.Generator().manual_seed(7), return_dict=False
            )
            t_prev = int(reference.previous_timestep(t)) if strided else None
            ours = ddpm_step(
                schedule, model_output, t, x_t, t_prev=t_prev, prediction_type=prediction_type,
                variance_type=variance_type, generator=torch.Generator().manual_seed(7), **options,
            )  # fmt: skip
            torch.testing.assert_close(ours[1], expected[1], atol=ATOL, rtol=0)
            torch.testing.assert_close(ours[0], expected[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "prediction_type,eta,clip",
    list(itertools.product(PREDICTION_TYPES, [0.0, 0.5, 1.0], ["none", "clip", "threshold"])),
)
def test_ddim_step_equals_diffusers(prediction_type: str, eta: float, clip: str) -> None:
    options = {"clip_sample": clip == "clip", "thresholding": clip == "threshold"}
    if clip == "threshold":
        options.update(dynamic_thresholding_ratio=0.9, sample_max_value=2.5)
    cases = [("linear", "leading", True, 0), ("scaled_linear", "leading", False, 1),
             ("squaredcos_cap_v2", "trailing", True, 0)]  # fmt: skip
    for beta_schedule, spacing, set_alpha_to_one, offset in cases:
        reference = diffusers.DDIMScheduler(
            prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=offset,
            set_alpha_to_one=set_alpha_to_one, **reference_kwargs(beta_schedule), **options,
        )  # fmt: skip
        reference.set_timesteps(25)
        schedule = NoiseSchedule(beta_schedule)
        final = 1.0 if set_alpha_to_one else float(schedule.alphas_cumprod[0])
        for index, t in enumerate(reference.timesteps[[0, 1, 12, -1]].tolist()):
            model_output, x_t = make_inputs(prediction_type, seed=index)
            noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3))
            expected = reference.step(
                model_output, t, x_t, eta=eta, variance_noise=noise, return_dict=False
            )
            ours = ddim_step(
                schedule, model_output, t, x_t, t_prev=t - 1000 // 25, eta=eta,
                prediction_type=prediction_type, noise=noise, final_alpha_cumprod=final, **options,
            )  # fmt: skip
            torch.testing.assert_close(ours[1], expected[1], atol=ATOL, rtol=0)
            torch.testing.assert_close(ours[0], expected[0], atol=ATOL, rtol=0)


def test_ddim_use_clipped_model_output_equals_diffusers() -> None:
    reference = diffusers.DDIMScheduler(clip_sample=True)
    reference.set_timesteps(10)
    model_output, x_t = make_inputs("epsilon")
    model_output = model_output * 4
    expected = reference.step(model_output, 500, x_t, use_clipped_model_output=True)
    ours = ddim_step(
        NoiseSchedule(), model_output, 500, x_t, t_prev=400, clip_sample=True,
        use_clipped_model_output=True,
    )  # fmt: skip
    torch.testing.assert_close(ours[0], expected.prev_sample, atol=ATOL, rtol=0)


def test_add_noise_and_velocity_equal_diffusers() -> None:
    reference = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    schedule = NoiseSchedule("cosine")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), reference.add_noise(x0, noise, t))
    torch.testing.assert_close(
        schedule.velocity(x0, noise, t), reference.get_velocity(x0, noise, t)
    )


@pytest.mark.parametrize(
    "spacing,n,t,listed_next,diffusers_prev",
    [
        ("linspace", 10, 999, 888, 899),
        ("linspace", 4, 666, 333, 416),
        ("trailing", 3, 666, 332, 333),
    ],
)
def test_diffusers_ddim_steps_to_the_wrong_noise_level(
    spacing: str, n: int, t: int, listed_next: int, diffusers_prev: int
) -> None:
    """diffusers' DDIM uses t_prev = t - T // N for every spacing. With `linspace` and N = 10
    the timesteps are 999, 888, 777, ...: from 999 diffusers lands on the noise level of 899
    while its next step treats the result as x_888. tinygen steps to the next listed timestep.

    An oracle model (the true noise) makes DDIM with eta = 0 land exactly on
    add_noise(x0, noise, t_prev), which shows which noise level each implementation reached.
    """
    reference = diffusers.DDIMScheduler(timestep_spacing=spacing, clip_sample=False)
    reference.set_timesteps(n)
    timesteps = reference.timesteps.tolist()
    assert timesteps[timesteps.index(t) + 1] == listed_next
    ours_timesteps = inference_timesteps(n, 1000, spacing).tolist()
    assert ours_timesteps == timesteps
    schedule = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    x_t = schedule.add_noise(x0, noise, t)
    theirs = reference.step(noise, t, x_t).prev_sample
    ours_prev = ours_timesteps[ours_timesteps.index(t) + 1]
    ours, _ = ddim_step(schedule, noise, t, x_t, t_prev=ours_prev)
    torch.testing.assert_close(ours, schedule.add_noise(x0, noise, listed_next), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        theirs, schedule.add_noise(x0, noise, diffusers_prev), atol=1e-5, rtol=0
    )
    assert (theirs - schedule.add_noise(x0, noise, listed_next)).abs().max() > 1e-4
