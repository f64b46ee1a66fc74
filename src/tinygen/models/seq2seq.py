"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017).

The encoder reads the whole source with (non-causal) self-attention; the decoder writes the
target one token at a time with causal self-attention plus cross-attention to the encoder
output (the paper's Figure 1). Both are stacks of the shared `tinygen.nn.transformer.Block`
-- the same attention module as GPT's -- in pre-LN (default, trains stably) or the paper's
post-LN layout.

Embeddings are multiplied by sqrt(d_model) (sec. 3.4) and added to sinusoidal position
encodings (sec. 3.5; learned positions as an option). Source and target embeddings are
shared when the vocabularies are, and the target embedding is tied to the output
projection (sec. 3.4, Press & Wolf 2017). Training uses label-smoothed cross-entropy
(sec. 5.4, eps = 0.1) with padding ignored. Decoding lives in `seq2seq_decode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.nn.attention import KVCache, StaticKV
from tinygen.nn.embeddings import sinusoidal_embedding
from tinygen.nn.transformer import Block

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # the ids `tinygen.data.translation.Vocab` reserves


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int = field(
        default=16, metadata={"help": "set from the task's vocabulary", "min": 1}
    )
    tgt_vocab_size: int = field(
        default=16, metadata={"help": "set from the task's vocabulary", "min": 1}
    )
    d_model: int = field(default=128, metadata={"help": "width of every layer", "min": 1})
    n_head: int = field(
        default=4, metadata={"help": "attention heads; they divide --d-model", "min": 1}
    )
    n_encoder_layers: int = field(default=3, metadata={"help": "encoder blocks", "min": 1})
    n_decoder_layers: int = field(default=3, metadata={"help": "decoder blocks", "min": 1})
    mlp_mult: int = field(default=4, metadata={"help": "feed-forward width / d_model", "min": 1})
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "paper: 0.1; built-in tasks draw fresh pairs, need none",
            "min": 0,
            "below": 1,
        },
    )
    norm: str = field(
        default="pre",
        metadata={"help": "pre (stable) | post (the paper)", "choices": ("pre", "post")},
    )
    positions: str = field(
        default="sinusoidal",
        metadata={"help": "position encoding", "choices": ("sinusoidal", "learned")},
    )
    max_src_len: int = field(default=64, metadata={"help": "longest source in tokens", "min": 1})
    max_tgt_len: int = field(default=64, metadata={"help": "longest target in tokens", "min": 1})
    share_embeddings: bool = field(
        default=False, metadata={"help": "one embedding for source and target vocabularies"}
    )
    label_smoothing: float = field(
        default=0.1, metadata={"help": "paper: 0.1", "min": 0, "below": 1}
    )
    bias: bool = field(default=True, metadata={"help": "biases in Linear and LayerNorm layers"})

    def validate(self) -> None:
        check_fields(self)
        if self.d_model % self.n_head:
            raise TinygenError(
                f"d_model ({self.d_model}) must be divisible by n_head "
                f"({self.n_head}); change --d-model or --n-head"
            )
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise TinygenError(
                "share_embeddings needs one vocabulary for source and target "
                f"(sizes {self.src_vocab_size} and {self.tgt_vocab_size})"
            )


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer. Token ids are int64; id 0 is padding everywhere."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.d_model
        self.src_embed = nn.Embedding(config.src_vocab_size, d)
        self.tgt_embed = (
            self.src_embed if config.share_embeddings else nn.Embedding(config.tgt_vocab_size, d)
        )
        if config.positions == "learned":
            self.src_pos = nn.Embedding(config.max_src_len, d)
            self.tgt_pos = nn.Embedding(config.max_tgt_len, d)
        else:
            longest = max(config.max_src_len, config.max_tgt_len)
            table = sinusoidal_embedding(torch.arange(longest), d)  # (L, d)
            self.register_buffer("sinusoid", table, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        block = dict(
            norm=config.norm, bias=config.bias, dropout=config.dropout, mlp_mult=config.mlp_mult
        )
        self.encoder = nn.ModuleList(
            Block(d, config.n_head, **block) for _ in range(config.n_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            Block(d, config.n_head, causal=True, context_dim=d, **block)
            for _ in range(config.n_decoder_layers)
        )
        # pre-LN leaves the residual stream un-normalised, so each stack ends with a LayerNorm
        pre = config.norm == "pre"
        self.encoder_norm = nn.LayerNorm(d, bias=config.bias) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d, bias=config.bias) if pre else nn.Identity()
        self.lm_head = nn.Linear(d, config.tgt_vocab_size, bias=False)
        self.lm_head.weight = self.tgt_embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # N(0, 1/d) so that sqrt(d)-scaled embeddings have unit variance, like the positions
        for emb in {id(m): m for m in (self.src_embed, self.tgt_embed)}.values():
            nn.init.normal_(emb.weight, std=self.config.d_model**-0.5)
        if self.config.positions == "learned":
            nn.init.normal_(self.src_pos.weight, std=0.02)
            nn.init.normal_(self.tgt_pos.weight, std=0.02)

    def _embed(self, ids: Tensor, table: nn.Embedding, start: int, side: str) -> Tensor:
        """sqrt(d) * E[ids] + PE[start : start + T]  -> (B, T, d)."""
        t = ids.shape[1]
        limit = self.config.max_src_len if side == "src" else self.config.max_tgt_len
        if start + t > limit:
            raise TinygenError(
                f"the {'input' if side == 'src' else 'output'} has {start + t} tokens but the "
                f"model handles at most {limit} (max_{side}_len); shorten it or train a model "
                f"with a larger --max-{side}-len"
            )
        x = table(ids) * math.sqrt(self.config.d_model)
        if self.config.positions == "learned":
            pos_table = self.src_pos if side == "src" else self.tgt_pos
            pos = pos_table(torch.arange(start, start + t, device=ids.device))
        else:
            pos = self.sinusoid[start : start + t]
        return self.drop(x + pos)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src: (B, S) ids, right-padded with 0. Returns the encoder output (B, S, d) and the
        source padding mask (B, S), True for real tokens."""
        src_mask = src != PAD_ID
        x = self._embed(src, self.src_embed, 0, "src")
        for block in self.encoder:
            x = block(x, padding_mask=src_mask)
        return self.encoder_norm(x), src_mask

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        *,
        caches: list[KVCache] | None = None,
        cross_caches: list[StaticKV] | None = None,
        need_weights: bool = False,
    ) -> Tensor:
        """tgt_in: (B, T) decoder input (<bos> + target so far). Returns logits (B, T, V).

        With `caches` (one KVCache per decoder layer) `tgt_in` holds only the new positions
        and continues after the cached ones; `cross_caches` (one StaticKV per layer) hold
        the projected encoder keys/values after the first call. Right padding of the target
        needs no mask: causal attention already keeps real positions from seeing it.
        """
        start = caches[0].length if caches else 0
        x = self._embed(tgt_in, self.tgt_embed, start, "tgt")
        for i, block in enumerate(self.decoder):
            x = block(
                x,
                memory,
                context_padding_mask=src_mask,
                cache=caches[i] if caches else None,
                cross_cache=cross_caches[i] if cross_caches else None,
                need_weights=need_weights,
            )
        return self.lm_head(self.decoder_norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for decoder input `tgt_in` given source `src`."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def loss(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """Label-smoothed cross-entropy (paper sec. 5.4) of `tgt_out` (B, T), where
        `tgt_out` is `tgt_in` shifted left by one and ends with <eos>; padding is ignored."""
        logits = self(src, tgt_in)
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            tgt_out.reshape(-1),
            ignore_index=PAD_ID,
            label_smoothing=self.config.label_smoothing,
        )

    def cross_attention_weights(self, src: Tensor, tgt_in: Tensor, layer: int = -1) -> Tensor:
        """Cross-attention weights (B, H, T, S) of one decoder layer under teacher forcing:
        row t says where in the source the decoder looked to write target token t + 1."""
        memory, src_mask = self.encode(src)
        self.decode(tgt_in, memory, src_mask, need_weights=True)
        weights = self.decoder[layer].cross_attn.last_weights
        for block in self.decoder:
            block.cross_attn.last_weights = None
        return weights

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
