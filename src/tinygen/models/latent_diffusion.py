"""Latent diffusion (Rombach et al. 2022, "High-resolution image synthesis with latent
diffusion models"): the one `DiffusionModel`, run on the latents of a frozen autoencoder.

A first stage (`tinygen.models.autoencoder`, KL or VQ, trained on its own) compresses an
image (B, 3, H, W) by a factor f per side into latents (B, c, H/f, W/f); the diffusion model
learns p(z) of the *scaled* latents `scale_factor * z` (sec. 4.3.2: scale_factor = 1 / std
of the training latents, measured by the autoencoder's run -- Stable Diffusion's 0.18215 was
found the same way), so the noise schedule meets unit-variance data. Every denoising step
then works on H/f x W/f instead of H x W: the paper's central claim is the speed this buys.

Text reaches the U-Net by cross-attention in Stable Diffusion's Transformer block
(`UNetConfig(attention_type="transformer")`, `tinygen.nn.spatial_transformer`), from one of
two text encoders:

- `joint`: a text Transformer trained with the U-Net (LDM's choice, sec. 4.3.1): GLIDE's
  `TextConditioner`, i.e. `DiffusionConfig(conditioning="text")`. Its pooled feature also
  joins the time embedding (GLIDE's second path; the shapes recipe pools by the mean).
- `clip`: the frozen text tower of a CLIP run (Stable Diffusion's choice): its token
  sequence after the final LayerNorm, padding masked, is the context; its pooled `<eot>`
  feature joins the time embedding (SDXL's addition; zero-initialised, so it starts off).
  `ClipTextConditioner` holds the tower and is a conditioner like any other.

Classifier-free guidance (Ho & Salimans 2022) uses the empty caption as the null condition,
dropped `drop_prob` = 10% of the time in training, as the paper.

The trained part, `LatentDiffusionModel`, is a `DiffusionModel` (so training, sampling,
guidance and img2img are exactly the project's one loop) whose weights are the run's
model.safetensors; `LatentDiffusion` composes it with the first stage and does the pixel
<-> latent work: encode, decode, text-to-image, image-to-image (SDEdit) and inpainting by
latent blending.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.data.caption_tokenizer import EOT_ID, SOT_ID
from tinygen.diffusion.inpainting import check_mask, known_region_fn
from tinygen.diffusion.sampling import SamplerConfig, img2img_timesteps, inference_timesteps
from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.models.clip import TextTransformer
from tinygen.models.clip_config import CLIPConfig
from tinygen.models.conditioning import Condition
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel

TEXT_ENCODERS = ("joint", "clip")


@dataclass
class LatentDiffusionConfig:
    """The denoiser on latents and what it must know of its first stage and text encoder.

    `diffusion.unet` works at the *latent* size (image_size / downsample_factor) with
    `latent_channels` in and out channels; `clip_text` is the CLIP run's model config (a
    `CLIPConfig` as a dict) whose text tower is the frozen encoder, empty for `joint`."""

    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    text_encoder: str = field(
        default="joint",
        metadata={"help": "joint (trained with the U-Net, LDM) | clip (frozen, SD)",
                  "choices": TEXT_ENCODERS},
    )  # fmt: skip
    clip_text: dict = field(default_factory=dict)
    drop_prob: float = field(
        default=0.1,
        metadata={"help": "chance of the empty caption in training (CFG)", "min": 0, "below": 1},
    )
    image_size: int = field(default=64, metadata={"help": "image size (pixels)", "min": 1})
    downsample_factor: int = field(
        default=4, metadata={"help": "the autoencoder's factor f", "min": 1}
    )
    latent_channels: int = field(default=3, metadata={"help": "latent channels c", "min": 1})
    scale_factor: float = field(
        default=1.0, metadata={"help": "latents are multiplied by this (1 / std)", "above": 0}
    )

    def __post_init__(self) -> None:
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor

    def validate(self) -> None:
        check_fields(self)
        if self.image_size % self.downsample_factor:
            raise TinygenError(
                f"image size {self.image_size} is not divisible by the autoencoder's factor "
                f"{self.downsample_factor}"
            )
        unet = self.diffusion.unet
        want = (self.latent_size, self.latent_channels, self.latent_channels)
        if (unet.image_size, unet.in_channels, unet.out_channels) != want:
            raise TinygenError(
                f"the U-Net takes {unet.in_channels} x {unet.image_size} px and predicts "
                f"{unet.out_channels} channels, but the latents are {self.latent_channels} x "
                f"{self.latent_size} px; build it with `latent_unet_config`"
            )
        if self.text_encoder == "clip" and not self.clip_text:
            raise TinygenError("text_encoder=clip needs the CLIP text tower's config (clip_text)")
        if self.text_encoder == "joint" and self.diffusion.conditioning != "text":
            raise TinygenError("text_encoder=joint needs DiffusionConfig(conditioning='text')")

    def denoiser_config(self) -> DiffusionConfig:
        """The DiffusionConfig of the denoiser: the joint text encoder's drop rate set to
        ours; with CLIP no conditioner of its own, the U-Net sized for CLIP's width."""
        d = self.diffusion
        if self.text_encoder == "joint":
            return dataclasses.replace(
                d, text=dataclasses.replace(d.text, drop_prob=self.drop_prob)
            )
        width = int(self.clip_text["text_width"])
        unet = dataclasses.replace(d.unet, context_dim=width, cond_emb_dim=width)
        return dataclasses.replace(d, conditioning="none", unet=unet)


class ClipTextConditioner(nn.Module):
    """A frozen CLIP text tower as a conditioner: caption tokens (B, T) -> its token features
    as cross-attention context (padding masked: `tokens != 0`) and its pooled `<eot>` feature
    as `cond_emb`. The null condition is the empty caption's tokens (`<sot> <eot>`, kept in
    the buffer `null_tokens`), as Stable Diffusion encodes the empty prompt."""

    def __init__(self, clip_text: dict, drop_prob: float) -> None:
        super().__init__()
        tower = TextTransformer.from_config(CLIPConfig(**clip_text))
        self.text = tower.eval().requires_grad_(False)
        self.drop_prob = drop_prob
        null = torch.zeros(1, self.text.context_length, dtype=torch.long)
        null[0, :2] = torch.tensor([SOT_ID, EOT_ID])  # the empty caption, encoded
        self.register_buffer("null_tokens", null)

    def train(self, mode: bool = True) -> ClipTextConditioner:
        super().train(mode)
        self.text.eval()  # frozen: never in training mode (no dropout)
        return self

    def null_condition(self, batch_size: int, device: torch.device | str = "cpu") -> Condition:
        return {"tokens": self.null_tokens.to(device).expand(batch_size, -1)}

    def unet_inputs(self, cond: Condition) -> dict[str, Tensor]:
        if "tokens" not in cond:
            raise TinygenError("this model is text-conditional; the condition needs tokens")
        tokens = cond["tokens"]
        with torch.no_grad():
            pooled, sequence = self.text(tokens, return_tokens=True)
        return {"cond_emb": pooled, "context": sequence, "context_mask": tokens != 0}


class LatentDiffusionModel(DiffusionModel):
    """The trained part of a latent-diffusion run: a `DiffusionModel` on scaled latents with
    its text encoder (the joint one, or the frozen CLIP tower as its conditioner)."""

    def __init__(self, config: LatentDiffusionConfig) -> None:
        config.validate()
        super().__init__(config.denoiser_config())
        self.latent_config = config
        if config.text_encoder == "clip":
            self.conditioner = ClipTextConditioner(config.clip_text, config.drop_prob)


LATENT_ATTENTIONS = ("transformer", "concat_kv")


def latent_unet_config(
    unet, *, latent_size: int, latent_channels: int, attention: str = "transformer"
):
    """A pixel U-Net config moved to the latents: their size and channels, and how it attends
    to the caption -- Stable Diffusion's transformer block cross-attending to the tokens
    (`transformer`, the default) or GLIDE's attention block with the caption's keys and
    values concatenated to its own (`concat_kv`, the comparison of docs/benchmarks.md)."""
    if attention not in LATENT_ATTENTIONS:
        raise TinygenError(
            f"unknown attention {attention!r}; choose {' or '.join(LATENT_ATTENTIONS)}"
        )
    transformer = attention == "transformer"
    return dataclasses.replace(
        unet,
        image_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        attention_type="transformer" if transformer else "adm",
        context_mode="cross_attention" if transformer else "concat_kv",
    )


# -- the first stage, whatever its kind ---------------------------------------------------


def first_stage_factor(autoencoder: nn.Module) -> int:
    factor = getattr(autoencoder, "downsample_factor", None)
    return int(factor if factor is not None else autoencoder.config.downsample_factor)


def first_stage_channels(autoencoder: nn.Module) -> int:
    channels = getattr(autoencoder, "latent_channels", None)
    return int(channels if channels is not None else autoencoder.config.latent_channels)


def encode_unscaled(
    autoencoder: nn.Module, images: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Images -> unscaled latents: `encode_latents` (KL: a draw from the posterior, as LDM
    trains and diffusers' img2img encodes; VQ: the encoder's output), or the posterior of an
    autoencoder with `encode` alone."""
    if hasattr(autoencoder, "encode_latents"):
        return autoencoder.encode_latents(images, generator=generator)
    return autoencoder.encode(images).sample(generator)


def decode_unscaled(autoencoder: nn.Module, z: Tensor) -> Tensor:
    if hasattr(autoencoder, "decode_latents"):
        return autoencoder.decode_latents(z)
    return autoencoder.decode(z)


def latent_mask(mask: Tensor, factor: int) -> Tensor:
    """A pixel mask (B, 1, H, W) -> the latent mask (B, 1, H/f, W/f): a latent cell is
    repainted when any of its f x f pixels is, so no part of the old object stays in the
    kept latents (a max-pool; diffusers' legacy pipeline resizes by nearest neighbour)."""
    return F.max_pool2d(mask.float(), factor)


class LatentDiffusion(nn.Module):
    """A frozen first stage + the denoiser on its scaled latents: images in, images out.

    Every method takes and returns images (B, 3, H, W) in [-1, 1]; tokens are the caption
    token ids of the run's tokenizer (B, T)."""

    def __init__(
        self, first_stage: nn.Module, denoiser: LatentDiffusionModel, scale_factor: float
    ) -> None:
        super().__init__()
        config = denoiser.latent_config
        if first_stage_factor(first_stage) != config.downsample_factor or (
            first_stage_channels(first_stage) != config.latent_channels
        ):
            raise TinygenError(
                f"the autoencoder (f = {first_stage_factor(first_stage)}, "
                f"{first_stage_channels(first_stage)} channels) is not the one this denoiser "
                f"was trained on (f = {config.downsample_factor}, {config.latent_channels})"
            )
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.denoiser = denoiser.eval()
        self.scale_factor = float(scale_factor)
        self.image_size = config.image_size

    @property
    def schedule(self):
        return self.denoiser.schedule

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.first_stage.eval()
        return self

    def check_images(self, images: Tensor, tokens: Tensor | None = None) -> None:
        size = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise TinygenError(
                f"this latent-diffusion model works on (B, 3, {size}, {size}) images, got "
                f"{tuple(images.shape)}; resize them to {size} px"
            )
        if tokens is not None and tokens.shape[0] != images.shape[0]:
            raise TinygenError(f"{tokens.shape[0]} prompts for {images.shape[0]} images; one each")

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images -> scaled latents (B, c, H/f, W/f), what the denoiser sees."""
        self.check_images(images)
        device = next(self.first_stage.parameters()).device
        z = encode_unscaled(self.first_stage, images.to(device), generator)
        return z.float() * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images in [-1, 1]."""
        return decode_unscaled(self.first_stage, latents / self.scale_factor).clamp(-1, 1)

    def _sampler(self, sampler: SamplerConfig | None) -> SamplerConfig:
        """Latents are not in [-1, 1]: no clipping or thresholding of the predicted x_0
        (Stable Diffusion's scheduler: clip_sample=False)."""
        sampler = sampler or SamplerConfig()
        return dataclasses.replace(sampler, clip_sample=False, thresholding=False)

    def _callback(self, callback: Callable | None) -> Callable | None:
        """The caller's callback sees the first sample decoded to pixels (denoising strips)."""
        if callback is None:
            return None

        def decoded(index: int, t: int, x_t: Tensor, pred_x0: Tensor) -> None:
            callback(index, t, self.decode(x_t[:1]), self.decode(pred_x0[:1]))

        return decoded

    @torch.no_grad()
    def generate(
        self,
        tokens: Tensor,
        *,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """One image per caption (B, T): denoise latents from pure noise, decode."""
        latents = self.denoiser.denoise(
            tokens.shape[0],
            cond={"tokens": tokens},
            guidance=guidance,
            sampler=self._sampler(sampler),
            generator=generator,
            callback=self._callback(callback),
            progress=progress,
        )
        return self.decode(latents)

    @torch.no_grad()
    def img2img(
        self,
        images: Tensor,
        tokens: Tensor,
        *,
        strength: float = 0.6,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """SDEdit (Meng et al. 2021) with diffusers' `StableDiffusionImg2ImgPipeline`
        semantics: encode (a posterior draw from `generator`), draw the noise (next from
        the same generator), noise the latents to the first of the last
        `min(int(steps * strength), steps)` timesteps, denoise from there, decode.
        A strength that leaves no step returns the input encoded and decoded, with a
        warning (diffusers raises instead)."""
        self.check_images(images, tokens)
        sampler = self._sampler(sampler)
        check_strength(strength, sampler, self.denoiser.config.num_train_timesteps)
        x_start = self.encode(images, generator)
        noise = draw_like(x_start, generator)
        latents = self.denoiser.denoise(
            images.shape[0], cond={"tokens": tokens}, guidance=guidance, sampler=sampler,
            generator=generator, x_start=x_start, strength=strength, x_T=noise,
            callback=self._callback(callback), progress=progress,
        )  # fmt: skip
        return self.decode(latents)

    @torch.no_grad()
    def inpaint(
        self,
        images: Tensor,
        masks: Tensor,
        tokens: Tensor,
        *,
        guidance: float = 3.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Inpainting by latent blending: after every step the kept latents (where the
        downsampled mask is 0) are replaced by the input's encoding noised to that step's
        level (`diffusion.inpainting.known_region_fn`), so only the masked latents are
        generated. The model never sees the mask; the decoder draws the whole image, so
        outside the mask the result is the autoencoder's reconstruction, not the input's
        exact pixels (a trained inpainting model, GLIDE's `--inpainting`, sees the masked
        image and the mask and keeps the known pixels exactly)."""
        self.check_images(images, tokens)
        check_mask(masks, images)
        z0 = self.encode(images, generator)
        replace = known_region_fn(
            z0, latent_mask(masks, self.denoiser.latent_config.downsample_factor).to(z0),
            self.schedule, generator,
        )  # fmt: skip
        latents = self.denoiser.denoise(
            images.shape[0], cond={"tokens": tokens}, guidance=guidance,
            sampler=self._sampler(sampler), generator=generator, post_step_fn=replace,
            progress=progress,
        )  # fmt: skip
        return self.decode(latents)


def draw_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise like x, drawn on the generator's device (diffusers' randn_tensor)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def check_strength(strength: float, sampler: SamplerConfig, num_train_timesteps: int) -> int:
    """The number of steps img2img runs at `strength`; warns when that is none."""
    timesteps = inference_timesteps(sampler.steps, num_train_timesteps, sampler.spacing)
    tail, _ = img2img_timesteps(timesteps, strength)  # (refuses strength outside [0, 1])
    if len(tail) == 0:
        warnings.warn(
            f"strength {strength} x {sampler.steps} steps leaves no denoising step "
            f"(int({sampler.steps} * {strength}) = 0); the image comes back as it went in "
            "(encoded and decoded for a latent model)",
            stacklevel=3,
        )
    return len(tail)
