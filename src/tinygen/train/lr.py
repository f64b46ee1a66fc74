"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

from tinygen.train.config import TrainConfig


def get_lr(step: int, config: TrainConfig) -> float:
    """The learning rate for optimiser step `step` (0-based).

    cosine: linear warm-up to `learning_rate`, then half a cosine down to `min_lr` at
        `lr_decay_iters` (nanoGPT; Loshchilov & Hutter 2017).
    constant: linear warm-up, then flat.
    inverse_sqrt: "Attention Is All You Need" eq. 3 scaled so the peak, reached at the end
        of warm-up, is `learning_rate`: lr * min(s / w, sqrt(w / s)) with s = step + 1.
    """
    peak = config.learning_rate
    warmup = config.warmup_iters
    if config.lr_schedule == "inverse_sqrt":
        s, w = step + 1, max(warmup, 1)
        return peak * min(s / w, math.sqrt(w / s))
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if config.lr_schedule == "constant":
        return peak
    min_lr = peak / 10 if config.min_lr is None else config.min_lr
    decay_iters = config.lr_decay_iters or config.max_iters
    if step >= decay_iters:
        return min_lr
    progress = (step - warmup) / max(1, decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - min_lr)
