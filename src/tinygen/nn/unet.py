"""A U-Net for diffusion on 16-64 px images or latents (Ho et al. 2020; Dhariwal & Nichol 2021).

The network maps a noisy input x_t and its timestep t to an output of the same spatial size
(the noise, x_0 or v). A condition enters by one of two paths (glide-text2im's two paths,
kept plain):

- **The embedding** (an additive vector): the sinusoidal embedding of t (Vaswani et al.
  sec. 3.5, as DDPM) through a two-layer MLP, plus optionally
  - class rows (`num_classes`): one embedding per class row, summed over k rows per sample
    when labels are factored into attributes (ADM's "class-conditional");
  - a projected conditioning vector (`cond_emb_dim`): `cond_emb` (B, cond_emb_dim) through a
    linear layer, added to the time embedding -- GLIDE's pooled text feature, unCLIP's CLIP
    image embedding (Ramesh et al. 2022, sec. 2.1). The projection starts at zero, so a new
    condition starts as the unconditional model and learns its way in.
  The embedding reaches every residual block (`tinygen.nn.resnet.ResBlock`).
- **The token context** (a sequence): `context` (B, S, context_dim) with an optional
  `context_mask` (B, S), True for real tokens -- a caption's token features from a text
  encoder -- reaches every attention block (`context_dim`), by cross-attention (latent
  diffusion, Rombach et al. 2022, sec. 3.3) or joined to the self-attention's keys and values
  (`context_mode="concat_kv"`, GLIDE's `encoder_kv`); see `tinygen.nn.resnet.AttentionBlock`.

The attention block is ADM's (`attention_type="adm"`, `tinygen.nn.resnet.AttentionBlock`)
or Stable Diffusion's Transformer (`"transformer"`, `tinygen.nn.spatial_transformer`). The
options Stable Diffusion's U-Net needs -- heads counted per level (`num_heads`), the
cos-first time embedding (`flip_sin_to_cos`, `freq_shift`), the GroupNorm epsilon, the
time-embedding width, per-channel bias injection (`scale_shift=False`) and no attention at
the lowest level (`attention_resolutions`) -- are fields whose defaults keep ADM's U-Net;
`tinygen.models.convert.stable_diffusion` maps diffusers' `UNet2DConditionModel` onto it.

Down path: `num_res_blocks` blocks per level, then a stride-2 conv; the up path mirrors it,
concatenating the saved activations (skip connections), then nearest-neighbour 2x
upsampling + conv. Attention at the chosen resolutions and in the middle. The blocks live in
`tinygen.nn.resnet`.

`UNetEncoder` is the down path + middle on its own: the noisy classifier of classifier
guidance (Dhariwal & Nichol sec. 4) is this encoder with a pooling head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.nn.embeddings import sinusoidal_embedding
from tinygen.nn.resnet import (  # noqa: F401 - ResBlock & co. lived here before nn/resnet.py
    CONTEXT_MODES,
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    norm_groups_for,
    zero_module,
)
from tinygen.nn.spatial_transformer import SpatialTransformer

ATTENTION_TYPES = ("adm", "transformer")


@dataclass
class UNetConfig:
    image_size: int = field(
        default=32, metadata={"help": "input height and width (pixels)", "min": 1}
    )
    in_channels: int = field(default=3, metadata={"help": "image channels in", "min": 1})
    out_channels: int = field(default=3, metadata={"help": "channels predicted", "min": 1})
    base_channels: int = field(default=64, metadata={"help": "width of the first level", "min": 1})
    channel_mult: tuple[int, ...] = field(
        default=(1, 2, 2),
        metadata={"help": "width multiplier per level, comma separated", "min": 1},
    )
    num_res_blocks: int = field(default=2, metadata={"help": "residual blocks per level", "min": 1})
    attention_resolutions: tuple[int, ...] = field(
        default=(8,),
        metadata={
            "help": "feature-map sizes (pixels) that get attention, comma separated",
            "min": 1,
        },
    )
    head_channels: int = field(
        default=32, metadata={"help": "channels per attention head", "min": 1}
    )
    num_classes: int = field(
        default=0, metadata={"help": "class-embedding rows; 0 = none", "min": 0}
    )
    cond_emb_dim: int = field(
        default=0, metadata={"help": "width of an additive conditioning vector; 0 = none", "min": 0}
    )
    context_dim: int | None = field(
        default=None, metadata={"help": "width of context tokens (a caption's)", "min": 1}
    )
    context_mode: str = field(
        default="cross_attention",
        metadata={
            "help": "how context tokens enter attention: cross_attention | concat_kv (GLIDE)",
            "choices": CONTEXT_MODES,
        },
    )
    scale_shift: bool = field(default=True, metadata={"help": "time embedding as GN scale-shift"})
    dropout: float = field(
        default=0.0, metadata={"help": "dropout probability", "min": 0, "below": 1}
    )
    norm_groups: int = field(default=32, metadata={"help": "GroupNorm groups (at most)", "min": 1})
    attention_type: str = field(
        default="adm",
        metadata={
            "help": "attention block: adm (ADM's) | transformer (Stable Diffusion's)",
            "choices": ATTENTION_TYPES,
        },
    )
    num_heads: tuple[int, ...] = field(
        default=(),
        metadata={
            "help": "attention heads per level (one value = every level), instead of "
            "head_channels; empty = use head_channels",
            "min": 1,
        },
    )
    transformer_depth: int = field(
        default=1, metadata={"help": "Transformer blocks per transformer attention", "min": 1}
    )
    linear_projection: bool = field(
        default=False, metadata={"help": "transformer attention: linear proj_in/out (SD v2)"}
    )
    time_embed_dim: int = field(
        default=0, metadata={"help": "time-embedding width; 0 = 4 x base_channels", "min": 0}
    )
    flip_sin_to_cos: bool = field(
        default=False, metadata={"help": "timestep embedding with the cosines first"}
    )
    freq_shift: float = field(
        default=0.0, metadata={"help": "timestep embedding's frequency divisor shift"}
    )
    norm_eps: float = field(
        default=1e-5, metadata={"help": "GroupNorm epsilon of the residual blocks", "above": 0}
    )
    attention_positions: bool = field(
        default=False,
        metadata={
            "help": "adm attention: a learned pixel-position embedding on its input, so a "
            "pixel's query knows its place (to bind caption words to places)"
        },
    )

    def __post_init__(self) -> None:
        # configs read back from JSON carry lists
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        self.num_heads = tuple(self.num_heads)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def emb_dim(self) -> int:
        """Width of the time (+ condition) embedding."""
        return self.time_embed_dim or 4 * self.base_channels

    def heads_at(self, level: int) -> int:
        """Attention heads at a level: `num_heads` (per level or one for all) or the width
        over `head_channels`."""
        if self.num_heads:
            return self.num_heads[level if len(self.num_heads) > 1 else 0]
        return self.base_channels * self.channel_mult[level] // self.head_channels

    def validate(self) -> None:
        check_fields(self)
        if not self.channel_mult:
            raise TinygenError("--channel-mult is empty; give one multiplier per level, e.g. 1,2,2")
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
        if len(self.num_heads) not in (0, 1, len(self.channel_mult)):
            raise TinygenError(
                f"num_heads {self.num_heads} gives {len(self.num_heads)} values for "
                f"{len(self.channel_mult)} levels; give one value or one per level"
            )
        last = len(self.channel_mult) - 1
        for i, mult in enumerate(self.channel_mult):
            ch = self.base_channels * mult
            needs_attention = i == last or self.image_size // 2**i in self.attention_resolutions
            if needs_attention and self.num_heads and ch % self.heads_at(i):
                raise TinygenError(
                    f"width {ch} is not divisible by {self.heads_at(i)} heads (num_heads)"
                )
            if needs_attention and not self.num_heads and ch % self.head_channels:
                raise TinygenError(
                    f"width {ch} is not divisible by head_channels {self.head_channels}"
                )


# the names of the helpers before nn/resnet.py
_groups = norm_groups_for
_zero = zero_module


def attention_block(
    config: UNetConfig, channels: int, level: int
) -> AttentionBlock | SpatialTransformer:
    """The attention block of `config.attention_type` for a feature map at `level`."""
    c = config
    if c.attention_type == "transformer":
        if c.attention_positions:
            raise TinygenError("attention_positions is for the adm attention block")
        return SpatialTransformer(
            channels,
            c.heads_at(level),
            context_dim=c.context_dim,
            depth=c.transformer_depth,
            linear_projection=c.linear_projection,
            norm_groups=c.norm_groups,
            dropout=c.dropout,
        )
    return AttentionBlock(
        channels,
        head_channels=channels // c.heads_at(level),
        context_dim=c.context_dim,
        context_mode=c.context_mode,
        norm_groups=c.norm_groups,
        dropout=c.dropout,
        position_side=c.image_size // 2**level if c.attention_positions else 0,
    )


def resblock_options(config: UNetConfig) -> dict:
    """The keyword arguments every ResBlock of the U-Net shares."""
    c = config
    return {
        "scale_shift": c.scale_shift,
        "dropout": c.dropout,
        "norm_groups": c.norm_groups,
        "eps": c.norm_eps,
    }


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) of one resolution."""

    def __init__(
        self, blocks: list[ResBlock], attns: list[AttentionBlock | SpatialTransformer | None]
    ) -> None:
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
        emb_dim = c.emb_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(c.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(c.num_classes, emb_dim) if c.num_classes > 0 else None
        self.cond_proj = None
        if c.cond_emb_dim > 0:  # zero at the start: the condition learns its way in
            self.cond_proj = zero_module(nn.Linear(c.cond_emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        kw = resblock_options(c)
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        self.skip_channels = [c.base_channels]
        ch, res = c.base_channels, c.image_size
        for i, mult in enumerate(c.channel_mult):
            out = c.base_channels * mult
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(ch, out, emb_dim, **kw))
                has_attention = res in c.attention_resolutions
                attns.append(attention_block(c, out, i) if has_attention else None)
                ch = out
                self.skip_channels.append(ch)
            self.down.append(Level(blocks, attns))
            if i < len(c.channel_mult) - 1:
                self.downsamplers.append(Downsample(ch))
                self.skip_channels.append(ch)
                res //= 2
        self.mid_block1 = ResBlock(ch, ch, emb_dim, **kw)
        self.mid_attn = attention_block(c, ch, len(c.channel_mult) - 1)
        self.mid_block2 = ResBlock(ch, ch, emb_dim, **kw)
        self.out_channels = ch

    def embed(
        self, t: Tensor, class_labels: Tensor | None = None, cond_emb: Tensor | None = None
    ) -> Tensor:
        """(B,) timesteps (+ class rows, + a conditioning vector) -> (B, 4 * base_channels).

        class_labels is (B,) rows of the class table, or (B, k): k rows per sample whose
        embeddings are summed (one row per attribute, e.g. colour and shape).
        cond_emb is (B, cond_emb_dim), projected and added.
        """
        c = self.config
        t_emb = sinusoidal_embedding(
            t, c.base_channels, flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift
        )  # (B, base_channels), float32
        emb = self.time_mlp(t_emb.to(self.time_mlp[0].weight.dtype))
        if self.class_emb is not None:
            if class_labels is None:
                raise TinygenError("this U-Net is class-conditional and needs class labels")
            label_emb = self.class_emb(class_labels)
            emb = emb + (label_emb.sum(1) if class_labels.dim() == 2 else label_emb)
        if self.cond_proj is not None:
            width = self.config.cond_emb_dim
            if cond_emb is None or cond_emb.shape != (t.shape[0], width):
                got = None if cond_emb is None else tuple(cond_emb.shape)
                raise TinygenError(
                    f"this U-Net takes a conditioning vector cond_emb of shape "
                    f"({t.shape[0]}, {width}), got {got}"
                )
            emb = emb + self.cond_proj(cond_emb.to(emb.dtype))
        elif cond_emb is not None:
            raise TinygenError(
                "this U-Net has no conditioning-vector input (cond_emb_dim=0); build it with "
                "cond_emb_dim set to the vector's width"
            )
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
        cond_emb: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        self.check_input(x)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, class_labels, cond_emb)
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns):
                h = block(h, emb)
                if not isinstance(attn, nn.Identity):
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
    """x_t (B, C, H, W), t (B,) [, class_labels (B,) or (B, k), context (B, S, D) with
    context_mask (B, S), cond_emb (B, E)] -> (B, C_out, H, W)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = UNetEncoder(config)
        emb_dim = c.emb_dim
        kw = resblock_options(c)
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
                has_attention = res in c.attention_resolutions
                attns.append(attention_block(c, out, i) if has_attention else None)
                ch = out
            self.up.append(Level(blocks, attns))
            if i > 0:
                self.upsamplers.append(Upsample(ch))
                res *= 2
        self.norm_out = nn.GroupNorm(norm_groups_for(ch, c.norm_groups), ch, eps=c.norm_eps)
        self.conv_out = zero_module(nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cond_emb: Tensor | None = None,
    ) -> Tensor:
        """context: tokens for cross-attention (B, S, context_dim); context_mask: (B, S) bool,
        True for real context tokens; cond_emb: the additive conditioning vector (B, E)."""
        h, skips, emb = self.encoder(x, t, class_labels, context, context_mask, cond_emb)
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attns):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
                if not isinstance(attn, nn.Identity):
                    h = attn(h, context, context_mask)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)
