"""Moved to tinygen.recipes.finetune_toy; this module keeps old imports working."""

from tinygen.recipes.finetune_toy import (  # noqa: F401
    PointsTask,
    ToyConfig,
    ToyMLP,
    ToyResult,
    accuracy,
    make_moons,
    run_toy,
    transform,
)

__all__ = [
    "PointsTask",
    "ToyConfig",
    "ToyMLP",
    "ToyResult",
    "accuracy",
    "make_moons",
    "run_toy",
    "transform",
]
