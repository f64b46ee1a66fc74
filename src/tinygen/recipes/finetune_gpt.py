"""The GPT fine-tuning recipe: a pretrained tinygen GPT on new text, four ways.

- full: every weight trains (the baseline LoRA is measured against).
- lora: the base is frozen; rank-r adapters on the chosen linear layers train.
- qlora: the frozen base's linear layers are stored in NF4 (QLoRA), adapters on top.
- qlora with double quantisation (the default for qlora): the NF4 block constants are
  8-bit too.

The shared Trainer runs all four. For the adapter methods it is handed a
`TrainableView` of the adapter, so its optimiser, checkpoints and resume cover kilobytes,
and the output directory holds a PEFT-format adapter (`adapter_config.json`,
`adapter_model.safetensors`) that `tinygen sample gpt --run BASE --adapter OUT` uses. A
full fine-tune writes a complete GPT run directory instead.

The base is a `tinygen train gpt` run or, as `hf:NAME_OR_DIR`, OpenAI's GPT-2 in our GPT
(nanoGPT's finetune-Shakespeare recipe): its BPE tokenizer reads the corpus, the adapter
goes on with `sample gpt --hf NAME --adapter OUT`, and a full fine-tune is also written
back as a transformers GPT-2 checkpoint in OUT/hf.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tinygen.fields import check_fields
from tinygen.io import BEST_FILE, load_weights, write_json
from tinygen.recipes.common import fit
from tinygen.train.config import TrainConfig

METHODS = ("full", "lora", "qlora")
RESULT_FILE = "finetune_result.json"


@dataclass
class FinetuneConfig:
    method: str = field(
        default="lora",
        metadata={"help": "what trains: all weights or an adapter", "choices": METHODS},
    )
    r: int = field(default=8, metadata={"help": "LoRA rank", "min": 1})
    alpha: float = field(
        default=16.0, metadata={"help": "LoRA alpha (scaling alpha / r)", "above": 0}
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "dropout on the LoRA input", "min": 0, "below": 1}
    )
    targets: str = field(
        default="qkv_proj,out_proj,fc,proj",
        metadata={"help": "comma-separated layer names, or all-linear"},
    )
    double_quant: bool = field(default=True, metadata={"help": "qlora: 8-bit NF4 constants"})
    blocksize: int = field(default=64, metadata={"help": "qlora: NF4 block size", "min": 1})
    data: str = field(default="milton", metadata={"help": "milton | sonnets | shakespeare | PATH"})
    eval_batches: int = field(
        default=50, metadata={"help": "fixed batches for before/after loss", "min": 1}
    )
    block_size: int = field(
        default=0, metadata={"help": "tokens per training window; 0: the base's context", "min": 0}
    )

    def validate(self) -> None:
        check_fields(self)

    @property
    def label(self) -> str:
        if self.method == "qlora":
            return "qlora-dq" if self.double_quant else "qlora"
        return self.method

    def target_list(self) -> str | list[str]:
        return (
            "all-linear"
            if self.targets == "all-linear"
            else [t.strip() for t in self.targets.split(",") if t.strip()]
        )


# Short fine-tunes from a pretrained baby GPT: adapters take a larger step than full weights.
DEFAULT_LR = {"full": 3e-4, "lora": 2e-3, "qlora": 2e-3}


def default_train_config(method: str) -> TrainConfig:
    lr = DEFAULT_LR[method]
    return TrainConfig(
        max_iters=500,
        batch_size=12,
        learning_rate=lr,
        min_lr=lr / 10,
        warmup_iters=20,
        eval_interval=100,
        eval_iters=20,
        log_interval=10,
    )


def keep_known_characters(text: str, chars: list[str]) -> tuple[str, dict[str, int]]:
    """Drop characters the base model's vocabulary lacks (a character-level GPT cannot
    learn a new character without growing its embedding); returns the kept text and the
    dropped characters with their counts, which the caller reports."""
    known = set(chars)
    dropped: dict[str, int] = {}
    for c in text:
        if c not in known:
            dropped[c] = dropped.get(c, 0) + 1
    if not dropped:
        return text, dropped
    return "".join(c for c in text if c in known), dropped


def load_base(base: str, corpus: str):
    """(model, tokenizer, encode, text, dropped characters) of a base: a tinygen GPT run, or
    `hf:NAME_OR_DIR`, GPT-2 in our GPT with its byte-level BPE (which drops nothing)."""
    from tinygen.data.corpora import load_corpus
    from tinygen.recipes.pretrained_gpt import HF_PREFIX, load_pretrained_gpt

    if base.startswith(HF_PREFIX):
        model, tokenizer = load_pretrained_gpt(base.removeprefix(HF_PREFIX))
        return model, tokenizer, tokenizer.encode_tensor, load_corpus(corpus), {}
    from tinygen.data.tokenizers import CharTokenizer
    from tinygen.models.runs import load_model
    from tinygen.recipes.gpt import encode_corpus

    model, _ = load_model(base, which="best", expect="gpt")
    tokenizer = CharTokenizer.load(base)
    text, dropped = keep_known_characters(load_corpus(corpus), tokenizer.chars)
    return model, tokenizer, lambda part: encode_corpus(part, tokenizer), text, dropped


@torch.no_grad()
def fixed_val_loss(model: nn.Module, task, batches: int, batch_size: int, seed: int = 0) -> float:
    """Mean loss over the same `batches` validation windows every time it is called, so
    losses before and after fine-tuning (and across methods) compare like for like."""
    from tinygen.train.device import autocast
    from tinygen.train.trainer import to_device

    device = next(p.device for p in model.parameters())
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        batch = to_device(task.get_batch("val", batch_size, gen), device)
        with autocast(device):
            total += task.loss(model, batch).float().item()
    model.train(was_training)
    return total / batches


@dataclass
class FinetuneResult:
    method: str
    val_loss_before: float
    val_loss_after: float
    trainable: int
    total: int
    peak_memory_bytes: int
    estimated_bytes: int
    train_seconds: float
    steps: int
    out_dir: str
    adapter_bytes: int | None = None

    @property
    def improvement(self) -> float:
        return self.val_loss_before - self.val_loss_after

    def summary(self) -> str:
        size = f", adapter {self.adapter_bytes / 1024:.1f} KiB" if self.adapter_bytes else ""
        return (
            f"{self.method}: val loss {self.val_loss_before:.4f} -> {self.val_loss_after:.4f} "
            f"(improvement {self.improvement:.4f}); trainable {self.trainable:,} of "
            f"{self.total:,} ({100 * self.trainable / self.total:.2f}%); peak memory "
            f"{self.peak_memory_bytes / 2**20:.0f} MiB (weights+grads+AdamW estimate "
            f"{self.estimated_bytes / 2**20:.1f} MiB); {self.train_seconds:.1f} s for "
            f"{self.steps} steps{size}"
        )


def finetune_gpt(
    base_run: str | Path,
    out_dir: str | Path,
    ft: FinetuneConfig,
    train: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune the GPT of `base_run` on `ft.data` with `ft.method`; write to `out_dir`."""
    from tinygen.data.corpora import split_train_val
    from tinygen.finetune.lora import TrainableView, apply_lora, count_parameters, save_adapter
    from tinygen.finetune.memory import module_inventory, peak_memory_bytes, training_bytes
    from tinygen.finetune.nf4 import quantize_model
    from tinygen.recipes.gpt import TextTask
    from tinygen.recipes.pretrained_gpt import HF_PREFIX, save_as_gpt2
    from tinygen.train.device import resolve_device

    ft.validate()
    train = train or default_train_config(ft.method)
    out_dir, base = Path(out_dir), str(base_run)
    pretrained = base.startswith(HF_PREFIX)
    model, tokenizer, encode, text, dropped = load_base(base, ft.data)
    if dropped:
        shown = ", ".join(f"{c!r} x{n}" for c, n in sorted(dropped.items())[:10])
        warnings.warn(
            f"dropped {sum(dropped.values())} characters of {ft.data} that the base "
            f"vocabulary lacks: {shown}",
            stacklevel=2,
        )
    train_text, val_text = split_train_val(text)
    train_ids, val_ids = encode(train_text), encode(val_text)
    device = resolve_device(train.device)
    model = model.to(device)
    block_size = min(ft.block_size or model.config.block_size, model.config.block_size)
    inventory = module_inventory(model, base)
    eval_task = TextTask(model, train_ids, val_ids, block_size)
    before = fixed_val_loss(model, eval_task, ft.eval_batches, train.batch_size)

    record = {
        "model_type": "gpt" if ft.method == "full" else "lora-adapter",
        "model": dataclasses.asdict(model.config),
        "data": {
            "corpus": ft.data,
            "characters": len(text),
            "dropped_characters": sum(dropped.values()),
            "val_fraction": 0.1,
        },
        "finetune": {**dataclasses.asdict(ft), "base_run": base},
    }
    if ft.method == "full":
        model.requires_grad_(True)
        trained: nn.Module = model
        estimate = training_bytes(inventory, "full", "all-linear", 1)
    else:
        if ft.method == "qlora":
            quantize_model(model, blocksize=ft.blocksize, double_quant=ft.double_quant)
        apply_lora(
            model,
            ft.target_list(),
            r=ft.r,
            alpha=ft.alpha,
            dropout=ft.lora_dropout,
            seed=train.seed,
        )
        trained = TrainableView(model)
        estimate = training_bytes(inventory, ft.label, ft.target_list(), ft.r, base_bytes=4)
    trainable, total = count_parameters(model)

    def on_start(out: Path) -> None:
        if ft.method == "full" and not pretrained:
            tokenizer.save(out)
        if progress:  # counts that see NF4 weights, which are buffers, not parameters
            print(
                f"{ft.label}: {trainable:,} of {total:,} parameters trainable, "
                f"{len(train_ids):,} training tokens of {ft.data} -> {out}",
                file=sys.stderr,
            )

    start = time.perf_counter()
    result = fit(
        TextTask(trained, train_ids, val_ids, block_size),
        train,
        out_dir,
        record,
        resume=resume,
        progress=progress,
        announce=False,
        on_start=on_start,
    )
    seconds = time.perf_counter() - start
    if result.interrupted:
        raise KeyboardInterrupt
    load_weights(trained, out_dir / BEST_FILE)  # the best validation checkpoint
    after = fixed_val_loss(model, eval_task, ft.eval_batches, train.batch_size)
    adapter_bytes = None
    if ft.method != "full":
        save_adapter(model, out_dir, base_model_name_or_path=base)
        adapter_bytes = (out_dir / "adapter_model.safetensors").stat().st_size
    elif pretrained:
        save_as_gpt2(model, base.removeprefix(HF_PREFIX), tokenizer, out_dir / "hf")
    outcome = FinetuneResult(
        ft.label,
        before,
        after,
        trainable,
        total,
        peak_memory_bytes(device),
        sum(estimate.values()),
        seconds,
        result.step,
        str(out_dir),
        adapter_bytes,
    )
    write_json(
        out_dir / RESULT_FILE, {**dataclasses.asdict(outcome), "improvement": outcome.improvement}
    )
    return outcome
