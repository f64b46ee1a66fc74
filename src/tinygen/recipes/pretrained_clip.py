"""A published CLIP (transformers' `CLIPModel` format) behind the interface of our own CLIP
runs, so `tinygen clip zero-shot` and `tinygen clip search` treat both alike.

Our zero-shot and search code (eval/zero_shot.py, recipes/clip_pictures.py) needs a model
with `encode_image(images in [-1, 1])`, `encode_text(ids)` and `logit_scale`, and a
tokenizer with `encode_batch(texts)`. `PretrainedCLIP` gives that around `CLIP.from_pretrained`:
images are resized and centre-cropped by the checkpoint's own CLIPProcessor, which is
then asked only not to normalise, so the pixels stay in [-1, 1] for pictures of search
results; the normalisation by the processor's mean and std happens in `encode_image`, the
same arithmetic the processor does. Text goes through the checkpoint's tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.models.clip import CLIP

EXAMPLE = "openai/clip-vit-base-patch32"


class PretrainedCLIP(nn.Module):
    """A converted CLIP that reads images in [-1, 1] (B, 3, S, S), S the processor's crop."""

    def __init__(self, clip: CLIP, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale

    def encode_image(self, images: Tensor, *, normalize: bool = True) -> Tensor:
        pixel_values = ((images + 1) / 2 - self.mean) / self.std  # the processor's normalise
        return self.clip.encode_image(pixel_values, normalize=normalize)

    def encode_text(self, tokens: Tensor, *, normalize: bool = True) -> Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)


class ProcessorTokenizer:
    """`encode_batch(texts)` -> (B, T) int64 ids from the checkpoint's tokenizer, padded to
    the longest text and cut at the model's context length."""

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def encode_batch(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return batch["input_ids"].long()


class ProcessorImages:
    """Image files -> (N, 3, S, S) in [-1, 1], resized and cropped by the CLIPProcessor."""

    def __init__(self, image_processor) -> None:
        self.image_processor = image_processor

    def __call__(self, paths: Sequence[str | Path]) -> Tensor:
        from tinygen.data.image_folder import open_rgb

        pictures = [open_rgb(path) for path in paths]
        out = self.image_processor(images=pictures, do_normalize=False, return_tensors="pt")
        return out["pixel_values"].float() * 2 - 1


def _processor(directory: Path):
    try:
        from transformers import CLIPProcessor
    except ImportError as e:
        raise TinygenError(
            "a published CLIP's tokenizer and image processor come from transformers: "
            "pip install 'tinygen[hf]'"
        ) from e
    try:
        return CLIPProcessor.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise TinygenError(
            f"{directory} has no usable CLIPProcessor files (tokenizer, preprocessor_config."
            f"json): {' '.join(str(e).split())[:200]}; download the whole checkpoint"
        ) from e


def load_pretrained_clip(
    name_or_dir: str | Path,
) -> tuple[PretrainedCLIP, ProcessorTokenizer, ProcessorImages]:
    """(model, tokenizer, image loader) of a transformers CLIP checkpoint, in eval mode."""
    from tinygen.models.pretrained import resolve_pretrained

    directory = resolve_pretrained(name_or_dir, example=EXAMPLE)
    clip = CLIP.from_pretrained(directory)  # checks the kind before the processor is read
    processor = _processor(directory)
    image_processor = processor.image_processor
    model = PretrainedCLIP(clip, image_processor.image_mean, image_processor.image_std).eval()
    tokenizer = ProcessorTokenizer(processor.tokenizer, clip.config.context_length)
    return model, tokenizer, ProcessorImages(image_processor)
