"""The training configuration shared by every model."""

from __future__ import annotations

from dataclasses import dataclass, field

from tinygen.errors import TinygenError
from tinygen.fields import check_fields


@dataclass
class TrainConfig:
    max_iters: int = field(default=2000, metadata={"help": "optimiser steps", "min": 1})
    max_minutes: float = field(
        default=0.0,
        metadata={
            "help": "also stop (evaluate, save, finish) at the first log step past this many "
            "minutes of training in this process; 0 = no limit. The schedule still follows "
            "--max-iters: for equal-wall-time comparisons, set both",
            "min": 0,
        },
    )
    batch_size: int = field(
        default=12, metadata={"help": "samples per micro-batch (per process)", "min": 1}
    )
    grad_accum: int = field(
        default=1, metadata={"help": "micro-batches per optimiser step", "min": 1}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate", "above": 0})
    min_lr: float | None = field(
        default=None,
        metadata={
            "help": "floor of the schedule, at most the peak; follows --learning-rate unless given",
            "min": 0,
        },
    )
    lr_schedule: str = field(
        default="cosine",
        metadata={
            "help": "learning-rate schedule",
            "choices": ("cosine", "constant", "inverse_sqrt"),
        },
    )
    warmup_iters: int = field(
        default=100, metadata={"help": "linear warm-up steps; 0 = none", "min": 0}
    )
    lr_decay_iters: int | None = field(
        default=None,
        metadata={"help": "steps of the decay; follows --max-iters unless given", "min": 1},
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW decay, matrices only", "min": 0}
    )
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1", "min": 0, "below": 1})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2", "min": 0, "below": 1})
    grad_clip: float = field(default=1.0, metadata={"help": "max grad norm; 0 disables", "min": 0})
    eval_interval: int = field(
        default=250, metadata={"help": "steps between evaluations", "min": 1}
    )
    eval_iters: int = field(default=200, metadata={"help": "batches per evaluation", "min": 1})
    log_interval: int = field(
        default=10, metadata={"help": "steps between train-loss logs", "min": 1}
    )
    seed: int = field(
        default=1337, metadata={"help": "seed of the weights and the batches", "min": 0}
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16"
        },
    )
    ema_decay: float = field(
        default=0.0, metadata={"help": "EMA of weights; 0 disables", "min": 0, "below": 1}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace a run already in --out (its weights, config and metrics)"},
    )

    def validate(self) -> None:
        """The ranges of the fields' metadata (tinygen.fields), then the rules that tie
        fields together."""
        check_fields(self)
        if self.min_lr is not None and self.min_lr > self.learning_rate:
            raise TinygenError(
                f"--min-lr {self.min_lr:g} is above --learning-rate {self.learning_rate:g}; "
                "the floor of the schedule must not exceed its peak"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise TinygenError(f"unknown --device {self.device!r}; choose auto, cpu or cuda")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise TinygenError(f"unknown --precision {self.precision!r}; choose auto, fp32 or bf16")
