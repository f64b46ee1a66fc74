"""The text-to-image pipeline of a latent-diffusion run: prompts in, pictures out.

`LatentDiffusionPipeline` satisfies `tinygen.models.text2image.TextToImage` (what `tinygen
generate` and `tinygen eval text2image` drive) and also does image-to-image and inpainting by
latent blending (`tinygen img2img`, `tinygen inpaint`, `tinygen eval img2img` / `inpainting`):
it checks the prompts against the run's caption vocabulary, tokenizes them and hands the
tokens to `LatentDiffusion`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.models.latent_diffusion import LatentDiffusion
from tinygen.models.text2image import check_vocabulary


class LatentDiffusionPipeline:
    """A `LatentDiffusion` model and its caption tokenizer."""

    def __init__(self, model: LatentDiffusion, tokenizer) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.image_size = model.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.denoiser.parameters()).device

    def check_prompts(self, prompts: list[str]) -> None:
        check_vocabulary(prompts, self.tokenizer.words)

    def tokens(self, prompts: list[str]) -> Tensor:
        self.check_prompts(prompts)
        return self.tokenizer.encode_batch(prompts).to(self.device)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        *,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        clip=None,
        clip_scale: float = 0.0,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """One image (N, 3, H, W) in [-1, 1] per prompt, classifier-free guided."""
        if clip is not None and clip_scale:
            raise TinygenError(
                "CLIP guidance reads noisy pixels; a latent-diffusion run samples latents. "
                "Drop --clip (classifier-free guidance is what this model uses)"
            )
        return self.model.generate(
            self.tokens(prompts), guidance=guidance, sampler=sampler, generator=generator,
            callback=callback, progress=progress,
        )  # fmt: skip

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
        """Redraw `images` (N, 3, H, W) in [-1, 1] toward the prompts (SDEdit at `strength`)."""
        return self.model.img2img(
            images.to(self.device), self.tokens(prompts), strength=strength, guidance=guidance,
            sampler=sampler, generator=generator, callback=callback, progress=progress,
        )  # fmt: skip

    @torch.no_grad()
    def inpaint(
        self,
        images: Tensor,
        masks: Tensor,
        prompts: list[str],
        *,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Repaint `images` where `masks` (N, 1, H, W) is 1, by latent blending: outside the
        mask the result is the autoencoder's reconstruction of the input, not its exact
        pixels (see `LatentDiffusion.inpaint`)."""
        return self.model.inpaint(
            images.to(self.device), masks.to(self.device), self.tokens(prompts),
            guidance=guidance, sampler=sampler, generator=generator, progress=progress,
        )  # fmt: skip
