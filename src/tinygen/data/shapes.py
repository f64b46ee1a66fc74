"""The captioned-shapes world: procedural images whose ground truth we know exactly.

Each image shows one object (or two, with a spatial relation) on a plain dark
background, described by four attributes -- shape, colour, size, position -- with jitter
of position, size and hue so no two images are identical. Because the generator knows
what it drew, every later text-to-image model can be scored exactly ("does the image
show what the prompt asked for?") by the shapes evaluator (tinygen.eval).

Splits are disjoint seed streams: "train" never shows a HELDOUT_COMBOS (colour, shape)
pair, so a model that draws or recognises those pairs has generalised compositionally;
"val" has the train distribution; "test" cycles through all 48 pairs; "heldout" shows only
the held-out pairs; "evaluator" (all 48 pairs) trains the evaluator, which must judge
held-out pairs too. Within a split, the same seed gives the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tinygen.data.shapes_draw import hsv_to_rgb, render
from tinygen.data.shapes_prompts import (
    ATTRIBUTES,
    COLORS,
    HELDOUT_COMBOS,
    NUM_COMBOS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    canonical_pair_prompt,
    canonical_prompt,
    caption_pair,
    caption_single,
    combo_index,
    combo_labels,
    combo_name,
    labels_for_prompts,
    parse_prompt,
)
from tinygen.errors import TinygenError

__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "HELDOUT_COMBOS",
    "NUM_COMBOS",
    "POSITIONS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "ShapesBatch",
    "ShapesDataset",
    "canonical_pair_prompt",
    "canonical_prompt",
    "combo_index",
    "combo_labels",
    "combo_name",
    "generate_shapes",
    "labels_for_prompts",
    "parse_prompt",
    "shapes_stream",
    "slot_labels",
]

SPLITS = ("train", "val", "test", "heldout", "evaluator")

# Hue in degrees of each colour; white is drawn desaturated. Gaps between neighbouring
# hues are >= 28 degrees, so a jitter of HUE_JITTER keeps every colour clearly named.
HUES = {
    "red": 0.0,
    "orange": 30.0,
    "yellow": 58.0,
    "green": 120.0,
    "cyan": 183.0,
    "blue": 232.0,
    "purple": 282.0,
    "white": 0.0,
}
HUE_JITTER = 6.0
# Object centres in image widths (x, y); jitter keeps positions clearly distinguishable.
CENTRES = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "centre": (0.5, 0.5),
}
POSITION_JITTER = 0.03
RADII = {"small": 0.12, "large": 0.21}  # object radius in image widths
SIZE_JITTER = 0.06  # relative
# Two-object scenes: smaller objects and less jitter so that two large ones never touch.
PAIR_SCALE, PAIR_JITTER = 0.85, 0.015
PAIR_POSITIONS = {
    "left of": ("left", "right"),
    "right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}


@dataclass
class ShapesBatch:
    """Images with their descriptions.

    images (N, 3, H, W) float in [-1, 1]; captions: one random template each; prompts: the
    canonical form; labels: attribute name -> LongTensor (N,) indexing the attribute's tuple
    (two-object scenes add shape2/color2/size2/position2 and relation into RELATIONS);
    masks (N, K, H, W): each object's anti-aliased coverage (K objects).
    """

    images: Tensor
    captions: list[str]
    prompts: list[str]
    labels: dict[str, Tensor]
    masks: Tensor = field(repr=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, index: Tensor | slice | list[int]) -> ShapesBatch:
        """The sub-batch at `index` (a slice, a list of positions or a LongTensor)."""
        if isinstance(index, slice):
            positions = list(range(len(self)))[index]
        else:
            positions = [int(i) for i in index]
        pos = torch.tensor(positions, dtype=torch.long)
        return ShapesBatch(
            images=self.images[pos],
            captions=[self.captions[i] for i in positions],
            prompts=[self.prompts[i] for i in positions],
            labels={k: v[pos] for k, v in self.labels.items()},
            masks=self.masks[pos],
        )


def _split_generator(split: str, seed: int) -> torch.Generator:
    """Disjoint seed streams: (seed, split) -> seed * 8 + split id is one-to-one."""
    if split not in SPLITS:
        raise TinygenError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not isinstance(seed, int) or not 0 <= seed < 2**60:
        raise TinygenError(f"seed must be an integer in [0, 2**60), got {seed!r}")
    return torch.Generator().manual_seed(seed * 8 + SPLITS.index(split))


def allowed_combos(split: str) -> list[int]:
    """combo_index values that images of `split` may show."""
    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    if split in ("train", "val"):
        return [i for i in range(NUM_COMBOS) if i not in heldout]
    if split == "heldout":
        return sorted(heldout)
    return list(range(NUM_COMBOS))


def _balanced_combos(n: int, allowed: list[int], gen: torch.Generator) -> Tensor:
    """n combos, each block of len(allowed) a random permutation of `allowed` (so n >= 48
    test images contain every pair)."""
    pool = torch.tensor(allowed)
    blocks = math.ceil(n / len(allowed))
    order = torch.cat([pool[torch.randperm(len(allowed), generator=gen)] for _ in range(blocks)])
    return order[:n]


def _object_colours(colour: Tensor, gen: torch.Generator) -> Tensor:
    """RGB (n, 3) in [0, 1] for colour indices (n,), with hue, saturation, value jitter."""
    n = colour.shape[0]
    base = torch.tensor([HUES[c] for c in COLORS])[colour]
    hue = base + (torch.rand(n, generator=gen) * 2 - 1) * HUE_JITTER
    sat = 0.88 + 0.12 * torch.rand(n, generator=gen)
    val = 0.85 + 0.15 * torch.rand(n, generator=gen)
    white = colour == COLORS.index("white")
    sat = torch.where(white, 0.08 * torch.rand(n, generator=gen), sat)
    val = torch.where(white, 0.92 + 0.08 * torch.rand(n, generator=gen), val)
    return hsv_to_rgb(hue, sat, val)


def _backgrounds(n: int, gen: torch.Generator) -> Tensor:
    """Dark, muted background colours (n, 3): any hue, value <= 0.35, so every object
    (value >= 0.85) stands out."""
    hue = torch.rand(n, generator=gen) * 360
    sat = 0.4 * torch.rand(n, generator=gen)
    val = 0.05 + 0.3 * torch.rand(n, generator=gen)
    return hsv_to_rgb(hue, sat, val)


def _geometry(
    size: Tensor, position: Tensor, gen: torch.Generator, scale: float, jitter: float
) -> tuple[Tensor, Tensor]:
    """Centres (n, 2) and radii (n,) in image widths, jittered."""
    n = size.shape[0]
    base = torch.tensor([CENTRES[p] for p in POSITIONS])[position]
    centres = base + (torch.rand(n, 2, generator=gen) * 2 - 1) * jitter
    radii = torch.tensor([RADII[s] for s in SIZES])[size] * scale
    radii = radii * (1 + (torch.rand(n, generator=gen) * 2 - 1) * SIZE_JITTER)
    return centres, radii


def generate_shapes(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    image_size: int = 32,
    two_objects: bool = False,
) -> ShapesBatch:
    """Draw `n` captioned images of the shapes world, deterministic per (seed, split).

    One object: uniform size and position, (colour, shape) pairs balanced over the split's
    allowed pairs. Two objects (`two_objects=True`): a relation from RELATIONS fixes both
    positions ("a red circle to the left of a blue square"); the pairs differ.
    """
    if n <= 0:
        raise TinygenError(f"n must be positive, got {n}")
    if image_size < 16:
        raise TinygenError(f"image_size must be at least 16 pixels, got {image_size}")
    gen = _split_generator(split, seed)
    allowed = allowed_combos(split)
    combo = _balanced_combos(n, allowed, gen)
    labels = {
        "shape": combo % len(SHAPES),
        "color": combo // len(SHAPES),
        "size": torch.randint(len(SIZES), (n,), generator=gen),
    }
    if not two_objects:
        labels["position"] = torch.randint(len(POSITIONS), (n,), generator=gen)
        centres, radii = _geometry(labels["size"], labels["position"], gen, 1.0, POSITION_JITTER)
        centres, radii = centres.unsqueeze(1), radii.unsqueeze(1)  # (n, 1, 2), (n, 1)
        colours = _object_colours(labels["color"], gen).unsqueeze(1)  # (n, 1, 3)
        kinds = labels["shape"].unsqueeze(1)
    else:
        relation = torch.randint(len(RELATIONS), (n,), generator=gen)
        where = [PAIR_POSITIONS[RELATIONS[r]] for r in relation.tolist()]
        labels["position"] = torch.tensor([POSITIONS.index(a) for a, _ in where])
        # the second pair: any other allowed pair
        slot = torch.tensor([allowed.index(int(c)) for c in combo])
        offset = torch.randint(1, len(allowed), (n,), generator=gen)
        combo2 = torch.tensor(allowed)[(slot + offset) % len(allowed)]
        labels.update(
            {
                "shape2": combo2 % len(SHAPES),
                "color2": combo2 // len(SHAPES),
                "size2": torch.randint(len(SIZES), (n,), generator=gen),
                "position2": torch.tensor([POSITIONS.index(b) for _, b in where]),
                "relation": relation,
            }
        )
        c1, r1 = _geometry(labels["size"], labels["position"], gen, PAIR_SCALE, PAIR_JITTER)
        c2, r2 = _geometry(labels["size2"], labels["position2"], gen, PAIR_SCALE, PAIR_JITTER)
        centres, radii = torch.stack([c1, c2], 1), torch.stack([r1, r2], 1)
        colours = torch.stack(
            [_object_colours(labels["color"], gen), _object_colours(labels["color2"], gen)], 1
        )
        kinds = torch.stack([labels["shape"], labels["shape2"]], 1)
    background = _backgrounds(n, gen)
    templates = torch.randint(1 << 16, (n,), generator=gen).tolist()
    images, masks = render(kinds, centres, radii, colours, background, image_size)
    names = {k: [ATTRIBUTES_ALL[k][i] for i in v.tolist()] for k, v in labels.items()}
    captions, prompts = [], []
    for i in range(n):
        obj = {k: names[k][i] for k in ("color", "shape", "size", "position")}
        if two_objects:
            other = {k: names[k + "2"][i] for k in ("color", "shape", "size")}
            rel = names["relation"][i]
            prompts.append(canonical_pair_prompt(obj, rel, other))
            captions.append(caption_pair(obj, rel, other, templates[i]))
        else:
            prompts.append(canonical_prompt(**obj))
            captions.append(caption_single(obj, templates[i]))
    return ShapesBatch(images, captions, prompts, labels, masks)


ATTRIBUTES_ALL = {
    **ATTRIBUTES,
    **{k + "2": v for k, v in ATTRIBUTES.items()},
    "relation": RELATIONS,
}


IGNORE = -100  # cross_entropy's ignore_index: no object at this place


def slot_labels(labels: dict[str, Tensor]) -> dict[str, Tensor]:
    """Ground truth per place (the five POSITIONS): "occupied" (N, 5) in {0, 1}, and
    "color"/"shape"/"size" (N, 5), IGNORE where the place is empty. Works for one-object
    labels and for two-object ones (with the suffix-2 keys)."""
    n = labels["shape"].shape[0]
    out = {"occupied": torch.zeros(n, len(POSITIONS), dtype=torch.long)}
    out.update({k: torch.full((n, len(POSITIONS)), IGNORE) for k in ("color", "shape", "size")})
    rows = torch.arange(n)
    for suffix in ("", "2"):
        if "position" + suffix not in labels:
            continue
        place = labels["position" + suffix]
        out["occupied"][rows, place] = 1
        for key in ("color", "shape", "size"):
            out[key][rows, place] = labels[key + suffix]
    return out


class ShapesDataset:
    """A fixed set of `n` shapes images, generated once and kept as tensors.

    `dataset[i]` is a dict: image (3, H, W), caption, prompt and one int per label.
    """

    def __init__(
        self,
        n: int,
        *,
        split: str = "train",
        seed: int = 0,
        image_size: int = 32,
        two_objects: bool = False,
    ) -> None:
        self.batch = generate_shapes(
            n, split=split, seed=seed, image_size=image_size, two_objects=two_objects
        )
        self.split = split

    @property
    def images(self) -> Tensor:
        return self.batch.images

    @property
    def captions(self) -> list[str]:
        return self.batch.captions

    @property
    def prompts(self) -> list[str]:
        return self.batch.prompts

    @property
    def labels(self) -> dict[str, Tensor]:
        return self.batch.labels

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        item = {
            "image": self.batch.images[i],
            "caption": self.batch.captions[i],
            "prompt": self.batch.prompts[i],
        }
        item.update({k: int(v[i]) for k, v in self.batch.labels.items()})
        return item


def shapes_stream(
    batch_size: int,
    *,
    split: str = "train",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    image_size: int = 32,
    two_objects: bool = False,
) -> Iterator[ShapesBatch]:
    """An endless stream of fresh batches. Each batch is `generate_shapes` with a seed
    drawn from `generator` (or from a generator seeded with `seed`, default 0), so a saved
    generator state resumes the stream exactly."""
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    elif seed is not None:
        raise TinygenError("pass either generator or seed to shapes_stream, not both")
    while True:
        batch_seed = int(torch.randint(2**60, (1,), generator=generator))
        yield generate_shapes(
            batch_size,
            split=split,
            seed=batch_seed,
            image_size=image_size,
            two_objects=two_objects,
        )
