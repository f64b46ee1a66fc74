"""The words of the shapes world: attributes, held-out pairs, captions and prompts.

`canonical_prompt` writes the one form every evaluation uses ("a large red circle on the
left"); captions vary it with templates so that text encoders learn the words, not a
sentence; `parse_prompt` reads any of them back into attributes. Import these names from
`tinygen.data.shapes`, which re-exports them.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from tinygen.errors import TinygenError

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
RELATIONS = ("left of", "right of", "above", "below")
ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}

# One pair per shape and six different colours: 6 of the 48 pairs (1 in 8) never appear
# in the train split, while every colour and every shape still does.
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("green", "triangle"),
    ("blue", "cross"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("cyan", "diamond"),
)

POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}

SINGLE_TEMPLATES = (
    "a {size} {color} {shape} {where}",
    "{size} {color} {shape}, {position}",
    "there is a {size} {color} {shape} {where}",
    "a {color} {shape}, {size}, {where}",
    "{where}: a {size} {color} {shape}",
    "a picture of a {size} {color} {shape} {where}",
)
PAIR_TEMPLATES = (
    "a {size} {color} {shape} {relation} a {size2} {color2} {shape2}",
    "there is a {size} {color} {shape} {relation} a {size2} {color2} {shape2}",
    "{size} {color} {shape} {relation} {size2} {color2} {shape2}",
)

_FILLER = {
    "a",
    "an",
    "the",
    "on",
    "at",
    "in",
    "there",
    "is",
    "picture",
    "of",
    "image",
    "photo",
    "with",
}
_SYNONYMS = {"center": "centre", "middle": "centre"}
_WORDS = {w: attr for attr, values in ATTRIBUTES.items() for w in values}


NUM_COMBOS = len(COLORS) * len(SHAPES)  # the (colour, shape) classes: 8 x 6 = 48


def combo_labels(color: Tensor, shape: Tensor) -> Tensor:
    """Colour and shape indices (B,) -> their (colour, shape) class indices (B,), colour-major
    (the tensor form of `combo_index`)."""
    return color * len(SHAPES) + shape


def labels_for_prompts(prompts: list[str]) -> Tensor:
    """Prompts that each name a colour and a shape ("a red circle") -> class indices (N,)."""
    labels = []
    for prompt in prompts:
        attrs = parse_prompt(prompt)
        if "color" not in attrs or "shape" not in attrs:
            raise TinygenError(
                f"prompt {prompt!r} must name a colour and a shape, e.g. 'red circle' "
                f"(colours: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)})"
            )
        labels.append(combo_index(attrs["color"], attrs["shape"]))
    return torch.tensor(labels, dtype=torch.long)


def combo_index(color: str, shape: str) -> int:
    """The class index (0..47) of a (colour, shape) pair: colour-major."""
    if color not in COLORS or shape not in SHAPES:
        raise TinygenError(
            f"unknown pair ({color!r}, {shape!r}); colours are {', '.join(COLORS)} and "
            f"shapes are {', '.join(SHAPES)}"
        )
    return COLORS.index(color) * len(SHAPES) + SHAPES.index(shape)  # = combo_labels


def combo_name(i: int) -> str:
    """The class name of combo_index `i`, e.g. 'red circle' (colour first)."""
    if not 0 <= i < NUM_COMBOS:
        raise TinygenError(f"combo index must be in [0, {NUM_COMBOS}), got {i}")
    return f"{COLORS[i // len(SHAPES)]} {SHAPES[i % len(SHAPES)]}"


def canonical_prompt(
    color: str, shape: str, size: str | None = None, position: str | None = None
) -> str:
    """'a [size] color shape [position phrase]', e.g. 'a large red circle on the left'."""
    combo_index(color, shape)  # validates both
    if size is not None and size not in SIZES:
        raise TinygenError(f"unknown size {size!r}; choose {' or '.join(SIZES)}")
    if position is not None and position not in POSITIONS:
        raise TinygenError(f"unknown position {position!r}; choose {', '.join(POSITIONS)}")
    words = ["a"] + ([size] if size else []) + [color, shape]
    if position:
        words.append(POSITION_PHRASES[position])
    return " ".join(words)


def canonical_pair_prompt(first: dict[str, str], relation: str, second: dict[str, str]) -> str:
    """Two objects: 'a large red circle to the left of a small blue square'. `first` and
    `second` hold color, shape and optionally size (positions follow from the relation)."""
    if relation not in RELATIONS:
        raise TinygenError(f"unknown relation {relation!r}; choose {', '.join(RELATIONS)}")
    a = canonical_prompt(first["color"], first["shape"], first.get("size"))
    b = canonical_prompt(second["color"], second["shape"], second.get("size"))
    return f"{a} {RELATION_PHRASES[relation]} {b}"


def caption_single(obj: dict[str, str], template: int) -> str:
    """A caption of one object from SINGLE_TEMPLATES[template % len]."""
    text = SINGLE_TEMPLATES[template % len(SINGLE_TEMPLATES)]
    return text.format(where=POSITION_PHRASES[obj["position"]], **obj)


def caption_pair(
    first: dict[str, str], relation: str, second: dict[str, str], template: int
) -> str:
    """A caption of a two-object scene from PAIR_TEMPLATES[template % len]."""
    text = PAIR_TEMPLATES[template % len(PAIR_TEMPLATES)]
    return text.format(
        relation=RELATION_PHRASES[relation],
        size=first["size"],
        color=first["color"],
        shape=first["shape"],
        size2=second["size"],
        color2=second["color"],
        shape2=second["shape"],
    )


def _parse_object(words: list[str], text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    unknown = []
    for word in words:
        if word in _FILLER:
            continue
        attr = _WORDS.get(word)
        if attr is None:
            unknown.append(word)
        elif attr in found and found[attr] != word:
            raise TinygenError(
                f"prompt {text!r} names two {attr}s ({found[attr]!r} and {word!r}); "
                "describe one object, or two joined by a relation"
            )
        else:
            found[attr] = word
    if unknown:
        raise TinygenError(
            f"cannot parse prompt {text!r}: unknown words {', '.join(map(repr, unknown))} "
            f"(shapes: {', '.join(SHAPES)}; colours: {', '.join(COLORS)}; sizes: "
            f"{', '.join(SIZES)}; positions: {', '.join(POSITIONS)}); write prompts like "
            "'a large red circle on the left'"
        )
    return found


def parse_prompt(text: str) -> dict[str, str]:
    """The attributes a prompt or caption names: the inverse of `canonical_prompt`.

    Returns attribute -> word (e.g. {'color': 'red', 'shape': 'circle'}); prompts may name
    any subset. Two-object prompts ('... to the left of ...') give color/shape/size of
    both (suffix 2 for the second) and 'relation'. Unknown words raise TinygenError.
    """
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", text.lower())]
    for relation, phrase in RELATION_PHRASES.items():
        pattern = phrase.split()
        for start in range(len(words) - len(pattern) + 1):
            if words[start : start + len(pattern)] == pattern:
                first = _parse_object(words[:start], text)
                second = _parse_object(words[start + len(pattern) :], text)
                if "position" in first or "position" in second:
                    raise TinygenError(
                        f"prompt {text!r} gives a position and a relation; a two-object "
                        "prompt places objects by the relation only"
                    )
                out = dict(first)
                out.update({k + "2": v for k, v in second.items()})
                out["relation"] = relation
                return out
    found = _parse_object(words, text)
    if not found:
        raise TinygenError(
            f"prompt {text!r} names no attribute; write prompts like 'a large red circle "
            "on the left'"
        )
    return found
