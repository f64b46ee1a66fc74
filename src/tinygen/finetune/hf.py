"""Moved to tinygen.recipes.finetune_hf; this module keeps old imports working."""

from tinygen.recipes.finetune_hf import (  # noqa: F401
    HFFinetuneResult,
    HFTextTask,
    attach_adapter,
    finetune_hf,
    load_hf_model,
)

__all__ = ["HFFinetuneResult", "HFTextTask", "attach_adapter", "finetune_hf", "load_hf_model"]
