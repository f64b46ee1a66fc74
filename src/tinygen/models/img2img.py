"""Image-to-image (SDEdit, Meng et al. 2021) on every prompt-conditioned run of the project.

The recipe is diffusers' `StableDiffusionImg2ImgPipeline`, step for step, through the one
sample loop (`DiffusionModel.denoise(x_start=, strength=)`):

1. the timesteps: the sampler's N timesteps, of which the last `min(int(N * strength), N)`
   run (`tinygen.diffusion.sampling.img2img_timesteps`, diffusers' `get_timesteps`);
2. the start: the input (a latent model: its encoding, a posterior draw) noised to the first
   of them, x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, eps drawn from the generator after
   the encoding (diffusers' `prepare_latents`, same order of random numbers);
3. the denoising loop from there, with classifier-free guidance; decode (latents).

strength 0 leaves no step: the input comes back (encoded and decoded for a latent model)
with a warning, where diffusers raises. strength 1 starts from (almost) pure noise.

`Img2Img` is what `tinygen img2img --run` and `tinygen eval img2img` need: latent diffusion
(`LatentDiffusionPipeline`), GLIDE (`PixelImg2Img.glide`) and the class-conditional pixel
diffusion of the shapes world (`PixelImg2Img.shapes_classes`: the prompt names the class,
read by `tinygen.data.shapes.labels_for_prompts`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from tinygen.data.shapes_prompts import NUM_COMBOS, labels_for_prompts
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.models.conditioning import Condition
from tinygen.models.diffusion import DiffusionModel
from tinygen.models.latent_diffusion import check_strength, draw_like
from tinygen.models.text2image import GlidePipeline


class Img2Img(Protocol):
    """What the image-to-image commands need of a model."""

    image_size: int

    def check_prompts(self, prompts: list[str]) -> None: ...

    def img2img(self, images: Tensor, prompts: list[str], **options) -> Tensor: ...


class PixelImg2Img:
    """SDEdit on a pixel-space DiffusionModel; `condition(prompts)` makes its Condition."""

    def __init__(
        self,
        model: DiffusionModel,
        condition: Callable[[list[str]], Condition],
        check_prompts: Callable[[list[str]], None],
    ) -> None:
        self.model = model.eval()
        self.condition, self._check = condition, check_prompts
        self.image_size = model.config.unet.image_size

    @classmethod
    def glide(cls, pipeline: GlidePipeline) -> PixelImg2Img:
        if pipeline.model.config.inpainting:
            raise TinygenError(
                "this is a GLIDE inpainting model (it needs a mask); use `tinygen inpaint`, or "
                "img2img with a GLIDE run trained without --inpainting"
            )
        return cls(pipeline.model, lambda p: {"tokens": pipeline.tokens(p)}, pipeline.check_prompts)

    @classmethod
    def shapes_classes(cls, model: DiffusionModel) -> PixelImg2Img:
        """A class-conditional model of the shapes world's 48 (colour, shape) classes."""
        if not model.config.class_conditional:
            raise TinygenError(
                "this diffusion run is unconditional, so a prompt cannot steer it; img2img "
                "needs a class-conditional run (`tinygen train diffusion --cond class`), a "
                "GLIDE run or a latent-diffusion run"
            )
        if model.config.num_classes != NUM_COMBOS:
            raise TinygenError(
                f"this class-conditional run has {model.config.num_classes} classes, not the "
                f"shapes world's {NUM_COMBOS} (colour, shape) pairs, so a prompt cannot name "
                "its class; train it with --data shapes"
            )
        return cls(model, lambda p: {"labels": labels_for_prompts(p)}, labels_for_prompts)

    def check_prompts(self, prompts: list[str]) -> None:
        self._check(prompts)

    @torch.no_grad()
    def img2img(
        self,
        images: Tensor,
        prompts: list[str],
        *,
        strength: float = 0.6,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Redraw `images` (N, 3, H, W) in [-1, 1] toward the prompts; returns [-1, 1]."""
        size = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise TinygenError(
                f"this model draws (B, 3, {size}, {size}) images, got {tuple(images.shape)}; "
                f"resize them to {size} px"
            )
        if len(prompts) != images.shape[0]:
            raise TinygenError(f"{len(prompts)} prompts for {images.shape[0]} images; one each")
        sampler = sampler or SamplerConfig()
        check_strength(strength, sampler, self.model.config.num_train_timesteps)
        device = next(self.model.parameters()).device
        cond = {k: v.to(device) for k, v in self.condition(prompts).items()}
        x_start = images.to(device).float()
        noise = draw_like(x_start, generator)
        out = self.model.denoise(
            len(prompts), cond=cond, guidance=guidance, sampler=sampler, generator=generator,
            x_start=x_start, strength=strength, x_T=noise, callback=callback, progress=progress,
        )  # fmt: skip
        return out.clamp(-1, 1)
