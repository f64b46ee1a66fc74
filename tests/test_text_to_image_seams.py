"""The seams text-to-image passes through, each against an independent truth: dict conditions
under CFG, the additive conditioning vector, the objective on vectors, the chain that starts
midway (against diffusers' img2img pipeline), score-function guidance with a noised CLIP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinygen.diffusion.guidance import (
    classifier_free_guidance,
    classifier_grad,
    clip_log_score,
    score_grad,
)
from tinygen.diffusion.objective import diffusion_loss
from tinygen.diffusion.sampling import (
    SamplerConfig,
    ddim_step,
    img2img_timesteps,
    inference_timesteps,
    sample,
)
from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.errors import TinygenError
from tinygen.models.conditioning import LabelConditioner, drop_condition
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.nn.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(
    image_size=8,
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    head_channels=8,
    norm_groups=4,
)


def _jitter(module: torch.nn.Module, seed: int = 0) -> None:
    """Break the zero init so every input path changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


# -- classifier-free guidance over a dict condition -------------------------------------------


def test_cfg_with_a_dict_condition_equals_separate_forwards():
    """One batched forward over [cond; null] equals the two forwards it replaces, for a U-Net
    that reads every kind of condition (context with a mask, an embedding)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**TINY, context_dim=6, cond_emb_dim=5)).eval()
    _jitter(unet)

    def model(x, t, cond):
        return unet(
            x, t, context=cond["context"], context_mask=cond["context_mask"],
            cond_emb=cond["embedding"],
        )  # fmt: skip

    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 3, 8, 8, generator=g), torch.tensor([5, 500, 900])
    cond = {
        "context": torch.randn(3, 4, 6, generator=g),
        "context_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).bool(),
        "embedding": torch.randn(3, 5, generator=g),
    }
    null = {  # a batch-1 null condition: one learned "empty caption"
        "context": torch.randn(1, 4, 6, generator=g),
        "context_mask": torch.tensor([[1, 0, 0, 0]]).bool(),
        "embedding": torch.zeros(1, 5),
    }
    with torch.no_grad():
        out_cond = model(x, t, cond)
        out_uncond = model(x, t, {k: v.expand(3, *v.shape[1:]) for k, v in null.items()})
        for scale in (0.0, 1.0, 3.0):
            guided = classifier_free_guidance(model, cond, null, scale)(x, t)
            expected = out_uncond + scale * (out_cond - out_uncond)
            torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-5)


def test_cfg_refuses_a_null_condition_with_other_keys():
    cond = {"embedding": torch.zeros(2, 3), "context": torch.zeros(2, 1, 3)}
    with pytest.raises(TinygenError, match="keys"):
        classifier_free_guidance(lambda x, t, c: x, cond, {"embedding": torch.zeros(1, 3)}, 2.0)


def test_drop_condition_replaces_exactly_the_dropped_rows():
    cond = {"labels": torch.tensor([3, 4, 5]), "embedding": torch.ones(3, 2)}
    null = {"labels": torch.tensor([48]), "embedding": torch.zeros(1, 2)}
    out = drop_condition(cond, null, torch.tensor([False, True, False]))
    assert out["labels"].tolist() == [3, 48, 5]
    assert out["embedding"].tolist() == [[1, 1], [0, 0], [1, 1]]


def test_label_conditioner_rows_are_mixed_radix_digits_in_their_blocks():
    conditioner = LabelConditioner(48, label_factors=(8, 6))
    labels = torch.tensor([0, 17, 47, 48])  # 17 = colour 2, shape 5; 48 = the null label
    assert conditioner.rows(labels).tolist() == [[0, 8], [2, 13], [7, 13], [14, 14]]
    assert conditioner.num_rows == 8 + 6 + 1


# -- the additive conditioning vector ---------------------------------------------------------


def test_a_zero_cond_emb_projection_leaves_the_unet_unchanged():
    """With its projection at zero, a U-Net with a conditioning-vector input computes exactly
    what the same U-Net without that input computes, whatever the vector."""
    torch.manual_seed(0)
    plain = UNet(UNetConfig(**TINY)).eval()
    _jitter(plain)
    with_vector = UNet(UNetConfig(**TINY, cond_emb_dim=7)).eval()
    missing, unexpected = with_vector.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["encoder.cond_proj.bias", "encoder.cond_proj.weight"]
    assert not unexpected
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 700])
    vector = torch.randn(2, 7) * 10
    with torch.no_grad():
        assert torch.equal(with_vector(x, t, cond_emb=vector), plain(x, t))
        with_vector.encoder.cond_proj.weight.fill_(0.1)  # a trained projection does matter
        assert not torch.allclose(with_vector(x, t, cond_emb=vector), plain(x, t))


def test_the_conditioning_vector_is_checked_for_shape():
    unet = UNet(UNetConfig(**TINY, cond_emb_dim=7))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    with pytest.raises(TinygenError, match=r"cond_emb of shape \(2, 7\)"):
        unet(x, t, cond_emb=torch.zeros(2, 6))
    with pytest.raises(TinygenError, match="cond_emb_dim=0"):
        UNet(UNetConfig(**TINY))(x, t, cond_emb=torch.zeros(2, 7))


def test_a_diffusion_model_passes_condition_keys_to_the_unet():
    """An unconditional-by-label model still reads `embedding` and `context` from a Condition."""
    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(unet=UNetConfig(**TINY, cond_emb_dim=4))).eval()
    _jitter(model)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 30])
    e = torch.randn(2, 4)
    with torch.no_grad():
        direct = model.unet(x, t, cond_emb=e)
        assert torch.equal(model(x, t, {"embedding": e}), direct)


# -- one objective for images, latents and vectors --------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_diffusion_loss_on_vectors_equals_the_mse_to_its_target(prediction_type, gamma):
    """On (B, D) embeddings (unCLIP's prior), the loss is the per-sample mean squared error to
    the target written out from the definitions, times the min-SNR weight."""
    schedule = NoiseSchedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    t = torch.tensor([0, 10, 250, 500, 750, 999])
    weight = torch.randn(16, 16, generator=g) * 0.3

    def model_fn(x_t, t):
        return x_t @ weight + t[:, None] / 1000

    ab = schedule.alphas_cumprod[t][:, None].float()
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {
        "epsilon": noise,
        "sample": x0,
        "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0,
    }[prediction_type]
    per_sample = ((model_fn(x_t, t) - target) ** 2).mean(dim=1)
    if gamma:
        snr = ab[:, 0] / (1 - ab[:, 0])
        base = {"epsilon": snr, "sample": torch.ones_like(snr), "v_prediction": snr + 1}
        per_sample = per_sample * torch.minimum(snr, torch.tensor(gamma)) / base[prediction_type]
    loss = diffusion_loss(
        model_fn, schedule, x0, noise, t, prediction_type=prediction_type, min_snr_gamma=gamma
    )
    torch.testing.assert_close(loss, per_sample.mean(), atol=1e-5, rtol=1e-5)


def test_diffusion_loss_on_images_is_the_same_function_as_training_loss():
    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(unet=UNetConfig(**TINY), num_train_timesteps=100))
    _jitter(model)
    x0, noise, t = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8), torch.tensor([0, 50, 99])
    manual = diffusion_loss(
        lambda x, s: model(x, s), model.schedule, x0, noise, t, prediction_type="epsilon"
    )
    assert torch.equal(model.training_loss(x0, noise, t), manual)


# -- a chain that starts midway ---------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_img2img_timesteps_equal_diffusers_get_timesteps(spacing):
    """diffusers' StableDiffusionImg2ImgPipeline.get_timesteps on its own DDIM scheduler's
    timesteps, over steps x strength x spacing."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    for steps in (1, 7, 10, 50, 61):
        scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        scheduler.set_timesteps(steps)
        ours_all = inference_timesteps(steps, 1000, spacing)
        if len(scheduler.timesteps) != steps:  # diffusers' known trailing off-by-one
            continue
        assert torch.equal(ours_all, scheduler.timesteps)
        for strength in (0.0, 0.05, 0.3, 0.5, 0.75, 0.99, 1.0):
            pipe = SimpleNamespace(scheduler=scheduler)
            want, n_run = StableDiffusionImg2ImgPipeline.get_timesteps(pipe, steps, strength, "cpu")
            got, t_start = img2img_timesteps(ours_all, strength)
            assert torch.equal(got, want), (steps, strength)
            assert steps - t_start == n_run


def test_img2img_strength_outside_0_1_is_an_error():
    with pytest.raises(TinygenError, match="strength"):
        img2img_timesteps(torch.arange(10).flip(0), 1.5)


def _toy_model_fn(x, t):
    return 0.1 * x + 0.01 * t.view(-1, *([1] * (x.dim() - 1))) / 1000


def test_sample_at_strength_zero_returns_x_start():
    schedule = NoiseSchedule("linear", 1000)
    x_start = torch.rand(2, 3, 4, 4) * 2 - 1
    out = sample(
        _toy_model_fn, x_start.shape, schedule=schedule, num_inference_steps=20,
        x_start=x_start, strength=0.0, progress=False,
    )  # fmt: skip
    assert torch.equal(out, x_start)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_from_x_start_is_the_tail_of_the_loop_from_a_noised_input(sampler):
    """strength 0.4 of 20 steps: noise x_start to the 9th-from-last timestep with the given
    noise (q(x_t | x_0)), then the very same steps as a chain that started there."""
    schedule = NoiseSchedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x_start, noise = (
        torch.rand(2, 3, 4, 4, generator=g) * 2 - 1,
        torch.randn(2, 3, 4, 4, generator=g),
    )
    seen = []
    out = sample(
        _toy_model_fn, x_start.shape, schedule=schedule, sampler=sampler, num_inference_steps=20,
        x_T=noise, x_start=x_start, strength=0.4, progress=False, eta=0.0,
        callback=lambda i, t, x, x0: seen.append(t),
    )  # fmt: skip
    timesteps = inference_timesteps(20, 1000).tolist()
    assert seen == timesteps[12:]  # int(20 * 0.4) = 8 steps run
    if sampler == "ddim":  # deterministic: redo it by hand
        x = schedule.add_noise(x_start, noise, timesteps[12])
        for i, t in enumerate(timesteps[12:], start=12):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            tb = torch.full((2,), t)
            x, _ = ddim_step(schedule, _toy_model_fn(x, tb), tb, x, t_prev=t_prev)
        torch.testing.assert_close(out, x)


def test_generate_with_an_init_image_at_strength_zero_returns_it():
    torch.manual_seed(0)
    model = DiffusionModel(
        DiffusionConfig(unet=UNetConfig(**TINY), conditioning="class", num_classes=4)
    ).eval()
    init = torch.rand(2, 3, 8, 8) * 2 - 1
    out = model.generate(2, labels=torch.tensor([0, 3]), x_start=init, strength=0.0, steps=10)
    assert torch.equal(out, init)
    with pytest.raises(TinygenError, match="init image"):
        model.generate(2, labels=torch.tensor([0, 3]), x_start=torch.zeros(2, 3, 16, 16))


def test_sampler_config_validates_once():
    with pytest.raises(TinygenError, match="sampler"):
        SamplerConfig(sampler="euler")
    with pytest.raises(TinygenError, match="eta"):
        SamplerConfig(eta=2.0)
    with pytest.raises(TinygenError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(TinygenError, match="spacing"):
        SamplerConfig(spacing="middle")
    with pytest.raises(TinygenError, match="exceeds"):
        SamplerConfig(steps=2000).check_fits(1000)
    assert SamplerConfig(steps=50, eta=0.5, spacing="trailing").name == (
        "DDIM-50, eta 0.5, trailing spacing"
    )


# -- guidance from any score function ---------------------------------------------------------


def test_a_noised_clip_score_gradient_equals_autograd_of_the_dot_product():
    """GLIDE's CLIP guidance: grad_x (f(x_t, t) . g(c)) with f, g L2-normalised, against
    autograd of the same dot product written out per sample."""
    from tinygen.models.clip import CLIP, CLIPConfig

    torch.manual_seed(0)
    clip = CLIP(
        CLIPConfig(
            embed_dim=16, image_size=8, patch_size=4, vision_width=16, vision_layers=1,
            vision_heads=2, text_width=16, text_layers=1, text_heads=2, vocab_size=10,
            context_length=6, num_timesteps=1000,
        )
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(3, 3, 8, 8, generator=g), torch.tensor([0, 400, 999])
    text = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    grad = score_grad(clip_log_score(lambda x, s: clip.encode_image(x, s), text), x_t, t)
    for i in range(3):  # one sample at a time: no cross-sample terms can hide in the sum
        x = x_t[i : i + 1].clone().requires_grad_(True)
        dot = (clip.encode_image(x, t[i : i + 1]) * text[i : i + 1]).sum()
        (want,) = torch.autograd.grad(dot, x)
        torch.testing.assert_close(grad[i : i + 1], want, atol=1e-5, rtol=1e-4)
    assert grad.abs().sum() > 0


def test_classifier_guidance_is_score_guidance_with_the_log_softmax():
    weight = torch.randn(48, 5)

    def classifier(x, t):
        return torch.tanh(x) @ weight.T * (1 + t[:, None] / 10)  # (B, 48)

    x, t, y = torch.randn(4, 5), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 7, 47, 3])
    manual = x.clone().requires_grad_(True)
    chosen = F.log_softmax(classifier(manual, t), -1)[torch.arange(4), y].sum()
    (want,) = torch.autograd.grad(chosen, manual)
    torch.testing.assert_close(classifier_grad(classifier, x, t, y), want)
