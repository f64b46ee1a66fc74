"""CLIP's configuration: the sizes of both towers, the temperature, and the options a
published checkpoint needs (OpenAI's QuickGELU, its MLP widths, its pooling rule), which
`CLIP.from_pretrained` fills from the checkpoint's config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.nn.transformer import ACTIVATIONS

POOLINGS = ("last", "argmax", "eos")


@dataclass
class CLIPConfig:
    embed_dim: int = field(default=128, metadata={"help": "joint embedding size", "min": 1})
    image_size: int = field(default=32, metadata={"help": "input height and width", "min": 1})
    in_channels: int = field(default=3, metadata={"help": "image channels", "min": 1})
    image_tower: str = field(
        default="vit", metadata={"help": "image encoder", "choices": ("vit", "resnet")}
    )
    patch_size: int = field(default=4, metadata={"help": "ViT patch size", "min": 1})
    vision_width: int = field(default=128, metadata={"help": "ViT width", "min": 1})
    vision_layers: int = field(default=4, metadata={"help": "ViT blocks", "min": 1})
    vision_heads: int = field(default=4, metadata={"help": "ViT attention heads", "min": 1})
    vision_stem_channels: int = field(
        default=0,
        metadata={
            "help": "ViT: channels of a full-resolution conv stem joined to the pixels "
            "(for noisy images); 0 = none",
            "min": 0,
        },
    )
    vision_stem_kernel: int = field(
        default=9, metadata={"help": "kernel size of that stem (odd)", "min": 1}
    )
    resnet_width: int = field(default=32, metadata={"help": "ResNet channels of stage 1", "min": 1})
    resnet_layers: list[int] = field(
        default_factory=lambda: [1, 1, 1],
        metadata={"help": "ResNet blocks per stage, comma separated", "min": 1},
    )
    text_tower: str = field(
        default="transformer",
        metadata={"help": "text encoder", "choices": ("transformer", "minilm")},
    )
    vocab_size: int = field(
        default=64, metadata={"help": "caption vocabulary (set by data)", "min": 1}
    )
    context_length: int = field(default=16, metadata={"help": "tokens per caption", "min": 1})
    text_width: int = field(default=128, metadata={"help": "text Transformer width", "min": 1})
    text_layers: int = field(default=3, metadata={"help": "text Transformer blocks", "min": 1})
    text_heads: int = field(default=4, metadata={"help": "text attention heads", "min": 1})
    dropout: float = field(
        default=0.0, metadata={"help": "dropout probability", "min": 0, "below": 1}
    )
    num_timesteps: int = field(
        default=0,
        metadata={
            "help": "diffusion steps the ViT reads t from (noised CLIP, GLIDE); 0 = clean",
            "min": 0,
        },
    )
    logit_scale_init: float = field(
        default=math.log(1 / 0.07),
        metadata={"help": "initial log temperature multiplier"},
    )
    max_logit_scale: float = field(default=100.0, metadata={"help": "clamp of exp(t)", "above": 1})
    # the options a published checkpoint needs (CLIP.from_pretrained sets them)
    activation: str = field(
        default="gelu",
        metadata={"help": "MLP activation (OpenAI: quick_gelu)", "choices": ACTIVATIONS},
    )
    norm_eps: float = field(default=1e-5, metadata={"help": "LayerNorm epsilon", "above": 0})
    vision_mlp_dim: int = field(
        default=0, metadata={"help": "ViT MLP width; 0: 4 x width", "min": 0}
    )
    text_mlp_dim: int = field(
        default=0, metadata={"help": "text MLP width; 0: 4 x width", "min": 0}
    )
    patch_bias: bool = field(default=True, metadata={"help": "bias in the ViT patch embedding"})
    text_pooling: str = field(
        default="last",
        metadata={
            "help": "text token pooled: last non-pad, argmax (highest id), eos (first eos id)",
            "choices": POOLINGS,
        },
    )
    eos_token_id: int = field(
        default=0, metadata={"help": "the eos id of --text-pooling eos", "min": 0}
    )

    def validate(self) -> None:
        check_fields(self)
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
        if self.vision_stem_channels and self.vision_stem_kernel % 2 == 0:
            raise TinygenError(
                f"--vision-stem-kernel {self.vision_stem_kernel} must be odd (the stem keeps "
                "the image size)"
            )
        if self.vision_stem_channels and self.image_tower != "vit":
            raise TinygenError("--vision-stem-channels is a ViT option; use --image-tower vit")
        if self.num_timesteps and self.image_tower != "vit":
            raise TinygenError(
                "a noised CLIP (--num-timesteps > 0) needs --image-tower vit; the ResNet "
                "tower has no timestep input"
            )
