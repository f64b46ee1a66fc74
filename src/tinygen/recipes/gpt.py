"""The character-level GPT recipe (nanoGPT's Shakespeare): presets, the text task, a
training run from a corpus name, and streaming samples from a run.

`TextTask` is what the shared Trainer needs to train a GPT (or fine-tune one): random
windows of `block_size + 1` tokens, inputs are the first `block_size`, targets the last.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import Tensor, nn

from tinygen.data.tokenizers import CharTokenizer
from tinygen.errors import TinygenError
from tinygen.models.gpt import GPT, GPTConfig
from tinygen.recipes.common import Preset, fit
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult

# nanoGPT's two Shakespeare configs (config/train_shakespeare_char.py and its CPU override;
# nanoGPT's train.py trains without biases). `baby` keeps nanoGPT's model, batch and
# schedule but peaks at lr 3e-3 instead of 1e-3: at the same 2,000 steps that takes
# tinyshakespeare's validation loss from 1.906 to 1.78 (docs/benchmarks.md; nanoGPT's own
# recipe is `--learning-rate 1e-3 --min-lr 1e-4`).
PRESETS: dict[str, Preset] = {
    "baby": Preset(
        GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False),
        TrainConfig(
            max_iters=2000,
            batch_size=12,
            learning_rate=3e-3,
            min_lr=3e-4,
            warmup_iters=100,
            lr_decay_iters=2000,
            beta2=0.99,
            eval_interval=250,
            eval_iters=20,
            log_interval=10,
        ),
        "the nanoGPT CPU config, at lr 3e-3 (0.80M parameters, minutes on a laptop)",
    ),
    "shakespeare-char": Preset(
        GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
        TrainConfig(
            max_iters=5000,
            batch_size=64,
            learning_rate=1e-3,
            min_lr=1e-4,
            warmup_iters=100,
            lr_decay_iters=5000,
            beta2=0.99,
            eval_interval=250,
            eval_iters=200,
            log_interval=10,
        ),
        "nanoGPT's train_shakespeare_char.py (10.65M parameters, for a GPU)",
    ),
}


def encode_corpus(text: str, tokenizer: CharTokenizer) -> Tensor:
    """Encode a whole corpus to a 1-D int64 tensor, vectorised through a lookup table
    (a Python loop over a megabyte of characters would take a second)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(
        max(max(map(ord, tokenizer.chars)), int(codes.max(initial=0))) + 1, -1, dtype=np.int64
    )
    for i, ch in enumerate(tokenizer.chars):
        table[ord(ch)] = i
    ids = table[codes]
    if (ids < 0).any():
        tokenizer.encode(text)  # raises the error that names the unknown characters
    return torch.from_numpy(ids)


class TextTask:
    """Next-character prediction on random windows of a tokenised corpus."""

    items_name = "tokens"

    def __init__(self, model: nn.Module, train_ids: Tensor, val_ids: Tensor, block_size: int):
        for split, ids in (("training", train_ids), ("validation", val_ids)):
            if len(ids) <= block_size + 1:
                raise TinygenError(
                    f"the {split} text has {len(ids)} characters, fewer than block_size + 2 = "
                    f"{block_size + 2}; use a longer corpus or a smaller --block-size"
                )
        self.model = model
        self.data = {"train": train_ids, "val": val_ids}
        self.block_size = block_size
        self.items_per_sample = block_size
        self._offsets = torch.arange(block_size + 1)

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        data = self.data[split]
        starts = torch.randint(len(data) - self.block_size - 1, (batch_size,), generator=generator)
        windows = data[starts[:, None] + self._offsets]  # (B, block_size + 1)
        return windows[:, :-1], windows[:, 1:]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return model(x, y)[1]


def train_gpt(
    model_config: GPTConfig,
    train_config: TrainConfig,
    out: str | Path,
    *,
    data: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a character-level GPT on the corpus `data` (a built-in name or a file; default
    shakespeare) into `out`. The vocabulary is the corpus's characters. A resumed run keeps
    its saved vocabulary and its corpus: another `data` is refused, not silently trained on."""
    from tinygen.data.corpora import load_corpus, split_train_val
    from tinygen.models.runs import load_resumable_config

    out = Path(out)
    if resume:
        saved = load_resumable_config(out, "gpt").get("data", {}).get("corpus")
        if data is not None and saved is not None and data != saved:
            raise TinygenError(
                f"cannot resume {out} on --data {data}: it was trained on {saved}; drop --data "
                f"(or pass --data {saved}) to continue it, or fine-tune on {data} with "
                f"`tinygen finetune gpt --base {out} --data {data}`"
            )
        data = data or saved
    data = data or "shakespeare"
    text = load_corpus(data)
    train_text, val_text = split_train_val(text)
    tokenizer = CharTokenizer.load(out) if resume else CharTokenizer.from_text(text)
    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    train_ids = encode_corpus(train_text, tokenizer)
    val_ids = encode_corpus(val_text, tokenizer)
    torch.manual_seed(train_config.seed)
    model = GPT(model_config)
    run_config = {
        "model_type": "gpt",
        "model": dataclasses.asdict(model_config),
        "data": {"corpus": data, "characters": len(text), "val_fraction": 0.1},
    }
    return fit(
        TextTask(model, train_ids, val_ids, model_config.block_size),
        train_config,
        out,
        run_config,
        resume=resume,
        progress=progress,
        announce=f", vocabulary {tokenizer.vocab_size}, {len(train_ids):,} training tokens",
        on_start=tokenizer.save,
    )


def load_gpt(
    run: str | Path,
    which: str = "best",
    device: str | torch.device = "cpu",
    *,
    adapter: str | Path | None = None,
    merge: bool = False,
) -> tuple[GPT, CharTokenizer]:
    """A trained GPT run (optionally with a LoRA/QLoRA adapter, merged or not) in eval mode
    on `device`, with its tokenizer."""
    from tinygen.models.runs import load_model

    model, _ = load_model(run, which=which, device="cpu", expect="gpt")
    if adapter is not None:
        from tinygen.finetune.lora import load_adapter, merge_lora

        load_adapter(model, adapter)
        if merge:
            merge_lora(model)
    assert isinstance(model, GPT)
    return model.to(device).eval(), CharTokenizer.load(run)


def stream_samples(
    model: GPT,
    tokenizer: CharTokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 500,
    num_samples: int = 1,
    seed: int = 1337,
    out: TextIO | None = None,
    **sampling,
) -> None:
    """Write `num_samples` continuations of `prompt` to `out` (default stdout), each
    character as it is generated, separated by a dashed line. `sampling`: temperature,
    top_k, top_p, use_cache (GPT.stream's keywords)."""
    if prompt == "":
        raise TinygenError("--prompt is empty; give at least one character (default is a newline)")
    if max_new_tokens < 0:
        raise TinygenError("--max-new-tokens must be >= 0")
    device = next(model.parameters()).device
    ids = tokenizer.encode_tensor(prompt)[None].to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = out or sys.stdout
    for i in range(num_samples):
        if i:
            out.write("\n---------------\n")
        out.write(prompt)
        for token in model.stream(ids, max_new_tokens, generator=generator, **sampling):
            out.write(tokenizer.decode(token[0]))
            out.flush()
        out.write("\n")
