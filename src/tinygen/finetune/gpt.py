"""Moved to tinygen.recipes.finetune_gpt; this module keeps old imports working."""

from tinygen.recipes.finetune_gpt import (  # noqa: F401
    DEFAULT_LR,
    METHODS,
    RESULT_FILE,
    FinetuneConfig,
    FinetuneResult,
    default_train_config,
    finetune_gpt,
    fixed_val_loss,
    keep_known_characters,
)

__all__ = [
    "DEFAULT_LR",
    "METHODS",
    "RESULT_FILE",
    "FinetuneConfig",
    "FinetuneResult",
    "default_train_config",
    "finetune_gpt",
    "fixed_val_loss",
    "keep_known_characters",
]
