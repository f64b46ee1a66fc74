"""A U-Net for diffusion on 16-64 px images (Ho et al. 2020; Dhariwal & Nichol 2021).

The network maps a noisy image x_t and its timestep t (plus, optionally, a class label and
a sequence of context tokens) to an image-shaped output: the noise, x_0 or v.

- Timestep: the sinusoidal embedding of t (Vaswani et al. sec. 3.5, as DDPM) through a
  two-layer MLP; an optional class embedding is added to it (ADM, "class-conditional").
- Residual blocks: GroupNorm -> SiLU -> conv, the embedding injected in between, either
  added as a per-channel bias or as a scale-shift of the second GroupNorm
  (`GN(h) * (1 + scale) + shift`, ADM's "adaptive group normalisation", sec. 3).
- Down path: `num_res_blocks` blocks per level, then a stride-2 conv; the up path mirrors
  it, concatenating the saved activations (skip connections), then nearest-neighbour 2x
  upsampling + conv.
- Attention at the chosen resolutions: the feature map is flattened to H*W tokens and goes
  through the shared `tinygen.nn.attention.Attention` (self), then, when the model has a
  `context_dim`, cross-attention to the context tokens (latent diffusion, Rombach et al.).
- The last conv of every residual branch and the output conv start at zero, so the
  untrained network is the identity on each residual path (ADM's `zero_module`).

`UNetEncoder` is the down path + middle on its own: the noisy classifier of classifier
guidance (Dhariwal & Nichol sec. 4) is this encoder with a pooling head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.nn.attention import Attention
from tinygen.nn.embeddings import sinusoidal_embedding


@dataclass
class UNetConfig:
    image_size: int = field(default=32, metadata={"help": "input height and width (pixels)"})
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = field(default=64, metadata={"help": "width of the first level"})
    channel_mult: tuple[int, ...] = field(
        default=(1, 2, 2), metadata={"help": "width multiplier per level, comma separated"}
    )
    num_res_blocks: int = field(default=2, metadata={"help": "residual blocks per level"})
    attention_resolutions: tuple[int, ...] = field(
        default=(8,), metadata={"help": "feature-map sizes (pixels) that get attention"}
    )
    head_channels: int = field(default=32, metadata={"help": "channels per attention head"})
    num_classes: int = field(default=0, metadata={"help": "class-embedding rows; 0 = none"})
    context_dim: int | None = field(
        default=None, metadata={"help": "width of context tokens for cross-attention"}
    )
    scale_shift: bool = field(default=True, metadata={"help": "time embedding as GN scale-shift"})
    dropout: float = 0.0
    norm_groups: int = field(default=32, metadata={"help": "GroupNorm groups (at most)"})

    def __post_init__(self) -> None:
        # configs read back from JSON carry lists
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def validate(self) -> None:
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise TinygenError(f"channel_mult must be positive integers, got {self.channel_mult}")
        for name in (
            "image_size",
            "in_channels",
            "out_channels",
            "base_channels",
            "num_res_blocks",
            "head_channels",
        ):
            if getattr(self, name) <= 0:
                raise TinygenError(f"U-Net {name} must be positive, got {getattr(self, name)}")
        if self.image_size % self.downsample_factor:
            raise TinygenError(
                f"image size {self.image_size} is not divisible by {self.downsample_factor} "
                f"(the U-Net halves it {len(self.channel_mult) - 1} times); use an image size "
                f"that is a multiple of {self.downsample_factor} or fewer channel_mult levels"
            )
        sizes = {self.image_size // 2**i for i in range(len(self.channel_mult))}
        if unknown := [r for r in self.attention_resolutions if r not in sizes]:
            raise TinygenError(
                f"attention_resolutions {unknown} are not feature-map sizes of this U-Net "
                f"(it has {sorted(sizes, reverse=True)}); pick from those"
            )
        last = len(self.channel_mult) - 1
        for i, mult in enumerate(self.channel_mult):
            ch = self.base_channels * mult
            needs_attention = i == last or self.image_size // 2**i in self.attention_resolutions
            if needs_attention and ch % self.head_channels:
                raise TinygenError(
                    f"width {ch} is not divisible by head_channels {self.head_channels}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise TinygenError(f"dropout must be in [0, 1), got {self.dropout}")


def _groups(channels: int, max_groups: int) -> int:
    """The largest group count <= max_groups that divides `channels`."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with the time(+class) embedding injected between its two convs."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        *,
        scale_shift: bool,
        dropout: float,
        norm_groups: int,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(_groups(in_ch, norm_groups), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch, norm_groups), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, then optional cross-attention to context."""

    def __init__(
        self,
        channels: int,
        *,
        head_channels: int,
        context_dim: int | None,
        norm_groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        n_head = channels // head_channels
        self.norm = nn.GroupNorm(_groups(channels, norm_groups), channels)
        self.attn = Attention(channels, n_head, dropout=dropout)
        _zero(self.attn.out_proj)
        self.cross_attn = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(channels)
            self.cross_attn = Attention(channels, n_head, context_dim=context_dim, dropout=dropout)
            _zero(self.cross_attn.out_proj)

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out = x.flatten(2).transpose(1, 2) + self.attn(tokens)
        if self.cross_attn is not None:
            if context is None:
                raise TinygenError("this U-Net has cross-attention and needs context tokens")
            out = out + self.cross_attn(
                self.norm_cross(out), context, key_padding_mask=context_mask
            )
        return out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) of one resolution."""

    def __init__(self, blocks: list[ResBlock], attns: list[AttentionBlock | None]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(a if a is not None else nn.Identity() for a in attns)


class UNetEncoder(nn.Module):
    """Timestep/class embedding, input conv, down path and middle of the U-Net.

    forward returns (h (B, C_mid, H/f, W/f), skips: list of activations for the up path,
    emb (B, 4 * base_channels)).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        emb_dim = 4 * c.base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(c.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(c.num_classes, emb_dim) if c.num_classes > 0 else None
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        kw = {"scale_shift": c.scale_shift, "dropout": c.dropout, "norm_groups": c.norm_groups}
        akw = {
            "head_channels": c.head_channels,
            "context_dim": c.context_dim,
            "norm_groups": c.norm_groups,
            "dropout": c.dropout,
        }
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        self.skip_channels = [c.base_channels]
        ch, res = c.base_channels, c.image_size
        for i, mult in enumerate(c.channel_mult):
            out = c.base_channels * mult
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(ch, out, emb_dim, **kw))
                attns.append(AttentionBlock(out, **akw) if res in c.attention_resolutions else None)
                ch = out
                self.skip_channels.append(ch)
            self.down.append(Level(blocks, attns))
            if i < len(c.channel_mult) - 1:
                self.downsamplers.append(Downsample(ch))
                self.skip_channels.append(ch)
                res //= 2
        self.mid_block1 = ResBlock(ch, ch, emb_dim, **kw)
        self.mid_attn = AttentionBlock(ch, **akw)
        self.mid_block2 = ResBlock(ch, ch, emb_dim, **kw)
        self.out_channels = ch

    def embed(self, t: Tensor, class_labels: Tensor | None) -> Tensor:
        """(B,) timesteps (+ labels) -> (B, 4 * base_channels).

        class_labels is (B,) rows of the class table, or (B, k): k rows per sample whose
        embeddings are summed (one row per attribute, e.g. colour and shape).
        """
        emb = self.time_mlp(sinusoidal_embedding(t, self.config.base_channels))
        if self.class_emb is not None:
            if class_labels is None:
                raise TinygenError("this U-Net is class-conditional and needs class labels")
            label_emb = self.class_emb(class_labels)
            emb = emb + (label_emb.sum(1) if class_labels.dim() == 2 else label_emb)
        return emb

    def check_input(self, x: Tensor) -> None:
        factor = self.config.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise TinygenError(
                f"the U-Net takes images (B, {self.config.in_channels}, H, W), got shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[2] % factor or x.shape[3] % factor:
            raise TinygenError(
                f"image size {tuple(x.shape[2:])} is not divisible by {factor}, which this "
                f"U-Net needs ({len(self.config.channel_mult) - 1} downsamplings); resize the "
                f"images to a multiple of {factor} (trained at {self.config.image_size})"
            )

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        self.check_input(x)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, class_labels)
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns):
                h = block(h, emb)
                if isinstance(attn, AttentionBlock):
                    h = attn(h, context, context_mask)
                skips.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
                skips.append(h)
        h = self.mid_block1(h, emb)
        h = self.mid_attn(h, context, context_mask)
        h = self.mid_block2(h, emb)
        return h, skips, emb


class UNet(nn.Module):
    """x_t (B, C, H, W), t (B,) [, class_labels (B,), context (B, S, D)] -> (B, C_out, H, W)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = UNetEncoder(config)
        emb_dim = 4 * c.base_channels
        kw = {"scale_shift": c.scale_shift, "dropout": c.dropout, "norm_groups": c.norm_groups}
        akw = {
            "head_channels": c.head_channels,
            "context_dim": c.context_dim,
            "norm_groups": c.norm_groups,
            "dropout": c.dropout,
        }
        skip_channels = list(self.encoder.skip_channels)
        ch = self.encoder.out_channels
        res = c.image_size // c.downsample_factor
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.channel_mult))):
            out = c.base_channels * mult
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):  # one more: it takes the downsampler's skip
                blocks.append(ResBlock(ch + skip_channels.pop(), out, emb_dim, **kw))
                attns.append(AttentionBlock(out, **akw) if res in c.attention_resolutions else None)
                ch = out
            self.up.append(Level(blocks, attns))
            if i > 0:
                self.upsamplers.append(Upsample(ch))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(ch, c.norm_groups), ch)
        self.conv_out = _zero(nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """context_mask: (B, S) bool, True for real context tokens."""
        h, skips, emb = self.encoder(x, t, class_labels, context, context_mask)
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attns):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
                if isinstance(attn, AttentionBlock):
                    h = attn(h, context, context_mask)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)
