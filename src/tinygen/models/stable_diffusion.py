"""Stable Diffusion v1.x (Rombach et al. 2022) in tinygen's own modules, from diffusers' files.

A diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) loads into

- our U-Net with the Transformer attention block (`tinygen.nn.unet`, `attention_type=
  "transformer"`), our KL autoencoder (`tinygen.models.autoencoder`) and our CLIP text
  tower (`tinygen.models.clip.TextTransformer`; its last hidden state, after the final
  LayerNorm, is the context the U-Net cross-attends to), converted by the tables of
  `tinygen.models.convert`;
- our DDIM sampler, `tinygen.diffusion.sampling.sample`, with the checkpoint's own
  scheduler settings, and the one classifier-free-guidance wrapper
  (`tinygen.diffusion.guidance.classifier_free_guidance`, the empty prompt as the null
  condition, Ho & Salimans 2022 eq. 6).

The steps are diffusers' `StableDiffusionPipeline`'s, named the same way: `encode_prompt`,
`prepare_latents`, the denoising loop, `decode_latents`. Image-to-image (SDEdit, Meng et al.
2021) is the same loop started part-way down: `sample(..., x_start=, strength=)`, exactly the
code our own diffusion models use. Random numbers are drawn in diffusers' order from one
generator (the posterior sample of img2img, then the noise), so the same seed gives
diffusers' latents.

The tokenizer is transformers' `CLIPTokenizer`, read from the folder's tokenizer/.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from tinygen.diffusion.guidance import classifier_free_guidance
from tinygen.diffusion.sampling import sample
from tinygen.errors import TinygenError
from tinygen.models.autoencoder import AutoencoderKL
from tinygen.models.clip import TextTransformer
from tinygen.models.convert.stable_diffusion import (
    convert_unet_state_dict,
    convert_vae_state_dict,
    scheduler_from_diffusers,
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)
from tinygen.models.stable_diffusion_files import PipelineFolder, open_pipeline_folder
from tinygen.nn.unet import UNet

Prompts = str | Sequence[str] | Tensor  # text, or token ids (B, T) from the checkpoint's tokenizer


class StableDiffusion:
    """Text-to-image and image-to-image with a Stable Diffusion v1.x checkpoint.

    Build it with `StableDiffusion.from_pretrained(dir_or_hub_name)`. `txt2img` and `img2img`
    return images (B, 3, H, W) in [-1, 1], or the final latents with `output="latent"`.
    """

    def __init__(
        self,
        *,
        unet: UNet,
        vae: AutoencoderKL,
        text_encoder: TextTransformer,
        tokenizer,
        scheduler_config: dict,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.unet = unet.eval().to(self.device, dtype)
        self.vae = vae.eval().to(self.device, dtype)
        self.text_encoder = text_encoder.eval().to(self.device, dtype)
        self.tokenizer = tokenizer
        self.schedule, self.sampler_options = scheduler_from_diffusers(scheduler_config)
        self.vae_scale_factor = vae.config.downsample_factor
        self.image_size = unet.config.image_size * self.vae_scale_factor  # 512 for SD v1

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> StableDiffusion:
        """A diffusers-format folder (or, only when a Hub name is given, its download):
        unet/, vae/, text_encoder/, tokenizer/, scheduler/ -> our modules, in `dtype`."""
        folder: PipelineFolder = open_pipeline_folder(name_or_dir)
        unet = _on_meta(UNet, unet_config_from_diffusers(folder.unet_config))
        conversion = convert_unet_state_dict(folder.weights("unet"), unet.state_dict())
        unet.load_state_dict(conversion.state_dict, assign=True)
        vae = _on_meta(AutoencoderKL, vae_config_from_diffusers(folder.vae_config))
        conversion = convert_vae_state_dict(folder.weights("vae"), vae.state_dict())
        vae.load_state_dict(conversion.state_dict, assign=True)
        text_encoder = TextTransformer.from_hf(
            folder.text_encoder_config, folder.weights("text_encoder")
        )
        if text_encoder.out_dim != unet.config.context_dim:
            raise TinygenError(
                f"{folder.directory}: the text encoder's width {text_encoder.out_dim} is not "
                f"the U-Net's cross_attention_dim {unet.config.context_dim}; the folder mixes "
                "models of different Stable Diffusion versions"
            )
        return cls(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=folder.tokenizer(),
            scheduler_config=folder.scheduler_config,
            device=device,
            dtype=dtype,
        )

    # -- the pipeline's steps ----------------------------------------------------------------
    def tokenize(self, prompts: str | Sequence[str]) -> Tensor:
        """Prompts -> token ids (B, 77): `<|startoftext|> ... <|endoftext|>`, padded to the
        text encoder's length with the tokenizer's pad token and truncated to it."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length = self.text_encoder.context_length
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids
        return ids.long()

    @torch.no_grad()
    def encode_prompt(self, prompts: Prompts) -> Tensor:
        """Prompts (or token ids (B, T)) -> the context (B, T, width): the text encoder's last
        hidden state."""
        ids = prompts if isinstance(prompts, Tensor) else self.tokenize(prompts)
        if ids.dim() != 2:
            raise TinygenError(f"token ids must be (B, T), got shape {tuple(ids.shape)}")
        _, context = self.text_encoder(ids.to(self.device), return_tokens=True)
        return context  # (B, T, width)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Standard normal noise drawn on the generator's device in float32 (diffusers'
        `randn_tensor`), moved to ours."""
        return torch.randn(shape, generator=generator, device=generator.device).to(self.device)

    def _generator(self, seed: int | torch.Generator) -> torch.Generator:
        if isinstance(seed, torch.Generator):
            return seed
        return torch.Generator("cpu").manual_seed(int(seed))

    def prepare_latents(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> Tensor:
        """The starting noise x_T (B, 4, H/8, W/8)."""
        self._check_size(height, width)
        f = self.vae_scale_factor
        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        return self._noise(shape, generator)

    def _check_size(self, height: int, width: int) -> None:
        multiple = self.vae_scale_factor * self.unet.config.downsample_factor
        if height % multiple or width % multiple or height < multiple or width < multiple:
            raise TinygenError(
                f"{width}x{height} does not fit this model: width and height must be "
                f"multiples of {multiple} (the autoencoder's factor {self.vae_scale_factor} "
                f"x the U-Net's {self.unet.config.downsample_factor}); e.g. "
                f"{self.image_size}x{self.image_size}"
            )

    def denoise(
        self,
        prompts: Prompts,
        x_T: Tensor,
        *,
        steps: int,
        guidance: float,
        negative_prompt: Prompts = "",
        x_start: Tensor | None = None,
        strength: float = 1.0,
        progress: bool = True,
    ) -> Tensor:
        """The denoising loop: our `sample` with classifier-free guidance over the prompt's
        context, from x_T (or from x_start noised with x_T, part-way down: img2img)."""
        context = self.encode_prompt(prompts)
        batch = x_T.shape[0]
        if context.shape[0] != batch:
            raise TinygenError(f"{context.shape[0]} prompts for {batch} latents; give one each")
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * batch
        null_context = self.encode_prompt(negative_prompt)
        unet, dtype = self.unet, self.dtype

        def model(x: Tensor, t: Tensor, cond: dict) -> Tensor:
            # the network in its precision; the sampler's arithmetic stays float32
            return unet(x.to(dtype), t, context=cond["context"]).float()

        model_fn = classifier_free_guidance(
            model, {"context": context}, {"context": null_context}, guidance
        )
        return sample(
            model_fn,
            tuple(x_T.shape),
            schedule=self.schedule,
            num_inference_steps=steps,
            device=self.device,
            x_T=x_T,
            x_start=x_start,
            strength=strength,
            progress=progress,
            **self.sampler_options,
        )

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents (scaled, as the U-Net sees them) -> images (B, 3, H, W) in [-1, 1]."""
        z = latents.to(self.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(z).float().clamp(-1, 1)

    @torch.no_grad()
    def encode_image(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents, a draw from the posterior (as
        diffusers' img2img: `latent_dist.sample(generator) * scaling_factor`)."""
        posterior = self.vae.encode(images.to(self.device, self.dtype))
        return posterior.sample(generator).float() * self.vae.config.scaling_factor

    # -- the two tasks -----------------------------------------------------------------------
    @torch.no_grad()
    def txt2img(
        self,
        prompts: Prompts,
        *,
        steps: int = 50,
        guidance: float = 7.5,
        seed: int | torch.Generator = 0,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: Prompts = "",
        latents: Tensor | None = None,
        output: str = "image",
        progress: bool = True,
    ) -> Tensor:
        """One image per prompt (or per row of token ids); `latents` replaces the drawn x_T."""
        _check_output(output)
        batch = _batch_size(prompts)
        generator = self._generator(seed)
        height, width = height or self.image_size, width or self.image_size
        x_T = self.prepare_latents(batch, height, width, generator) if latents is None else latents
        result = self.denoise(
            prompts, x_T.to(self.device).float(), steps=steps, guidance=guidance,
            negative_prompt=negative_prompt, progress=progress,
        )  # fmt: skip
        return result if output == "latent" else self.decode_latents(result)

    @torch.no_grad()
    def img2img(
        self,
        image,
        prompts: Prompts,
        *,
        strength: float = 0.8,
        steps: int = 50,
        guidance: float = 7.5,
        seed: int | torch.Generator = 0,
        negative_prompt: Prompts = "",
        output: str = "image",
        progress: bool = True,
    ) -> Tensor:
        """Redraw `image` (a PIL image, a path, or a tensor (B, 3, H, W) in [-1, 1]) toward the
        prompt: encode it, noise it to the first of the last `int(steps * strength)`
        timesteps, denoise from there (diffusers' `StableDiffusionImg2ImgPipeline`).

        strength 0 returns the image encoded and decoded (diffusers refuses); 1 redraws it
        from pure noise. A PIL image or file whose sides are not multiples of 64 is resized
        down to the nearest ones, with a warning; a tensor of another size is refused.
        """
        _check_output(output)
        if not 0.0 <= strength <= 1.0:
            raise TinygenError(f"--strength must be in [0, 1] (0 keeps the image), got {strength}")
        pixels = self.image_tensor(image)
        batch = _batch_size(prompts)
        if pixels.shape[0] == 1 and batch > 1:
            pixels = pixels.expand(batch, -1, -1, -1)
        generator = self._generator(seed)
        x_start = self.encode_image(pixels, generator)  # (B, 4, H/8, W/8)
        if int(steps * strength) == 0:
            warnings.warn(
                f"strength {strength} x {steps} steps leaves no denoising step; the image comes "
                "back encoded and decoded",
                stacklevel=2,
            )
        noise = self._noise(tuple(x_start.shape), generator)
        result = self.denoise(
            prompts, noise, steps=steps, guidance=guidance, negative_prompt=negative_prompt,
            x_start=x_start, strength=strength, progress=progress,
        )  # fmt: skip
        return result if output == "latent" else self.decode_latents(result)

    def image_tensor(self, image) -> Tensor:
        """A PIL image, an image file or a tensor -> (B, 3, H, W) in [-1, 1] that fits."""
        if isinstance(image, Tensor):
            if image.dim() == 3:
                image = image[None]
            if image.dim() != 4 or image.shape[1] != 3:
                raise TinygenError(
                    f"an image tensor must be (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}"
                )
            self._check_size(image.shape[2], image.shape[3])
            return image.float()
        return self._from_pil(image)

    def _from_pil(self, image) -> Tensor:
        from PIL import Image

        from tinygen.data.image_folder import open_rgb

        picture = open_rgb(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        multiple = self.vae_scale_factor * self.unet.config.downsample_factor
        width, height = (side - side % multiple for side in picture.size)
        if width < multiple or height < multiple:
            raise TinygenError(
                f"the image is {picture.width}x{picture.height}; Stable Diffusion needs at "
                f"least {multiple}x{multiple} (sides in multiples of {multiple})"
            )
        if (width, height) != picture.size:
            warnings.warn(
                f"the image is {picture.width}x{picture.height}; resized to {width}x{height} "
                f"(the model needs sides that are multiples of {multiple})",
                stacklevel=3,
            )
            picture = picture.resize((width, height), Image.LANCZOS)
        data = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
        data = data.view(height, width, 3).permute(2, 0, 1)[None]  # (1, 3, H, W)
        return data.float() / 255.0 * 2.0 - 1.0  # as diffusers' VaeImageProcessor


def _on_meta(cls, config):
    """Build a module on the meta device: no memory and no random init for weights that the
    checkpoint replaces (`load_state_dict(assign=True)`)."""
    with torch.device("meta"):
        return cls(config)


def _batch_size(prompts: Prompts) -> int:
    if isinstance(prompts, Tensor):
        return prompts.shape[0]
    return 1 if isinstance(prompts, str) else len(prompts)


def _check_output(output: str) -> None:
    if output not in ("image", "latent"):
        raise TinygenError(f"output must be 'image' or 'latent', got {output!r}")
