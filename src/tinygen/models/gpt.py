"""A GPT language model (Radford et al. 2019), the nanoGPT architecture.

Pre-LayerNorm Transformer blocks with causal self-attention and a GELU MLP, learned
position embeddings, input and output embeddings tied, residual projections initialised
with std 0.02 / sqrt(2 * n_layer) (GPT-2 paper, sec. 2.3). Generation keeps a KV cache so
each new token costs one position's work instead of the whole context's.

`GPT.from_pretrained("gpt2")` loads OpenAI's GPT-2 (any transformers `GPT2LMHeadModel`
checkpoint) into this same model, converted by models/convert/gpt2.py; GPT-2's tanh GELU
and LayerNorm epsilon are config options.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.nn.attention import KVCache
from tinygen.nn.transformer import ACTIVATIONS, Block


@dataclass
class GPTConfig:
    vocab_size: int = field(
        default=65, metadata={"help": "characters (set by the corpus)", "min": 1}
    )
    block_size: int = field(default=256, metadata={"help": "context length in tokens", "min": 1})
    n_layer: int = field(default=6, metadata={"help": "Transformer blocks", "min": 1})
    n_head: int = field(
        default=6, metadata={"help": "attention heads; they divide --n-embd", "min": 1}
    )
    n_embd: int = field(default=384, metadata={"help": "width of every layer", "min": 1})
    dropout: float = field(
        default=0.0, metadata={"help": "dropout probability", "min": 0, "below": 1}
    )
    bias: bool = field(default=True, metadata={"help": "biases in Linear and LayerNorm layers"})
    activation: str = field(
        default="gelu",
        metadata={"help": "MLP activation (GPT-2: gelu_tanh)", "choices": ACTIVATIONS},
    )
    norm_eps: float = field(default=1e-5, metadata={"help": "LayerNorm epsilon", "above": 0})
    mlp_dim: int = field(default=0, metadata={"help": "MLP width; 0: 4 x --n-embd", "min": 0})

    def validate(self) -> None:
        check_fields(self)
        if self.n_embd % self.n_head:
            raise TinygenError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                "change one of --n-embd / --n-head"
            )


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(
                config.n_embd,
                config.n_head,
                causal=True,
                bias=config.bias,
                dropout=config.dropout,
                activation=config.activation,
                norm_eps=config.norm_eps,
                mlp_dim=config.mlp_dim or None,
            )
            for _ in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)

        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> GPT:
        """A transformers GPT-2 checkpoint (a local directory, or a Hub name such as gpt2 /
        gpt2-xl, downloaded only then) in our GPT, in eval mode; its tokenizer is the
        checkpoint's own (`transformers.AutoTokenizer.from_pretrained` of the directory)."""
        from tinygen.models.convert.gpt2 import convert_gpt2_state_dict, gpt_config_from_hf
        from tinygen.models.pretrained import load_checkpoint

        checkpoint = load_checkpoint(
            name_or_dir, model_types=("gpt2",), family="GPT-2", example="gpt2"
        )
        model = cls(GPTConfig(**gpt_config_from_hf(checkpoint.config)))
        conversion = convert_gpt2_state_dict(checkpoint.state_dict, model.state_dict())
        model.load_state_dict(conversion.state_dict)
        return model.eval()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default, as nanoGPT reports."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        caches: list[KVCache] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx: (B, T) token ids. Returns logits (B, T, vocab) and the mean cross-entropy
        against `targets` (B, T) if given (-1 targets are ignored).

        With `caches` (one `KVCache` per layer) the positions continue after the cached ones.
        """
        b, t = idx.shape
        past = caches[0].length if caches else 0
        if past + t > self.config.block_size:
            raise TinygenError(
                f"sequence of {past + t} tokens exceeds block_size {self.config.block_size}"
            )
        pos = torch.arange(past, past + t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, n_embd)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=caches[i] if caches else None)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue `idx` (B, T) by `max_new_tokens` tokens; returns (B, T + max_new_tokens).

        temperature 0 is greedy decoding. See `stream` for the context window policy.
        """
        new_tokens = list(
            self.stream(
                idx,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                use_cache=use_cache,
                generator=generator,
            )
        )
        return torch.cat([idx, *new_tokens], dim=1)

    @torch.no_grad()
    def stream(
        self,
        idx: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[Tensor]:
        """Yield the new tokens one step at a time, each (B, 1).

        Context window: the model sees the tokens from a window start to the end. When the
        window would exceed block_size, it restarts at the last block_size // 2 tokens.
        With learned absolute positions, a window that slides by one token every step (as
        nanoGPT crops) shifts every position and makes each step a full recompute, so a
        KV cache could not help; restarting at half the block re-fills the cache once per
        block_size // 2 tokens instead. `use_cache=False` recomputes the same windows from
        scratch every step, so both paths produce the same tokens.
        """
        if idx.shape[1] == 0:
            raise TinygenError("generate needs at least one token of context (an empty prompt)")
        if max_new_tokens < 0:
            raise TinygenError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        block = self.config.block_size
        tokens = idx
        start = max(0, tokens.shape[1] - block)
        caches: list[KVCache] | None = None
        for _ in range(max_new_tokens):
            if tokens.shape[1] - start > block:
                start = tokens.shape[1] - block // 2
                caches = None
            if not use_cache:
                logits, _ = self(tokens[:, start:])
            elif caches is None:
                caches = [KVCache() for _ in self.blocks]
                logits, _ = self(tokens[:, start:], caches=caches)
            else:
                logits, _ = self(tokens[:, -1:], caches=caches)
            next_token = sample_next_token(
                logits[:, -1, :],
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            tokens = torch.cat([tokens, next_token], dim=1)
            yield next_token


def sample_next_token(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token from logits (B, vocab): greedy at temperature 0, else sample
    from softmax(logits / T) restricted to the top-k tokens and/or the nucleus of mass p
    (Holtzman et al. 2019). Returns (B, 1)."""
    if temperature < 0:
        raise TinygenError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k <= 0:
            raise TinygenError(f"top_k must be positive, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise TinygenError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already hold top_p of the mass
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
