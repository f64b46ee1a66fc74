"""The training configuration shared by every model."""

from __future__ import annotations

from dataclasses import dataclass, field

from tinygen.errors import TinygenError


@dataclass
class TrainConfig:
    max_iters: int = field(default=2000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=12, metadata={"help": "samples per micro-batch (per process)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float | None = field(default=None, metadata={"help": "floor (default lr / 10)"})
    lr_schedule: str = field(
        default="cosine", metadata={"help": "cosine | constant | inverse_sqrt"}
    )
    warmup_iters: int = field(default=100, metadata={"help": "linear warm-up steps"})
    lr_decay_iters: int | None = field(default=None, metadata={"help": "default max_iters"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay, matrices only"})
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = field(default=1.0, metadata={"help": "max grad norm; 0 disables"})
    eval_interval: int = field(default=250, metadata={"help": "steps between evaluations"})
    eval_iters: int = field(default=200, metadata={"help": "batches per evaluation"})
    log_interval: int = field(default=10, metadata={"help": "steps between train-loss logs"})
    seed: int = 1337
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16"}
    )
    ema_decay: float = field(default=0.0, metadata={"help": "EMA of weights; 0 disables"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace a run already in --out (its weights, config and metrics)"},
    )

    def validate(self) -> None:
        positive = (
            "max_iters",
            "batch_size",
            "grad_accum",
            "eval_interval",
            "eval_iters",
            "log_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise TinygenError(f"--{name.replace('_', '-')} must be positive")
        if self.learning_rate <= 0:
            raise TinygenError("--learning-rate must be positive")
        if self.lr_schedule not in ("cosine", "constant", "inverse_sqrt"):
            raise TinygenError(
                f"unknown --lr-schedule {self.lr_schedule!r}; choose cosine, constant or "
                "inverse_sqrt"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise TinygenError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise TinygenError(f"unknown --device {self.device!r}; choose auto, cpu or cuda")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise TinygenError(f"unknown --precision {self.precision!r}; choose auto, fp32 or bf16")
