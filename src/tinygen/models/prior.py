"""unCLIP's diffusion prior: a caption -> a CLIP image embedding (Ramesh et al. 2022, sec. 2.2).

A decoder-only (causal) Transformer of the shared `Block`s reads, in this order,

    [caption token features (T), CLIP text embedding, timestep embedding,
     noised CLIP image embedding z_t, a learned final query]          (T + 4 positions)

and reads its prediction off the final query: the *clean* image embedding z_0
(`prediction_type="sample"`, the paper's choice: "we train the prior to predict the
unnoised z_i directly"), trained with the one objective, `diffusion_loss`, on vectors
(B, D) -- the loss is ||f(z_t, t, y) - z_0||^2 averaged over the D entries.

Embedding scale: CLIP embeddings are L2-normalised and then multiplied by sqrt(D), so that
an entry has mean square exactly 1 (the paper multiplies ViT-H/16's by 17.2, measured;
sqrt(D) is the value for which the *mean square* is 1 whatever the embedding's direction,
which we use rather than a measured per-run std so a run needs no statistics pass).
`generate` returns embeddings divided back to unit norm.

Classifier-free guidance: in training the text condition -- the caption tokens and the
CLIP text embedding together -- is replaced 10% of the time by the null condition (all
`<pad>` tokens, the zero text embedding). The noised image embedding is never dropped: it
is the diffusion state, not a condition (DALLE2-pytorch's issue #285 masked it as well).

Sampling runs the one loop (`diffusion.sampling.sample`) through the one CFG wrapper on
(B, D) tensors, with no clipping of x_0 (embeddings have no [-1, 1] range). With
`rerank=2` (the paper, sec. 2.2) two embeddings are drawn per caption and the one with the
higher dot product with the caption's text embedding is kept; `rerank=1` keeps one draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.diffusion import guidance as guidance_lib
from tinygen.diffusion.objective import diffusion_loss
from tinygen.diffusion.sampling import SamplerConfig, sample
from tinygen.diffusion.schedule import BETA_SCHEDULES, NoiseSchedule
from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.nn.embeddings import sinusoidal_embedding
from tinygen.nn.transformer import Block

PRIOR_SAMPLER = SamplerConfig(steps=64, clip_sample=False)  # the paper's 64 strided steps


@dataclass
class PriorConfig:
    """The diffusion prior at our scale (the paper's: 24 layers, width 2048)."""

    embed_dim: int = field(default=0, metadata={"help": "CLIP embedding width (from the run)"})
    vocab_size: int = field(default=0, metadata={"help": "caption vocabulary (from the data)"})
    context_length: int = field(default=16, metadata={"help": "caption tokens", "min": 2})
    width: int = field(default=256, metadata={"help": "Transformer width", "min": 8})
    layers: int = field(default=4, metadata={"help": "Transformer layers", "min": 1})
    heads: int = field(default=4, metadata={"help": "attention heads", "min": 1})
    beta_schedule: str = field(
        default="cosine", metadata={"help": "noise schedule", "choices": BETA_SCHEDULES}
    )
    num_train_timesteps: int = field(
        default=1000, metadata={"help": "steps of the forward process", "min": 1}
    )
    cond_drop_prob: float = field(
        default=0.1,
        metadata={"help": "chance of the null text condition in training", "min": 0, "below": 1},
    )

    @property
    def prediction_type(self) -> str:
        return "sample"

    def validate(self) -> None:
        check_fields(self)
        if self.embed_dim < 1 or self.vocab_size < 5:
            raise TinygenError(
                f"the prior needs the CLIP embedding width and the caption vocabulary "
                f"(got embed_dim={self.embed_dim}, vocab_size={self.vocab_size})"
            )
        if self.width % self.heads:
            raise TinygenError(f"prior width {self.width} is not divisible by {self.heads} heads")


def to_prior_space(embedding: Tensor) -> Tensor:
    """CLIP embeddings (B, D) -> L2-normalised times sqrt(D) (zero stays zero)."""
    return F.normalize(embedding.float(), dim=-1) * math.sqrt(embedding.shape[-1])


class DiffusionPrior(nn.Module):
    """`forward(z_t, t, cond)` -> the predicted clean embedding (B, D), in prior space."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.schedule = NoiseSchedule(c.beta_schedule, c.num_train_timesteps)
        self.token_emb = nn.Embedding(c.vocab_size, c.width)
        self.text_proj = nn.Linear(c.embed_dim, c.width)
        self.time_mlp = nn.Sequential(
            nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width)
        )
        self.x_proj = nn.Linear(c.embed_dim, c.width)
        self.query = nn.Parameter(torch.randn(c.width) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(c.context_length + 4, c.width) * 0.01)
        self.blocks = nn.ModuleList(Block(c.width, c.heads, causal=True) for _ in range(c.layers))
        self.ln_final = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.embed_dim)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def null_condition(self, batch_size: int, device: torch.device | str = "cpu") -> dict:
        """The dropped text condition: every token `<pad>` and the zero text embedding."""
        c = self.config
        return {
            "tokens": torch.zeros(batch_size, c.context_length, dtype=torch.long, device=device),
            "embedding": torch.zeros(batch_size, c.embed_dim, device=device),
        }

    def forward(self, z_t: Tensor, t: Tensor, cond: dict) -> Tensor:
        """z_t (B, D) at timesteps t (B,); cond: `tokens` (B, T) caption ids and
        `embedding` (B, D) the CLIP text embedding in prior space -> z_0 estimate (B, D)."""
        c = self.config
        tokens, text = cond["tokens"], cond["embedding"]
        if tokens.dim() != 2 or tokens.shape[1] != c.context_length:
            raise TinygenError(
                f"caption tokens must be (B, {c.context_length}), got {tuple(tokens.shape)}"
            )
        if z_t.shape[-1] != c.embed_dim or text.shape[-1] != c.embed_dim:
            raise TinygenError(
                f"this prior works on {c.embed_dim}-wide CLIP embeddings, got "
                f"{z_t.shape[-1]} and {text.shape[-1]}; use the CLIP run it was trained with"
            )
        b = z_t.shape[0]
        time = self.time_mlp(sinusoidal_embedding(t, c.width).to(z_t.dtype))
        x = torch.cat(
            [
                self.token_emb(tokens),  # (B, T, W)
                self.text_proj(text.to(z_t.dtype))[:, None],  # (B, 1, W)
                time[:, None],
                self.x_proj(z_t)[:, None],
                self.query.expand(b, 1, -1),
            ],
            dim=1,
        )  # (B, T + 4, W)
        x = x + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.out(self.ln_final(x[:, -1]))  # (B, D): read off the final query

    def training_loss(
        self, z_0: Tensor, noise: Tensor, t: Tensor, cond: dict, drop: Tensor | None = None,
        *, forward: nn.Module | None = None,
    ) -> Tensor:  # fmt: skip
        """MSE between the predicted and the true clean embedding z_0 (B, D) (prior space),
        the text condition replaced by the null one where `drop` (B,) is True."""
        from tinygen.models.conditioning import drop_condition

        forward = forward or self
        if drop is not None:
            cond = drop_condition(cond, self.null_condition(1, z_0.device), drop)
        return diffusion_loss(
            lambda x, tt: forward(x, tt, cond), self.schedule, z_0, noise, t,
            prediction_type="sample",
        )  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        tokens: Tensor,
        text_embedding: Tensor,
        *,
        guidance: float = 1.0,
        rerank: int = 2,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        x_T: Tensor | None = None,
    ) -> Tensor:
        """One unit-norm CLIP image embedding (B, D) per caption: tokens (B, T), CLIP text
        embeddings (B, D) (any norm). `rerank` candidates are drawn per caption and the one
        with the highest dot product with its text embedding kept (paper sec. 2.2).
        x_T (rerank * B, D): the starting noise, candidate-major (default from `generator`)."""
        if rerank < 1:
            raise TinygenError(f"rerank must be >= 1 (candidates per caption), got {rerank}")
        device = self.query.device
        b = tokens.shape[0]
        text = to_prior_space(text_embedding.to(device))
        cond = {"tokens": tokens.to(device).repeat(rerank, 1), "embedding": text.repeat(rerank, 1)}
        null = self.null_condition(b * rerank, device)
        model_fn = guidance_lib.classifier_free_guidance(self, cond, null, guidance)
        sampler = sampler or PRIOR_SAMPLER
        options = {**sampler.sample_options(), "clip_sample": False, "thresholding": False}
        z = sample(
            model_fn, (b * rerank, self.config.embed_dim), schedule=self.schedule,
            prediction_type="sample", generator=generator, device=device, x_T=x_T,
            progress=False, **options,
        )  # fmt: skip
        return pick_best(F.normalize(z, dim=-1).view(rerank, b, -1), text_embedding.to(device))


def pick_best(candidates: Tensor, text_embedding: Tensor) -> Tensor:
    """candidates (K, B, D), text (B, D) -> (B, D): per caption the candidate with the
    highest dot product with the text embedding (ties: the first)."""
    scores = (candidates * text_embedding[None]).sum(-1)  # (K, B)
    best = scores.argmax(0)  # (B,)
    return candidates[best, torch.arange(candidates.shape[1], device=candidates.device)]
