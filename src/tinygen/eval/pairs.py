"""Judging two-object images ("a red circle to the left of a small blue square").

The evaluator's slot heads say, for each place of the world, whether an object is there
and its colour, shape and size (`tinygen.models.shapes_evaluator`). A two-object prompt's
relation fixes the places of its objects (`left of` -> first on the left, second on the
right), so each image is judged by reading the two places:

- `color`, `shape`, `size` (first object) and `color2`, `shape2`, `size2` (second): the
  attribute read at the object's place equals the named one (only where the prompt names it);
- `relation`: the image shows two objects, at the relation's two places, in the prompt's
  order -- the objects resemble the named ones better in that order than in the other,
  the shape (the noun) counting twice the colour, as spatial-relation scores identify
  objects by their nouns: swapped positions are wrong, swapped colours alone are not, and
  an image whose two objects cannot be told apart does not count as right;
- `all`: both places hold an object with every named attribute, and no other place does;
- `binding_swap`: of the prompts whose objects differ in colour *and* in shape, the fraction
  of images that show both shapes where they belong but with the colours exchanged between
  them ("a blue circle left of a red square" for "a red circle left of a blue square") --
  the attribute-binding failure (Ramesh et al. 2022, sec. 7; Feng et al. 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tinygen.data.shapes import ATTRIBUTES, PAIR_POSITIONS, POSITIONS

RELATION_PLACES = PAIR_POSITIONS  # relation -> the places of (first, second) object
OBJECT_KEYS = ("color", "shape", "size")


def _index(name: str, value: str) -> int:
    return ATTRIBUTES[name].index(value)


def judge_pairs(predicted: dict[str, Tensor], wanted: list[dict[str, str]]) -> dict[str, Tensor]:
    """Per-image verdicts (bool (N,) each) for two-object prompts.

    predicted: the evaluator's slot predictions, "slot_occupied", "slot_color", "slot_shape",
    "slot_size" -> (N, 5) indices over POSITIONS; wanted: `parse_prompt` of each prompt
    (color/shape[/size], the same with suffix 2, relation). Keys of the result: all, relation,
    binding_swap, binding_eligible, and each attribute named by at least one prompt, with the
    mask "<attr>_named" of the prompts that name it.
    """
    n = len(wanted)
    rows = torch.arange(n)
    first = torch.tensor([POSITIONS.index(RELATION_PLACES[w["relation"]][0]) for w in wanted])
    second = torch.tensor([POSITIONS.index(RELATION_PLACES[w["relation"]][1]) for w in wanted])
    occupied = predicted["slot_occupied"].bool()
    at = {
        key: (predicted["slot_" + key][rows, first], predicted["slot_" + key][rows, second])
        for key in OBJECT_KEYS
    }
    expected_layout = torch.zeros_like(occupied)
    expected_layout[rows, first] = True
    expected_layout[rows, second] = True
    layout = (occupied == expected_layout).all(1)

    out: dict[str, Tensor] = {}
    all_right = layout.clone()
    for suffix, place in (("", 0), ("2", 1)):
        for key in OBJECT_KEYS:
            named = torch.tensor([key + suffix in w for w in wanted])
            target = torch.tensor(
                [_index(key, w[key + suffix]) if key + suffix in w else -1 for w in wanted]
            )
            right = at[key][place] == target
            all_right &= right | ~named
            if named.any():
                out[key + suffix] = right
                out[key + suffix + "_named"] = named

    def resemblance(place: int, suffix: str) -> Tensor:
        score = torch.zeros(n, dtype=torch.long)
        for key, weight in (("color", 1), ("shape", 2)):
            target = torch.tensor([_index(key, w[key + suffix]) for w in wanted])
            score += weight * (at[key][place] == target).long()
        return score

    straight = resemblance(0, "") + resemblance(1, "2")
    crossed = resemblance(0, "2") + resemblance(1, "")
    out["relation"] = layout & (straight > crossed)
    out["all"] = all_right

    colour = [(_index("color", w["color"]), _index("color", w["color2"])) for w in wanted]
    shape = [(_index("shape", w["shape"]), _index("shape", w["shape2"])) for w in wanted]
    eligible = torch.tensor([c1 != c2 and s1 != s2 for (c1, c2), (s1, s2) in zip(colour, shape)])
    c1, c2 = torch.tensor([c[0] for c in colour]), torch.tensor([c[1] for c in colour])
    s1, s2 = torch.tensor([s[0] for s in shape]), torch.tensor([s[1] for s in shape])
    swapped = (
        layout
        & (at["shape"][0] == s1)
        & (at["shape"][1] == s2)
        & (at["color"][0] == c2)
        & (at["color"][1] == c1)
    )
    out["binding_swap"] = swapped & eligible
    out["binding_eligible"] = eligible
    return out


def pair_scores(verdicts: dict[str, Tensor]) -> dict[str, float]:
    """Fractions from `judge_pairs`: each attribute over the prompts that name it, the
    binding swap over the eligible prompts, the rest over all."""
    out = {"all": verdicts["all"].float().mean().item()}
    out["relation"] = verdicts["relation"].float().mean().item()
    for key in ("color", "shape", "size", "color2", "shape2", "size2"):
        if key in verdicts:
            named = verdicts[key + "_named"]
            out[key] = verdicts[key][named].float().mean().item()
    eligible = verdicts["binding_eligible"]
    if eligible.any():
        out["binding_swap"] = verdicts["binding_swap"][eligible].float().mean().item()
    return out
