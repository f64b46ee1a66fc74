"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1; the first
stage of Stable Diffusion).

An encoder compresses an image (B, 3, H, W) in [-1, 1] by a factor f = 2^(levels - 1) per side
into the mean and log-variance of a diagonal Gaussian over latents (B, c, H/f, W/f); a decoder
maps a latent back to pixels. Training (issue 14) adds a small KL(q(z|x) || N(0, I)) to the
reconstruction loss, so the latent space stays smooth and roughly unit-scale; the diffusion
model then works on `scaling_factor * z` (Stable Diffusion v1: 0.18215 = 1 / std of its
training latents).

Layout (Esser et al. 2021's VQGAN encoder/decoder, as LDM and diffusers' `AutoencoderKL`):

    Encoder: conv_in -> per level [num_res_blocks ResBlocks, stride-2 Downsample except the
             last] -> mid [ResBlock, attention, ResBlock] -> GroupNorm, SiLU, conv_out (2c)
    Decoder: conv_in -> mid -> per level, deepest first [num_res_blocks + 1 ResBlocks,
             nearest-2x Upsample except the last] -> GroupNorm, SiLU, conv_out (3)

with 1x1 `quant_conv` (2c -> 2c) after the encoder and `post_quant_conv` (c -> c) before the
decoder. The residual, attention and resampling blocks are `tinygen.nn.resnet`'s (without a
time embedding). Stable Diffusion's choices are options with its values as defaults
(`AutoencoderConfig.stable_diffusion()` is v1's published config): asymmetric (0, 1, 0, 1)
padding in the encoder's down-samplers, single-head attention in the middle blocks, the
quant convs, GroupNorm eps 1e-6. The default widths are a small model that trains on a CPU.

`encode(images)` returns the posterior (`DiagonalGaussian`); `decode(z)` takes an unscaled
latent (multiply by `scaling_factor` before diffusion and divide after, as diffusers does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.nn.resnet import AttentionBlock, Downsample, ResBlock, Upsample, norm_groups_for


@dataclass
class AutoencoderConfig:
    in_channels: int = field(default=3, metadata={"help": "image channels", "min": 1})
    base_channels: int = field(default=32, metadata={"help": "width of the first level", "min": 1})
    channel_mult: tuple[int, ...] = field(
        default=(1, 2, 2),
        metadata={
            "help": "width multiplier per level (f = 2^(levels-1)), comma separated",
            "min": 1,
        },
    )
    num_res_blocks: int = field(
        default=1, metadata={"help": "residual blocks per encoder level", "min": 1}
    )
    latent_channels: int = field(default=3, metadata={"help": "latent channels c", "min": 1})
    norm_groups: int = field(default=32, metadata={"help": "GroupNorm groups (at most)", "min": 1})
    norm_eps: float = field(default=1e-6, metadata={"help": "GroupNorm epsilon", "above": 0})
    mid_attention: bool = field(
        default=True, metadata={"help": "self-attention in the middle blocks"}
    )
    asymmetric_padding: bool = field(
        default=True, metadata={"help": "encoder down-samplers pad (0,1,0,1), as LDM / SD"}
    )
    quant_conv: bool = field(
        default=True, metadata={"help": "1x1 quant_conv / post_quant_conv around the latent"}
    )
    scaling_factor: float = field(
        default=1.0,
        metadata={"help": "latent scale for diffusion (1 / std of training latents)", "above": 0},
    )
    dropout: float = field(
        default=0.0, metadata={"help": "dropout probability", "min": 0, "below": 1}
    )

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)  # configs read back from JSON carry lists

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def validate(self) -> None:
        check_fields(self)
        if not self.channel_mult:
            raise TinygenError("channel_mult is empty; give one multiplier per level, e.g. 1,2,2")

    @classmethod
    def stable_diffusion(cls) -> AutoencoderConfig:
        """Stable Diffusion v1's autoencoder (f = 8, c = 4, 83.7 M parameters)."""
        return cls(
            base_channels=128,
            channel_mult=(1, 2, 4, 4),
            num_res_blocks=2,
            latent_channels=4,
            scaling_factor=0.18215,
        )


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))) from the encoder's 2c channels (mean, then logvar).

    The log-variance is clamped to [-30, 20] (LDM's bounds) so exp stays finite. `kl()` is
    KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar) over (C, H, W), per sample
    (Kingma & Welling 2014, appendix B); a sum, as LDM's loss uses it.
    """

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, c, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * eps, eps drawn on the generator's device (as diffusers' `randn_tensor`,
        so a CPU generator gives the same latents on any device)."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, (B,)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class ResolutionLevel(nn.Module):
    """The residual blocks of one resolution and the resampler after them (or None)."""

    def __init__(self, blocks: list[ResBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.resample is None else self.resample(x)


class MidBlock(nn.Module):
    """ResBlock -> single-head self-attention (optional) -> ResBlock at the lowest resolution."""

    def __init__(self, channels: int, config: AutoencoderConfig) -> None:
        super().__init__()
        c = config
        kw = _block_options(c)
        self.block1 = ResBlock(channels, channels, None, **kw)
        self.attn = None
        if c.mid_attention:
            self.attn = AttentionBlock(
                channels,
                head_channels=channels,
                context_dim=None,
                norm_groups=c.norm_groups,
                dropout=c.dropout,
                eps=c.norm_eps,
            )
        self.block2 = ResBlock(channels, channels, None, **kw)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.block2(x)


def _block_options(config: AutoencoderConfig) -> dict:
    return {
        "scale_shift": False,
        "dropout": config.dropout,
        "norm_groups": config.norm_groups,
        "eps": config.norm_eps,
    }


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, 2 * latent_channels, H/f, W/f): the posterior's moments."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        c = config
        widths = [c.base_channels * m for m in c.channel_mult]
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        ch = widths[0]
        for i, out in enumerate(widths):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(ch, out, None, **_block_options(c)))
                ch = out
            last = i == len(widths) - 1
            resample = None if last else Downsample(ch, asymmetric_padding=c.asymmetric_padding)
            self.down.append(ResolutionLevel(blocks, resample))
        self.mid = MidBlock(ch, c)
        self.norm_out = nn.GroupNorm(norm_groups_for(ch, c.norm_groups), ch, eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch, 2 * c.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, latent_channels, h, w) -> (B, in_channels, h*f, w*f)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        c = config
        widths = [c.base_channels * m for m in reversed(c.channel_mult)]  # deepest first
        ch = widths[0]
        self.conv_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.mid = MidBlock(ch, c)
        self.up = nn.ModuleList()
        for i, out in enumerate(widths):
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(ch, out, None, **_block_options(c)))
                ch = out
            resample = None if i == len(widths) - 1 else Upsample(ch)
            self.up.append(ResolutionLevel(blocks, resample))
        self.norm_out = nn.GroupNorm(norm_groups_for(ch, c.norm_groups), ch, eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """images (B, C, H, W) in [-1, 1] <-> latents (B, latent_channels, H/f, W/f)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        moments, latent = 2 * c.latent_channels, c.latent_channels
        self.quant_conv = nn.Conv2d(moments, moments, 1) if c.quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if c.quant_conv else None

    def _check(self, x: Tensor, channels: int, what: str) -> None:
        if x.dim() != 4 or x.shape[1] != channels:
            raise TinygenError(
                f"the autoencoder's {what} takes (B, {channels}, H, W), got {tuple(x.shape)}"
            )

    def encode(self, images: Tensor) -> DiagonalGaussian:
        """images (B, C, H, W) in [-1, 1] -> the posterior q(z | x) over (B, c, H/f, W/f)."""
        self._check(images, self.config.in_channels, "encoder")
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents (B, c, h, w) -> images (B, C, h*f, w*f), about [-1, 1]."""
        self._check(z, self.config.latent_channels, "decoder")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self,
        images: Tensor,
        *,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, DiagonalGaussian]:
        """(reconstruction, posterior): the decoder applied to a draw from (or the mode of)
        q(z | x) -- what the training loss compares with the input."""
        posterior = self.encode(images)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
