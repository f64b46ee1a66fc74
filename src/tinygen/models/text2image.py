"""Text-to-image pipelines: a prompt in, pictures out, with every guidance of the project.

`TextToImage` is what `tinygen generate`, `tinygen eval text2image` and `tinygen inpaint`
drive; GLIDE (`GlidePipeline`, a text-conditional `DiffusionModel` with its caption
tokenizer) is the first, unCLIP and latent diffusion plug in beside it. A pipeline checks
its prompts against its vocabulary (an unknown word is an error that names it), encodes
them, and samples through the one loop with

- classifier-free guidance on the empty caption (`guidance`, Ho & Salimans 2022), and/or
- CLIP guidance (`clip`, a `ClipGuide` over a noised CLIP, at `clip_scale`): the score
  f(x_t, t) . g(c) steering the mean (DDPM) or the noise (DDIM) (GLIDE sec. 2.4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from tinygen.data.caption_tokenizer import split_words
from tinygen.diffusion import guidance as guidance_lib
from tinygen.diffusion.inpainting import check_mask, known_region_fn
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.models.diffusion import DiffusionModel


def check_vocabulary(prompts: list[str], words: list[str]) -> None:
    """Every word of every prompt must be in the vocabulary; one error names them all."""
    known = set(words)
    if not prompts:
        raise TinygenError("no prompt given; pass --prompt 'a large red circle on the left'")
    for prompt in prompts:
        if not split_words(prompt):
            raise TinygenError(f"prompt {prompt!r} is empty; describe a picture")
    unknown = sorted({w for p in prompts for w in split_words(p) if w not in known})
    if unknown:
        vocabulary = ", ".join(w for w in words if not w.startswith("<"))
        raise TinygenError(
            f"prompt words not in this model's caption vocabulary: {', '.join(unknown)}; "
            f"the vocabulary is: {vocabulary}"
        )


class ClipGuide:
    """A noised CLIP as a guide: its image tower reads x_t with t, its text tower the
    prompt; `log_score(prompts)` is the per-sample cosine similarity (a `LogScore`)."""

    def __init__(self, clip: nn.Module, tokenizer, noise: dict) -> None:
        self.clip, self.tokenizer, self.noise = clip.eval(), tokenizer, noise
        for p in self.clip.parameters():
            p.requires_grad_(False)

    def check_matches(self, model: DiffusionModel) -> None:
        mine = (model.config.beta_schedule, model.config.num_train_timesteps)
        theirs = (self.noise.get("beta_schedule"), self.noise.get("num_train_timesteps"))
        if mine != theirs:
            raise TinygenError(
                f"the noised CLIP was trained on schedule {theirs} but the diffusion model "
                f"uses {mine}; train it with `tinygen train clip --noised --schedule {mine[0]}`"
            )

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> Tensor:
        device = next(self.clip.parameters()).device
        return self.clip.encode_text(self.tokenizer.encode_batch(prompts).to(device))

    def cosine(self, prompts: list[str]) -> guidance_lib.LogScore:
        """f(x_t, t) . g(c) of unit-norm embeddings, per sample."""
        text = self.text_embeddings(prompts)
        return guidance_lib.clip_log_score(
            lambda x, t: self.clip.encode_image(x, t, normalize=False), text
        )

    def log_score(self, prompts: list[str]) -> guidance_lib.LogScore:
        """The guidance score: CLIP's logit, exp(logit_scale) * cosine -- as GLIDE's
        `cond_fn` (glide-text2im, clip/model_creation.py), so that a CLIP-guidance scale
        means what it means there (the gradient of a log-likelihood up to a constant)."""
        cosine = self.cosine(prompts)
        temperature = float(self.clip.logit_scale.exp())
        return lambda x, t: temperature * cosine(x, t)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        """CLIP's own clean-image (t = 0) cosine similarity of each image to its prompt."""
        device = next(self.clip.parameters()).device
        t = torch.zeros(images.shape[0], dtype=torch.long, device=device)
        return self.cosine(prompts)(images.to(device), t)


class TextToImage(Protocol):
    """What the text-to-image commands need of a pipeline."""

    image_size: int

    def check_prompts(self, prompts: list[str]) -> None: ...

    def generate(self, prompts: list[str], **options) -> Tensor: ...


class GlidePipeline:
    """GLIDE: a text-conditional DiffusionModel and its caption tokenizer."""

    def __init__(self, model: DiffusionModel, tokenizer) -> None:
        if model.config.conditioning != "text":
            raise TinygenError("a GLIDE pipeline needs a text-conditional diffusion model")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.image_size = model.config.unet.image_size

    def check_prompts(self, prompts: list[str]) -> None:
        check_vocabulary(prompts, self.tokenizer.words)

    def tokens(self, prompts: list[str]) -> Tensor:
        self.check_prompts(prompts)
        return self.tokenizer.encode_batch(prompts)

    def _guide(self, prompts: list[str], clip: ClipGuide | None, clip_scale: float) -> dict:
        if clip is None or clip_scale == 0:
            return {}
        clip.check_matches(self.model)
        return {"log_score": clip.log_score(prompts), "score_scale": clip_scale}

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        *,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        clip: ClipGuide | None = None,
        clip_scale: float = 0.0,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """One image (N, 3, H, W) in [-1, 1] per prompt."""
        if self.model.config.inpainting:
            raise TinygenError("this is an inpainting model; use `tinygen inpaint`")
        cond = {"tokens": self.tokens(prompts)}
        return self.model.denoise(
            len(prompts),
            cond=cond,
            guidance=guidance,
            sampler=sampler,
            generator=generator,
            callback=callback,
            progress=progress,
            **self._guide(prompts, clip, clip_scale),
        ).clamp(-1, 1)

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
        """Repaint `images` (N, 3, H, W) in [-1, 1] where `masks` (N, 1, H, W) is 1, following
        `prompts`; elsewhere the result equals the input exactly. An inpainting model also
        sees the masked image and the mask; any other text model is inpainted by the
        known-region replacement alone."""
        check_mask(masks, images)
        cond = {"tokens": self.tokens(prompts)}
        if self.model.config.inpainting:
            cond.update(masked_image=images * (1 - masks), mask=masks)
        replace = known_region_fn(images, masks, self.model.schedule, generator)
        out = self.model.denoise(
            len(prompts),
            cond=cond,
            guidance=guidance,
            sampler=sampler,
            generator=generator,
            post_step_fn=replace,
            progress=progress,
        )
        return torch.where(masks.bool(), out.clamp(-1, 1), images.to(out))
