"""Writing tiny reference checkpoints for the pretrained-loader tests (no download)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_checkpoint(model, path: Path, *, safetensors: bool = True, tokenizer=None) -> None:
    """save_pretrained (and the tokenizer or processor); for the PyTorch format, the pickled
    state dict older transformers wrote as pytorch_model.bin (transformers 5 writes
    safetensors only)."""
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if not safetensors:
        (path / "model.safetensors").unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
