"""unCLIP's training data: a fixed shapes-world training set and its frozen-CLIP embeddings,
computed once and cached beside the run that uses them.

The set is `train_images` captioned images of the training split (GLIDE's mix: one- and two-object
scenes, some captions naming only part of what they show), drawn in chunks of 1,000 with
seeds `data_seed + k`, so the images can be redrawn exactly from those two and need not be
stored. The cache (`clip_embeddings.safetensors`) holds the CLIP image embeddings
(N, D), the CLIP text embeddings of the captions (N, D), the captions' tokens of the
world tokenizer (N, T) and, in its metadata, the fingerprint of the CLIP run's weights
and the data settings: a cache of another CLIP (retrained, replaced) or other data is
recomputed, never reused.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.models.unclip import clip_fingerprint
from tinygen.recipes.glide import CaptionData, captioned_batch

CACHE_FILE = "clip_embeddings.safetensors"
CHUNK = 1000


@dataclass
class UnclipData:
    """The training set both unCLIP stages read."""

    train_images: int = field(
        default=30000,
        metadata={"help": "captioned training images (the last tenth: val)", "min": 16},
    )
    data_seed: int = field(default=0, metadata={"help": "seed of the training set", "min": 0})
    pair_fraction: float = field(
        default=0.4, metadata={"help": "share of two-object scenes", "min": 0, "max": 1}
    )
    partial_prob: float = field(
        default=0.2,
        metadata={"help": "chance a caption leaves size/position unsaid", "min": 0, "max": 1},
    )

    def validate(self) -> None:
        check_fields(self)

    def caption_data(self, image_size: int) -> CaptionData:
        return CaptionData(
            image_size=image_size, pair_fraction=self.pair_fraction, partial_prob=self.partial_prob
        )


@dataclass
class EmbeddingSet:
    """Unit-norm CLIP embeddings of the training set, with the captions' tokens."""

    image_emb: Tensor  # (N, D)
    text_emb: Tensor  # (N, D)
    tokens: Tensor  # (N, T) world-tokenizer ids

    def __len__(self) -> int:
        return len(self.image_emb)


def training_chunks(data: UnclipData, image_size: int):
    """(images (n_k, 3, H, W), captions) of each chunk of the training set, in order."""
    for k, start in enumerate(range(0, data.train_images, CHUNK)):
        size = min(CHUNK, data.train_images - start)
        batch = captioned_batch(data.caption_data(image_size), "train", size, data.data_seed + k)
        yield batch.images, batch.captions


def training_images(data: UnclipData, image_size: int) -> Tensor:
    """The training set's images (N, 3, H, W) as uint8 (a quarter of float32's memory)."""
    parts = [
        ((x + 1) * 127.5).round().to(torch.uint8) for x, _ in training_chunks(data, image_size)
    ]
    return torch.cat(parts)


@torch.no_grad()
def compute_embeddings(clip, clip_tokenizer, tokenizer, data: UnclipData, *, progress=True):
    """Embed the training set with the frozen CLIP (see the module doc)."""
    from tqdm.auto import tqdm

    image_emb, text_emb, tokens = [], [], []
    chunks = training_chunks(data, clip.config.image_size)
    total = -(-data.train_images // CHUNK)
    for images, captions in tqdm(chunks, total=total, desc="CLIP embeddings", disable=not progress):
        with warnings.catch_warnings():  # two-object words CLIP never read: <unk>
            warnings.simplefilter("ignore")
            clip_tokens = clip_tokenizer.encode_batch(captions)
        for i in range(0, len(images), 250):
            image_emb.append(clip.encode_image(images[i : i + 250]).float())
            text_emb.append(clip.encode_text(clip_tokens[i : i + 250]).float())
        tokens.append(tokenizer.encode_batch(captions))
    return EmbeddingSet(torch.cat(image_emb), torch.cat(text_emb), torch.cat(tokens))


def cache_key(clip_run: str | Path, data: UnclipData) -> dict[str, str]:
    return {"clip_fingerprint": clip_fingerprint(clip_run), "data": json.dumps(asdict(data))}


def load_cached(path: Path, key: dict[str, str]) -> EmbeddingSet | None:
    """The cache at `path` if it exists and was made with `key`, else None."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if any(metadata.get(k) != v for k, v in key.items()):
                return None
            return EmbeddingSet(*(f.get_tensor(k) for k in ("image_emb", "text_emb", "tokens")))
    except Exception:  # noqa: BLE001 - an unreadable cache is recomputed, never trusted
        return None


def save_cache(path: Path, embeddings: EmbeddingSet, key: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from tinygen.io import atomic_write

    tensors = {
        "image_emb": embeddings.image_emb.contiguous(),
        "text_emb": embeddings.text_emb.contiguous(),
        "tokens": embeddings.tokens.contiguous(),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=key))


def clip_embeddings(
    clip_run: str | Path, cache_dir: str | Path, tokenizer, data: UnclipData, *, progress=True
) -> tuple[EmbeddingSet, bool]:
    """(the training set's embeddings, whether they came from the cache in `cache_dir`).
    A missing or stale cache (another CLIP run's weights, other data) is recomputed and
    written to `cache_dir` (created if needed)."""
    from tinygen.recipes.clip import load_clip

    data.validate()
    path = Path(cache_dir) / CACHE_FILE
    key = cache_key(clip_run, data)
    cached = load_cached(path, key)
    if cached is not None:
        return cached, True
    if path.is_file():
        print(f"{path} was made with another CLIP run or data; recomputing", file=sys.stderr)
    clip, clip_tokenizer, _ = load_clip(clip_run)
    embeddings = compute_embeddings(clip, clip_tokenizer, tokenizer, data, progress=progress)
    if embeddings.tokens.shape[1] != tokenizer.context_length:
        raise TinygenError("the caption tokens do not fit the tokenizer's context length")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    save_cache(path, embeddings, key)
    return embeddings, False
