"""Images with their captions (and class labels): the one container every image model trains on.

CLIP trains on (image, caption) pairs, a class-conditional diffusion model on (image, label),
a text-to-image model on (image, caption): `ImageCaptions` holds all three, so each model
takes what it needs from the same object. `ImageData` is its train/val pair for a source --
the built-in shapes world or a folder of captioned images -- with ONE split policy for
folders (`split_indices`: a seeded permutation, a tenth held out for validation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tinygen.errors import TinygenError

VAL_FRACTION = 0.1


@dataclass
class ImageCaptions:
    """N images (N, C, H, W) in [-1, 1] with their captions and/or class labels.

    captions: N strings (None for unlabelled images). labels: (N,) class indices (the
    shapes world's (colour, shape) class, `tinygen.data.shapes.combo_labels`) or None.
    variants: optional extra captions per image (N lists of V strings), which CLIP draws in
    training in place of the caption (see `tinygen.recipes.clip.shapes_pairs`).
    """

    images: Tensor
    captions: list[str] | None = None
    labels: Tensor | None = None
    variants: list[list[str]] | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise TinygenError("the dataset has no images; check --data")
        for name in ("captions", "labels", "variants"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise TinygenError(f"{n} images but {len(value)} {name}")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: Tensor) -> ImageCaptions:
        """The items at `index` (a 1-D long tensor), in that order."""
        rows = index.tolist()
        return ImageCaptions(
            self.images[index],
            [self.captions[i] for i in rows] if self.captions is not None else None,
            self.labels[index] if self.labels is not None else None,
            [self.variants[i] for i in rows] if self.variants is not None else None,
        )


def split_indices(n: int, seed: int, val_fraction: float = VAL_FRACTION) -> tuple[Tensor, Tensor]:
    """(train, val) indices of a folder of n items: a permutation seeded by `seed`, the first
    max(1, n * val_fraction) items held out. The one split policy for image folders."""
    if n < 2:
        raise TinygenError(
            f"the folder holds {n} image; training needs at least 2 (one for validation)"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(n * val_fraction))
    return order[n_val:], order[:n_val]


def shapes_split(n: int, *, split: str, seed: int, image_size: int = 32) -> ImageCaptions:
    """`n` images of one split of the shapes world, with captions and (colour, shape) labels."""
    from tinygen.data.shapes import combo_labels, generate_shapes

    batch = generate_shapes(n, split=split, seed=seed, image_size=image_size)
    labels = combo_labels(batch.labels["color"], batch.labels["shape"])
    return ImageCaptions(batch.images, list(batch.captions), labels)


class ImageData:
    """Train and val `ImageCaptions` of a source, for the trainer's tasks.

    `shapes`: `n_train` train-split and `n_val` (default n_train / 10, 64 to 1000) val-split
    images of the shapes world, drawn once, labelled with the 48 (colour, shape) classes
    (`label_factors` (8, 6): label = colour * 6 + shape). A folder (`PATH`): its captioned
    images, split by `split_indices`; no labels.
    """

    def __init__(
        self,
        source: str = "shapes",
        *,
        image_size: int = 32,
        n_train: int = 20000,
        n_val: int | None = None,
        seed: int = 0,
    ) -> None:
        self.source = source
        if source == "shapes":
            from tinygen.data.shapes import COLORS, NUM_COMBOS, SHAPES

            n_val = n_val if n_val is not None else max(64, min(1000, n_train // 10))
            self.splits = {
                split: shapes_split(n, split=split, seed=seed, image_size=image_size)
                for split, n in (("train", n_train), ("val", n_val))
            }
            self.num_classes = NUM_COMBOS
            self.label_factors: tuple[int, ...] = (len(COLORS), len(SHAPES))
        else:
            from tinygen.data.image_folder import ImageFolderDataset

            if not Path(source).is_dir():
                raise TinygenError(f"--data {source!r} is neither 'shapes' nor a folder of images")
            folder = ImageFolderDataset(source, image_size=image_size)
            everything = ImageCaptions(folder.images, list(folder.captions))
            train, val = split_indices(len(everything), seed)
            self.splits = {"train": everything.subset(train), "val": everything.subset(val)}
            self.num_classes = 0
            self.label_factors = ()

    @property
    def images(self) -> dict[str, Tensor]:
        return {split: data.images for split, data in self.splits.items()}

    @property
    def labels(self) -> dict[str, Tensor] | None:
        if self.splits["train"].labels is None:
            return None
        return {split: data.labels for split, data in self.splits.items()}

    @property
    def has_captions(self) -> bool:
        return self.splits["train"].captions is not None

    def describe(self) -> dict:
        return {
            "source": self.source,
            "n_train": len(self.splits["train"]),
            "n_val": len(self.splits["val"]),
        }

    def draw(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """A random batch (with replacement): images (B, C, H, W) and labels (B,) or None."""
        data = self.splits[split]
        index = torch.randint(len(data), (batch_size,), generator=generator)
        labels = data.labels[index] if data.labels is not None else None
        return data.images[index], labels
