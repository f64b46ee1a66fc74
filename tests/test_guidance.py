"""Classifier-free and classifier guidance: the formulas, the batching, and the plumbing."""

from __future__ import annotations

import pytest
import torch

from tinygen.diffusion.guidance import (
    classifier_eps_shift,
    classifier_free_guidance,
    classifier_grad,
    classifier_mean_shift,
    ddim_eps_shift,
    ddpm_mean_shift,
)
from tinygen.diffusion.sampling import ddpm_step, sample
from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.errors import TinygenError

SHAPE = (4, 2, 4, 4)
NUM_CLASSES = 3


class CountingModel:
    """model(x, t, cond): a label-dependent output; counts calls and batch sizes."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.offsets = torch.tensor([0.5, -1.0, 2.0, 0.0])  # the last label is the null label

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return torch.sin(x) * (1 + t.view(-1, 1, 1, 1) / 1000) + self.offsets[cond].view(
            -1, 1, 1, 1
        )


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    t = torch.tensor([10, 200, 500, 999])
    cond = torch.tensor([0, 1, 2, 1])
    null = torch.tensor([NUM_CLASSES])
    return x, t, cond, null


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, 7.0])
def test_cfg_combines_both_branches_in_one_forward(scale: float) -> None:
    x, t, cond, null = inputs()
    model = CountingModel()
    guided = classifier_free_guidance(model, cond, null, scale)(x, t)
    assert len(model.calls) == 1, "both branches must share one forward pass"
    assert model.calls[0] == (SHAPE[0] if scale in (0.0, 1.0) else 2 * SHAPE[0])
    reference = CountingModel()
    out_cond = reference(x, t, cond)
    out_uncond = reference(x, t, null.expand(SHAPE[0]))
    torch.testing.assert_close(guided, out_uncond + scale * (out_cond - out_uncond))
    if scale == 0.0:
        torch.testing.assert_close(guided, out_uncond, atol=0, rtol=0)
    if scale == 1.0:
        torch.testing.assert_close(guided, out_cond, atol=0, rtol=0)


def test_cfg_batched_forward_equals_separate_forwards_in_a_real_network() -> None:
    """The concatenated batch must not mix samples (e.g. through broadcasting mistakes)."""
    torch.manual_seed(0)
    embed = torch.nn.Embedding(NUM_CLASSES + 1, 2)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return conv(x + embed(cond).view(-1, 2, 1, 1)) * (t.view(-1, 1, 1, 1) + 1).log()

    x, t, cond, null = inputs()
    with torch.no_grad():
        guided = classifier_free_guidance(model, cond, null, 3.0)(x, t)
        cond_out, uncond_out = model(x, t, cond), model(x, t, null.expand(4))
    torch.testing.assert_close(
        guided, uncond_out + 3.0 * (cond_out - uncond_out), atol=1e-5, rtol=1e-5
    )


def test_cfg_inside_the_sampler_uses_one_forward_per_step() -> None:
    x, _, cond, null = inputs()
    model = CountingModel()
    sample(
        classifier_free_guidance(model, cond, null, 4.0), SHAPE, schedule=NoiseSchedule(),
        num_inference_steps=6, progress=False,
    )  # fmt: skip
    assert model.calls == [2 * SHAPE[0]] * 6


def test_cfg_rejects_bad_inputs() -> None:
    x, t, cond, null = inputs()
    with pytest.raises(TinygenError, match="guidance scale must be >= 0"):
        classifier_free_guidance(CountingModel(), cond, null, -1.0)
    with pytest.raises(TinygenError, match="null condition"):
        classifier_free_guidance(CountingModel(), cond, torch.tensor([3, 3]), 2.0)
    with pytest.raises(TinygenError, match="one condition per image"):
        classifier_free_guidance(CountingModel(), cond[:2], null, 2.0)(x, t)


def linear_classifier() -> tuple[torch.Tensor, object]:
    weight = torch.randn(NUM_CLASSES, 2 * 4 * 4, generator=torch.Generator().manual_seed(3))

    def classifier_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ weight.T * (1 - t.view(-1, 1) / 2000)

    return weight, classifier_fn


def test_classifier_grad_equals_the_softmax_gradient_formula() -> None:
    """For logits = c * W x: grad log p(y|x) = c * (W_y - sum_k p_k W_k)."""
    weight, classifier_fn = linear_classifier()
    x, t, _, _ = inputs()
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():  # the sampler calls it under no_grad
        grad = classifier_grad(classifier_fn, x, t, y)
    scale = (1 - t.float() / 2000).view(-1, 1)
    probs = torch.softmax(x.flatten(1) @ weight.T * scale, dim=-1)
    expected = scale * (weight[y] - probs @ weight)
    torch.testing.assert_close(grad.flatten(1), expected, atol=1e-5, rtol=1e-5)


def test_mean_shift_and_eps_shift_follow_dhariwal_nichol() -> None:
    schedule = NoiseSchedule()
    _, classifier_fn = linear_classifier()
    x, t, _, _ = inputs()
    y = torch.tensor([2, 2, 1, 0])
    grad = classifier_grad(classifier_fn, x, t, y)
    out, zero = torch.randn(SHAPE), torch.zeros(SHAPE)
    # Alg. 1: the ancestral mean moves by s * Sigma * g, with the step's own variance.
    plain, _ = ddpm_step(schedule, out, t, x, noise=zero)
    shifted, _ = ddpm_step(
        schedule, out, t, x, noise=zero, mean_shift_fn=classifier_mean_shift(classifier_fn, y, 2.0)
    )
    variance = schedule.q_posterior(x, x, t)[1]
    torch.testing.assert_close(shifted - plain, 2.0 * variance * grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ddpm_mean_shift(plain, variance, grad, 2.0), shifted)
    # Alg. 2: eps - sqrt(1 - ab_t) * s * g, for every parameterisation of the model output.
    expected_eps = out - (1 - schedule.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * 2.0 * grad
    torch.testing.assert_close(ddim_eps_shift(out, grad, 2.0, schedule, t), expected_eps)
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        model_output = schedule.target(torch.randn(SHAPE), out, t, prediction_type)
        eps = schedule.predict_epsilon(model_output, x, t, prediction_type)
        guided = classifier_eps_shift(classifier_fn, y, 2.0, schedule, prediction_type)(
            x, t, model_output
        )
        guided_eps = schedule.predict_epsilon(guided, x, t, prediction_type)
        torch.testing.assert_close(
            guided_eps, ddim_eps_shift(eps, grad, 2.0, schedule, t), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_classifier_guidance_raises_the_target_class_probability(sampler: str) -> None:
    """Data ~ N(0, I), so the exact eps model is sqrt(1 - ab_t) x_t; guidance must pull the
    samples toward the requested class of a linear classifier, more with a larger scale."""
    schedule = NoiseSchedule(num_train_timesteps=100)
    weight, classifier_fn = linear_classifier()
    y = torch.tensor([0, 1, 2, 0] * 8)
    shape = (32, 2, 4, 4)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (1 - schedule.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * x_t

    def mean_log_prob(scale: float) -> float:
        kwargs = {}
        if scale and sampler == "ddpm":
            kwargs["mean_shift_fn"] = classifier_mean_shift(classifier_fn, y, scale)
        elif scale:
            kwargs["guidance_fn"] = classifier_eps_shift(classifier_fn, y, scale, schedule)
        x0 = sample(
            model_fn, shape, schedule=schedule, sampler=sampler, num_inference_steps=50,
            progress=False, generator=torch.Generator().manual_seed(0), **kwargs,
        )  # fmt: skip
        logits = classifier_fn(x0, torch.zeros(32, dtype=torch.long))
        return torch.log_softmax(logits, -1)[torch.arange(32), y].mean().item()

    scores = [mean_log_prob(s) for s in (0.0, 1.0, 4.0)]
    assert scores[0] < scores[1] < scores[2] and scores[2] > -0.1, scores


def test_classifier_grad_rejects_bad_labels() -> None:
    _, classifier_fn = linear_classifier()
    x, t, _, _ = inputs()
    with pytest.raises(TinygenError, match="labels must be in"):
        classifier_grad(classifier_fn, x, t, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TinygenError, match="labels y must have shape"):
        classifier_grad(classifier_fn, x, t, torch.tensor([0, 1]))
