"""CLIP (Radford et al. 2021): an image tower and a text tower trained so that matching
image–text pairs have the most similar embeddings in a batch.

- Image tower: a small ViT (Dosovitskiy et al. 2020) -- patch embedding, a class token,
  learned positions, the shared pre-LN `Block`s, LayerNorm of the class token -- or a small
  ResNet with attention pooling (`image_tower="resnet"`, see clip_resnet.py).
- Text tower: the shared `Block`s with a causal mask over `<sot> words <eot> <pad>...`,
  pooled at the `<eot>` position (the last real token, CLIP sec. 2.4); or, with
  `text_tower="minilm"`, a frozen pretrained MiniLM sentence encoder (LiT, Zhai et al. 2022).
- Linear projections (no bias) into a joint `embed_dim` space and L2 normalisation.
- A learnable temperature: the logits are multiplied by exp(t), t initialised to
  log(1/0.07) and clamped after every optimiser step so exp(t) <= 100 (CLIP sec. 2.5).

The loss is `clip_loss` (clip_loss.py), re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.models.clip_loss import clip_logits, clip_loss
from tinygen.models.clip_resnet import ResNetTower
from tinygen.nn.embeddings import PatchEmbedding
from tinygen.nn.transformer import Block

__all__ = ["CLIP", "CLIPConfig", "clip_logits", "clip_loss"]


@dataclass
class CLIPConfig:
    embed_dim: int = field(default=128, metadata={"help": "joint embedding size"})
    image_size: int = 32
    in_channels: int = 3
    image_tower: str = field(default="vit", metadata={"help": "vit | resnet"})
    patch_size: int = field(default=4, metadata={"help": "ViT patch size"})
    vision_width: int = field(default=128, metadata={"help": "ViT width"})
    vision_layers: int = field(default=4, metadata={"help": "ViT blocks"})
    vision_heads: int = 4
    resnet_width: int = field(default=32, metadata={"help": "ResNet channels of stage 1"})
    resnet_layers: list[int] = field(
        default_factory=lambda: [1, 1, 1], metadata={"help": "ResNet blocks per stage"}
    )
    text_tower: str = field(default="transformer", metadata={"help": "transformer | minilm"})
    vocab_size: int = field(default=64, metadata={"help": "caption vocabulary (set by data)"})
    context_length: int = field(default=16, metadata={"help": "tokens per caption"})
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    dropout: float = 0.0
    logit_scale_init: float = field(
        default=math.log(1 / 0.07), metadata={"help": "initial log temperature multiplier"}
    )
    max_logit_scale: float = field(default=100.0, metadata={"help": "clamp of exp(t)"})

    def validate(self) -> None:
        if self.image_tower not in ("vit", "resnet"):
            raise TinygenError(f"unknown --image-tower {self.image_tower!r}; choose vit or resnet")
        if self.text_tower not in ("transformer", "minilm"):
            raise TinygenError(
                f"unknown --text-tower {self.text_tower!r}; choose transformer or minilm"
            )
        for width, heads, name in (
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
        ):
            if width % heads:
                raise TinygenError(
                    f"--{name}-width ({width}) must be divisible by --{name}-heads ({heads})"
                )
        if self.image_tower == "vit" and self.image_size % self.patch_size:
            raise TinygenError(
                f"--image-size {self.image_size} is not divisible by --patch-size {self.patch_size}"
            )
        if self.image_tower == "resnet" and (
            not self.resnet_layers or self.image_size % 2 ** (len(self.resnet_layers) - 1)
        ):
            raise TinygenError(
                f"--resnet-layers {self.resnet_layers} does not fit "
                f"--image-size {self.image_size}: each stage after the first "
                "halves the image; give fewer stages"
            )
        for name in (
            "embed_dim",
            "image_size",
            "vocab_size",
            "context_length",
            "text_width",
            "vision_width",
            "resnet_width",
        ):
            if getattr(self, name) <= 0:
                raise TinygenError(f"--{name.replace('_', '-')} must be positive")
        if self.max_logit_scale <= 1:
            raise TinygenError("--max-logit-scale must be above 1")


class VisionTransformer(nn.Module):
    """ViT image tower: (B, C, H, W) -> (B, width), the normalised class token."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width = config.vision_width
        self.patch_embed = PatchEmbedding(
            image_size=config.image_size,
            patch_size=config.patch_size,
            in_channels=config.in_channels,
            dim=width,
        )
        self.class_token = nn.Parameter(torch.randn(width) * width**-0.5)
        self.pos_embedding = nn.Parameter(
            torch.randn(self.patch_embed.num_patches + 1, width) * 0.02
        )
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(
            Block(width, config.vision_heads, dropout=config.dropout)
            for _ in range(config.vision_layers)
        )
        self.ln_post = nn.LayerNorm(width)
        self.out_dim = width

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)  # (B, P, width)
        cls = self.class_token.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.pos_embedding)  # (B, P+1, width)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0])  # (B, width)


class TextTransformer(nn.Module):
    """Causal Transformer text tower: (B, T) ids (pad = 0 after `<eot>`) -> (B, width),
    the final-LayerNorm state at the `<eot>` token."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.pos_embedding = nn.Parameter(torch.randn(config.context_length, width) * 0.01)
        self.blocks = nn.ModuleList(
            Block(width, config.text_heads, causal=True, dropout=config.dropout)
            for _ in range(config.text_layers)
        )
        self.ln_final = nn.LayerNorm(width)
        self.out_dim = width
        self.context_length = config.context_length

    def forward(self, tokens: Tensor) -> Tensor:
        b, t = tokens.shape
        if t > self.context_length:
            raise TinygenError(
                f"captions of {t} tokens exceed the context length "
                f"{self.context_length}; shorten them or retrain"
            )
        x = self.token_embedding(tokens) + self.pos_embedding[:t]  # (B, T, width)
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        eot = (tokens != 0).sum(dim=1).clamp(min=1) - 1  # the last real token: <eot>
        return x[torch.arange(b, device=tokens.device), eot]  # (B, width)


class CLIP(nn.Module):
    """`forward(images, tokens)` -> (image_features, text_features, logit_scale): unit-norm
    (B, embed_dim) embeddings and the multiplier exp(t), ready for `clip_loss`."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if config.image_tower == "vit":
            self.visual = VisionTransformer(config)
        else:
            self.visual = ResNetTower(
                image_size=config.image_size,
                in_channels=config.in_channels,
                width=config.resnet_width,
                layers=list(config.resnet_layers),
                n_head=config.vision_heads,
            )
        if config.text_tower == "transformer":
            self.text = TextTransformer(config)
        else:
            from tinygen.models.minilm_text import MiniLMTextTower

            self.text = MiniLMTextTower()
        self.visual.apply(self._init_weights)
        if config.text_tower == "transformer":  # a pretrained tower keeps its weights
            self.text.apply(self._init_weights)
        self.visual_projection = nn.Linear(self.visual.out_dim, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(self.text.out_dim, config.embed_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=self.visual.out_dim**-0.5)
        nn.init.normal_(self.text_projection.weight, std=self.text.out_dim**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def encode_image(self, images: Tensor, *, normalize: bool = True) -> Tensor:
        """images (B, C, H, W) in [-1, 1] -> (B, embed_dim)."""
        if images.dim() != 4 or images.shape[1:] != (
            self.config.in_channels,
            self.config.image_size,
            self.config.image_size,
        ):
            c, s = self.config.in_channels, self.config.image_size
            raise TinygenError(
                f"images of shape {tuple(images.shape)} do not fit this model; "
                f"it takes (B, {c}, {s}, {s}) -- resize them to {s}x{s}"
            )
        features = self.visual_projection(self.visual(images))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: Tensor, *, normalize: bool = True) -> Tensor:
        """tokens (B, T) int64 from the run's tokenizer -> (B, embed_dim)."""
        features = self.text_projection(self.text(tokens))
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep 0 <= t <= log(max_logit_scale), i.e. 1 <= exp(t) <= 100 (CLIP sec. 2.5);
        called after each optimiser step."""
        self.logit_scale.clamp_(0.0, math.log(self.config.max_logit_scale))

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
