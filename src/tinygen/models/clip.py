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

- A noised CLIP (GLIDE, Nichol et al. 2021, sec. 3) for guiding diffusion: with
  `num_timesteps > 0` the ViT also reads the diffusion step t of a noised image x_t.
- OpenAI's released CLIPs load into these same towers (`CLIP.from_pretrained`, converted
  by models/convert/clip.py) through options: QuickGELU, no patch-embedding bias, the MLP
  width, the LayerNorm epsilon, and pooling at the end-of-text id.

The towers have keyword constructors (`VisionTransformer(image_size=..., width=...)`,
`from_config(config)` builds them from a `CLIPConfig`, in clip_config.py); the projections
and the temperature belong to `CLIP`, so saved runs keep their weight names. The loss is `clip_loss`
(clip_loss.py), re-exported here.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.models.clip_config import POOLINGS, CLIPConfig
from tinygen.models.clip_loss import clip_logits, clip_loss
from tinygen.models.clip_resnet import ResNetTower
from tinygen.nn.embeddings import PatchEmbedding, sinusoidal_embedding
from tinygen.nn.transformer import Block

__all__ = [
    "CLIP",
    "CLIPConfig",
    "TextTransformer",
    "VisionTransformer",
    "clip_logits",
    "clip_loss",
]


class VisionTransformer(nn.Module):
    """ViT image tower: (B, C, H, W) -> (B, width), the final-LayerNorm class token.

    Patch embedding, a class token, learned positions, `layers` shared pre-LN `Block`s
    (Dosovitskiy et al. 2020; CLIP's ViT, Radford et al. 2021, sec. 2.4).

    With `num_timesteps > 0` it is the image tower of a noised CLIP (GLIDE, Nichol et al.
    2021, sec. 3): it reads x_t, an image noised to diffusion step t, together with t, so
    its image-text similarity can guide sampling at every step. The timestep enters as the
    sinusoidal embedding of t (`sinusoidal_embedding`, as the U-Net's) through a linear
    layer, added to every token -- the class token and each patch token -- before `ln_pre`.
    Added to every token rather than given as an extra token because (1) each patch's
    features can depend on the noise level from the first block on, which matters in a
    tower of a few blocks; (2) the sequence and its position table stay the clean tower's,
    so the parameters are exactly a clean ViT's plus `time_embedding.*`, and a trained clean
    CLIP's weights load into a noised one (`strict=False`) to start its fine-tuning.
    Sinusoidal rather than a learned row per step (GLIDE's released model learns one in
    place of the class token) so that neighbouring noise levels start with neighbouring
    embeddings when a small run sees each of the 1000 steps only rarely.

    With `num_timesteps == 0` (the default) there is no timestep input: the parameters,
    their names and the outputs are those of the clean tower.

    With `stem_channels > 0`, a convolutional stem: one `stem_kernel` x `stem_kernel`
    convolution at full resolution, GELU, its feature maps concatenated to the pixels before
    the patch embedding. "Early convolutions help transformers see better" (Xiao et al.
    2021); here the reason is noise: at half the diffusion steps a small object's shape is a
    faint pattern spread over four patches, and a kernel as wide as the object is a learned
    bank of matched filters, which a 4x4 patch's linear map is not (docs/benchmarks.md,
    section glide, "The noised CLIP"). Concatenated rather than replacing the pixels so that
    a clean ViT's weights carry over exactly: the patch embedding's columns for the stem's
    channels start at zero (`recipes/clip_noised.py: warm_start`).
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        in_channels: int = 3,
        dropout: float = 0.0,
        num_timesteps: int = 0,
        patch_bias: bool = True,
        activation: str = "gelu",
        norm_eps: float = 1e-5,
        mlp_dim: int | None = None,
        stem_channels: int = 0,
        stem_kernel: int = 9,
    ) -> None:
        super().__init__()
        if stem_channels and stem_kernel % 2 == 0:
            raise TinygenError(
                f"the stem's kernel must be odd (it keeps the size), got {stem_kernel}"
            )
        if num_timesteps < 0:
            raise TinygenError(
                f"num_timesteps must be 0 (no timestep) or positive, got {num_timesteps}"
            )
        self.patch_embed = PatchEmbedding(
            image_size=image_size,
            patch_size=patch_size,
            in_channels=in_channels + stem_channels,
            dim=width,
            bias=patch_bias,
        )
        self.class_token = nn.Parameter(torch.randn(width) * width**-0.5)
        self.pos_embedding = nn.Parameter(
            torch.randn(self.patch_embed.num_patches + 1, width) * 0.02
        )
        block = dict(dropout=dropout, activation=activation, norm_eps=norm_eps, mlp_dim=mlp_dim)
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps)
        self.blocks = nn.ModuleList(Block(width, heads, **block) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)
        self.out_dim = width
        self.num_timesteps = num_timesteps
        # created last, so a tower with timesteps draws the clean tower's initial weights
        self.time_embedding = nn.Linear(width, width) if num_timesteps > 0 else None
        self.stem = None
        if stem_channels:
            self.stem = nn.Conv2d(in_channels, stem_channels, stem_kernel, padding=stem_kernel // 2)

    @classmethod
    def from_config(cls, config: CLIPConfig) -> VisionTransformer:
        return cls(
            image_size=config.image_size,
            patch_size=config.patch_size,
            width=config.vision_width,
            layers=config.vision_layers,
            heads=config.vision_heads,
            in_channels=config.in_channels,
            dropout=config.dropout,
            num_timesteps=config.num_timesteps,
            patch_bias=config.patch_bias,
            activation=config.activation,
            norm_eps=config.norm_eps,
            mlp_dim=config.vision_mlp_dim or None,
            stem_channels=config.vision_stem_channels,
            stem_kernel=config.vision_stem_kernel,
        )

    def _timestep_embedding(self, t: Tensor | int | None, batch: int, device) -> Tensor:
        """(B, width) embedding of t; t=None reads as t = 0, the clean image."""
        t = torch.zeros(batch, device=device) if t is None else torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise TinygenError(
                f"t of shape {tuple(t.shape)} does not fit {batch} images; give one timestep "
                "per image, shape (B,), or a single number"
            )
        if bool(((t < 0) | (t > self.num_timesteps - 1)).any()):
            raise TinygenError(
                f"timesteps must lie in [0, {self.num_timesteps - 1}] for this noised CLIP, "
                f"got {t.min().item()}..{t.max().item()}"
            )
        emb = sinusoidal_embedding(t, self.out_dim)  # (B, width)
        return self.time_embedding(emb.to(self.time_embedding.weight.dtype))

    def forward(self, images: Tensor, t: Tensor | int | None = None) -> Tensor:
        """images (B, C, H, W), t (B,) diffusion steps (noised tower only) -> (B, width)."""
        if t is not None and self.time_embedding is None:
            raise TinygenError(
                "this ViT takes no timestep (num_timesteps=0); pass t only to a noised CLIP "
                "(CLIPConfig.num_timesteps > 0)"
            )
        if self.stem is not None:
            images = torch.cat([images, F.gelu(self.stem(images))], dim=1)
        x = self.patch_embed(images)  # (B, P, width)
        cls = self.class_token.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding  # (B, P+1, width)
        if self.time_embedding is not None:
            x = x + self._timestep_embedding(t, x.shape[0], x.device)[:, None]
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0])  # (B, width)


class TextTransformer(nn.Module):
    """Causal Transformer text tower: (B, T) ids (pad = 0 after `<eot>`) -> (B, width),
    the final-LayerNorm state at the `<eot>` token (CLIP sec. 2.4).

    `forward(tokens, return_tokens=True)` returns (pooled (B, width), token features
    (B, T, width) after the final LayerNorm): the token sequence is what a text-to-image
    U-Net cross-attends to, and `pooled` is its row at `<eot>`. Under the causal mask a
    position sees only itself and earlier tokens, so the rows after `<eot>` (padding)
    never change the rows before; a consumer should still mask them (`tokens != 0`).

    `pooling` picks the `<eot>` row: `last` (ours: the last token before the pad 0s),
    `argmax` (the highest id, OpenAI's rule: `<|endoftext|>` is the last id of its
    vocabulary) or `eos` (the first `eos_token_id`, transformers' rule for newer configs).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        context_length: int,
        width: int,
        layers: int,
        heads: int,
        dropout: float = 0.0,
        activation: str = "gelu",
        norm_eps: float = 1e-5,
        mlp_dim: int | None = None,
        pooling: str = "last",
        eos_token_id: int = 0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise TinygenError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        block = dict(dropout=dropout, activation=activation, norm_eps=norm_eps, mlp_dim=mlp_dim)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.blocks = nn.ModuleList(
            Block(width, heads, causal=True, **block) for _ in range(layers)
        )
        self.ln_final = nn.LayerNorm(width, eps=norm_eps)
        self.out_dim = width
        self.context_length = context_length
        self.pooling, self.eos_token_id = pooling, eos_token_id

    @classmethod
    def from_config(cls, config: CLIPConfig) -> TextTransformer:
        return cls(
            vocab_size=config.vocab_size,
            context_length=config.context_length,
            width=config.text_width,
            layers=config.text_layers,
            heads=config.text_heads,
            dropout=config.dropout,
            activation=config.activation,
            norm_eps=config.norm_eps,
            mlp_dim=config.text_mlp_dim or None,
            pooling=config.text_pooling,
            eos_token_id=config.eos_token_id,
        )

    @classmethod
    def from_hf(cls, hf_config: dict, hf_state_dict: dict[str, Tensor]) -> TextTransformer:
        """A transformers CLIP text tower (a CLIPModel's or a CLIPTextModel's config.json
        and tensors, e.g. Stable Diffusion's text encoder) in this tower, eval mode."""
        from tinygen.models.convert.clip import (
            clip_text_config_from_hf,
            convert_clip_text_state_dict,
        )

        tower = cls(**clip_text_config_from_hf(hf_config))
        tower.load_state_dict(convert_clip_text_state_dict(hf_state_dict, tower.state_dict()))
        return tower.eval()

    def forward(
        self, tokens: Tensor, return_tokens: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        b, t = tokens.shape
        if t > self.context_length:
            raise TinygenError(
                f"captions of {t} tokens exceed the context length "
                f"{self.context_length}; shorten them or retrain"
            )
        x = self.token_embedding(tokens) + self.pos_embedding[:t]  # (B, T, width)
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)  # (B, T, width)
        if self.pooling == "last":
            eot = (tokens != 0).sum(dim=1).clamp(min=1) - 1  # the last real token: <eot>
        elif self.pooling == "argmax":
            eot = tokens.argmax(dim=1)  # the first highest id
        else:
            eot = (tokens == self.eos_token_id).int().argmax(dim=1)  # the first eos
        pooled = x[torch.arange(b, device=tokens.device), eot]  # (B, width)
        return (pooled, x) if return_tokens else pooled


class CLIP(nn.Module):
    """`forward(images, tokens)` -> (image_features, text_features, logit_scale): unit-norm
    (B, embed_dim) embeddings and the multiplier exp(t), ready for `clip_loss`.
    `forward(x_t, tokens, t)` for a noised CLIP (`config.num_timesteps > 0`)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if config.image_tower == "vit":
            self.visual = VisionTransformer.from_config(config)
        else:
            self.visual = ResNetTower(
                image_size=config.image_size,
                in_channels=config.in_channels,
                width=config.resnet_width,
                layers=list(config.resnet_layers),
                n_head=config.vision_heads,
            )
        if config.text_tower == "transformer":
            self.text = TextTransformer.from_config(config)
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

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> CLIP:
        """A transformers `CLIPModel` checkpoint (a local directory, or a Hub name such as
        openai/clip-vit-base-patch32, downloaded only then) in our towers, in eval mode.

        Its `encode_image` takes the pixel values the checkpoint's CLIPProcessor makes
        (normalised by CLIP's mean and std, not our [-1, 1]); `encode_text` its token ids
        (B, T). With `normalize=False` they equal transformers' `get_image_features` /
        `get_text_features` (projected, not normalised); by default they are unit-norm, as
        `CLIPModel.forward` uses them for `logits_per_image`."""
        from tinygen.models.convert.clip import clip_config_from_hf, convert_clip_state_dict
        from tinygen.models.pretrained import load_checkpoint

        checkpoint = load_checkpoint(
            name_or_dir,
            model_types=("clip",),
            family="CLIP",
            example="openai/clip-vit-base-patch32",
        )
        model = cls(CLIPConfig(**clip_config_from_hf(checkpoint.config)))
        conversion = convert_clip_state_dict(checkpoint.state_dict, model.state_dict())
        model.load_state_dict(conversion.state_dict)
        return model.eval()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def encode_image(
        self, images: Tensor, t: Tensor | int | None = None, *, normalize: bool = True
    ) -> Tensor:
        """images (B, C, H, W) in [-1, 1] -> (B, embed_dim). A noised CLIP
        (`num_timesteps > 0`) reads x_t with its diffusion steps t (B,); t=None is t = 0."""
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
        if t is None:
            pooled = self.visual(images)
        elif isinstance(self.visual, VisionTransformer):
            pooled = self.visual(images, t)
        else:
            raise TinygenError(
                "this CLIP's ResNet image tower takes no timestep; a noised CLIP uses "
                "image_tower='vit' with num_timesteps > 0"
            )
        features = self.visual_projection(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self, tokens: Tensor, *, normalize: bool = True, return_tokens: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """tokens (B, T) int64 from the run's tokenizer -> (B, embed_dim); with
        `return_tokens=True` also the text tower's token features (B, T, text width),
        unprojected, for a model that cross-attends to the caption."""
        pooled, sequence = self.text(tokens, return_tokens=True)
        features = self.text_projection(pooled)
        features = F.normalize(features, dim=-1) if normalize else features
        return (features, sequence) if return_tokens else features

    def forward(
        self, images: Tensor, tokens: Tensor, t: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Unit-norm image and text embeddings and exp(t); `t` for a noised CLIP."""
        return self.encode_image(images, t), self.encode_text(tokens), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep 0 <= t <= log(max_logit_scale), i.e. 1 <= exp(t) <= 100 (CLIP sec. 2.5);
        called after each optimiser step."""
        self.logit_scale.clamp_(0.0, math.log(self.config.max_logit_scale))

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
