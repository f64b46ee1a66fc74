"""Image-to-image on our own runs against diffusers' StableDiffusionImg2ImgPipeline: the same
timesteps and the same noised start over steps x strength (latent and pixel models), strength
0 returns the (encoded-decoded) input, bad strengths, prompts and image sizes are clear errors,
and the commands run end to end."""

from __future__ import annotations

import dataclasses
import warnings
from types import SimpleNamespace

import pytest
import torch

from tinygen.data.caption_tokenizer import CaptionTokenizer
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.models.autoencoder import Autoencoder, AutoencoderConfig
from tinygen.models.conditioning import TextConditionerConfig
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.models.img2img import PixelImg2Img
from tinygen.models.latent_diffusion import (
    LatentDiffusion,
    LatentDiffusionConfig,
    LatentDiffusionModel,
    latent_unet_config,
)
from tinygen.models.latent_pipeline import LatentDiffusionPipeline
from tinygen.models.text2image import GlidePipeline
from tinygen.nn.unet import UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = UNetConfig(
    image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(4,), head_channels=8, norm_groups=4,
)  # fmt: skip
TOKENIZER = CaptionTokenizer.from_captions(["a red blue circle square star small large"])
TEXT = TextConditionerConfig(
    vocab_size=TOKENIZER.vocab_size, context_length=TOKENIZER.context_length, width=16, layers=1,
    heads=2,
)  # fmt: skip
SCALE = 0.7


def _jitter(module: torch.nn.Module) -> None:
    """Break the zero inits so that the network's output depends on its input."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _latent_pipeline() -> LatentDiffusionPipeline:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(base_channels=8, channel_mult=(1, 2, 2), norm_groups=4))
    unet = latent_unet_config(UNET, latent_size=8, latent_channels=3)
    config = LatentDiffusionConfig(
        diffusion=DiffusionConfig(unet=unet, conditioning="text", text=TEXT),
        image_size=32, downsample_factor=4, latent_channels=3, scale_factor=SCALE,
    )  # fmt: skip
    denoiser = LatentDiffusionModel(config)
    _jitter(denoiser)
    return LatentDiffusionPipeline(LatentDiffusion(ae, denoiser, SCALE), TOKENIZER)


def _glide() -> PixelImg2Img:
    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(unet=UNET, conditioning="text", text=TEXT))
    _jitter(model)
    return PixelImg2Img.glide(GlidePipeline(model, TOKENIZER))


def _images(n: int, size: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _diffusers(steps: int, strength: float, images, vae=None, generator=None):
    """diffusers' img2img: (timesteps it runs, its noised start), from a DDIM scheduler built
    from a config (DDPM's linear betas, no clipping: Stable Diffusion's settings)."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
    )  # fmt: skip
    scheduler.set_timesteps(steps)
    pipe = SimpleNamespace(scheduler=scheduler, vae=vae)
    timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(pipe, steps, strength, "cpu")
    if vae is None:  # a pixel model: the image itself is x_0
        noise = torch.randn(images.shape, generator=generator)
        start = scheduler.add_noise(images, noise, timesteps[:1].repeat(images.shape[0]))
    else:
        start = StableDiffusionImg2ImgPipeline.prepare_latents(
            pipe, images, timesteps[:1].repeat(images.shape[0]), images.shape[0], 1,
            torch.float32, "cpu", generator=generator,
        )  # fmt: skip
    return timesteps.tolist(), start


# the pairs that leave at least one step (the others: tested below, diffusers raises on them)
STEPS_X_STRENGTH = [
    (s, k) for s in (1, 7, 10, 50) for k in (0.3, 0.58, 0.75, 1.0) if int(s * k) > 0
]


@pytest.mark.parametrize("steps,strength", STEPS_X_STRENGTH)
def test_latent_img2img_runs_diffusers_timesteps_from_diffusers_noised_start(steps, strength):
    pipeline = _latent_pipeline()
    ldm = pipeline.model
    vae = SimpleNamespace(
        encode=lambda x: SimpleNamespace(latent_dist=ldm.first_stage.encode(x)),
        config=SimpleNamespace(scaling_factor=SCALE),
    )
    images = _images(2, 32)
    want_t, want_start = _diffusers(steps, strength, images, vae, torch.Generator().manual_seed(4))
    seen = []
    ldm.decode = lambda z: z  # the callback sees latents
    try:
        pipeline.img2img(
            images, ["a red circle", "a blue star"], strength=strength,
            sampler=SamplerConfig(steps=steps), generator=torch.Generator().manual_seed(4),
            callback=lambda i, t, x, x0: seen.append((t, x)),
        )  # fmt: skip
    finally:
        del ldm.decode
    assert [t for t, _ in seen] == want_t
    assert len(want_t) == min(int(steps * strength), steps)  # int(50 * 0.58) = 28
    torch.testing.assert_close(seen[0][1], want_start[:1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("steps,strength", STEPS_X_STRENGTH)
def test_pixel_img2img_runs_diffusers_timesteps_from_diffusers_noised_start(steps, strength):
    model = _glide()
    images = _images(2, 8)
    want_t, want_start = _diffusers(
        steps, strength, images, generator=torch.Generator().manual_seed(4)
    )
    seen = []
    model.img2img(
        images, ["a red circle", "a blue star"], strength=strength,
        sampler=SamplerConfig(steps=steps), generator=torch.Generator().manual_seed(4),
        callback=lambda i, t, x, x0: seen.append((t, x)),
    )  # fmt: skip
    assert [t for t, _ in seen] == want_t
    torch.testing.assert_close(seen[0][1], want_start, atol=1e-6, rtol=1e-5)


def test_strength_zero_returns_the_encoded_decoded_input_with_a_warning():
    pipeline = _latent_pipeline()
    images = _images(2, 32)
    want = pipeline.model.decode(pipeline.model.encode(images, torch.Generator().manual_seed(2)))
    for strength, steps in ((0.0, 50), (0.05, 10)):  # int(10 * 0.05) = 0 steps too
        with pytest.warns(UserWarning, match="no denoising step"):
            out = pipeline.img2img(
                images, ["a red circle"] * 2, strength=strength,
                sampler=SamplerConfig(steps=steps), generator=torch.Generator().manual_seed(2),
            )  # fmt: skip
        assert torch.equal(out, want)
    pixel = _glide()
    with pytest.warns(UserWarning, match="no denoising step"):
        out = pixel.img2img(_images(2, 8), ["a red circle"] * 2, strength=0.0)
    assert torch.equal(out, _images(2, 8))


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_0_1_is_a_clear_error(strength):
    for model, size in ((_latent_pipeline(), 32), (_glide(), 8)):
        with pytest.raises(TinygenError, match=r"strength must be in \[0, 1\]"):
            model.img2img(_images(1, size), ["a red circle"], strength=strength)


def test_a_class_conditional_run_reads_its_class_from_the_prompt():
    torch.manual_seed(0)
    config = DiffusionConfig(unet=UNET, conditioning="class", num_classes=48, label_factors=(8, 6))
    model = DiffusionModel(config)
    _jitter(model)
    img2img = PixelImg2Img.shapes_classes(model)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    images = _images(1, 8)
    out = img2img.img2img(images, ["a large blue star"], strength=0.5, generator=gen())
    # the same as asking the model for the class of (blue, star) directly
    from tinygen.data.shapes import combo_index

    label = torch.tensor([combo_index("blue", "star")])
    noise = torch.randn(images.shape, generator=(g := gen()))
    want = model.denoise(1, cond={"labels": label}, guidance=3.0, x_start=images, strength=0.5,
                         x_T=noise, generator=g).clamp(-1, 1)  # fmt: skip
    torch.testing.assert_close(out, want)
    with pytest.raises(TinygenError, match="must name a colour and a shape"):
        img2img.img2img(images, ["a large star"])
    with pytest.raises(TinygenError, match="unconditional"):
        PixelImg2Img.shapes_classes(DiffusionModel(DiffusionConfig(unet=UNET)))


def test_an_image_file_of_another_size_is_resized_with_a_warning(tmp_path):
    from PIL import Image

    from tinygen.recipes.img2img import load_image_for

    path = tmp_path / "small.png"
    Image.new("RGB", (20, 12), (255, 0, 0)).save(path)
    model = _latent_pipeline()
    with pytest.warns(UserWarning, match="resized to 32x32"):
        image = load_image_for(model, path)
    assert image.shape == (1, 3, 32, 32)
    torch.testing.assert_close(image[0, 0], torch.ones(32, 32))  # red stays red
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Image.new("RGB", (32, 32)).save(tmp_path / "right.png")
        assert load_image_for(model, tmp_path / "right.png").shape == (1, 3, 32, 32)
    with pytest.raises(TinygenError, match="resize them to 32 px"):  # a tensor is refused
        model.img2img(_images(1, 16), ["a red circle"])


# -- the commands --------------------------------------------------------------------------


def test_img2img_and_eval_img2img_commands_on_tiny_runs(tmp_path, monkeypatch):
    from ldm_runs import autoencoder_run, ldm_run
    from tinygen.cli.main import main
    from tinygen.data.image_folder import save_image_grid
    from tinygen.data.shapes import generate_shapes
    from tinygen.models.shapes_evaluator import EvaluatorConfig
    from tinygen.recipes import glide as glide_recipes
    from tinygen.recipes.evaluator import train_evaluator
    from tinygen.train.config import TrainConfig

    run = ldm_run(tmp_path, autoencoder_run(tmp_path))
    preset = glide_recipes.PRESETS["tiny"]
    train = dataclasses.replace(preset.train, max_iters=4, eval_interval=4)
    glide_recipes.train_glide(preset.model, train, preset.extras["data"], tmp_path / "glide",
                              progress=False)  # fmt: skip
    judge = TrainConfig(max_iters=2, batch_size=8, eval_interval=2, eval_iters=1, warmup_iters=1)
    train_evaluator(EvaluatorConfig(width=8), judge, tmp_path / "judge", progress=False)
    monkeypatch.setenv("TINYGEN_EVALUATOR", str(tmp_path / "judge"))
    image = tmp_path / "in.png"
    save_image_grid(generate_shapes(1, split="test", image_size=32).images, image, padding=0)
    for model_run in (run, tmp_path / "glide"):  # 32 px latent, 16 px pixel (resized)
        out = tmp_path / f"{model_run.name}.png"
        assert main(["img2img", "--run", str(model_run), "--image", str(image), "--prompt",
                     "a blue circle", "--strength", "0.6", "--steps", "4", "--out", str(out),
                     "--no-progress"]) == 0  # fmt: skip
        assert out.is_file()
    report = tmp_path / "report"
    assert main(["eval", "img2img", "--run", str(run), "--strengths", "0,1", "--n", "4",
                 "--steps", "2", "--out", str(report)]) == 0  # fmt: skip
    for name in ("eval.json", "eval.md", "img2img_tradeoff.png", "examples.png"):
        assert (report / name).is_file(), name
    assert "| 0 | 4 |" in (report / "eval.md").read_text()
    assert main(["img2img", "--run", str(run), "--image", str(image), "--prompt",
                 "a blue circle", "--strength", "1.5"]) == 2  # fmt: skip
