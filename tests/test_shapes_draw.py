"""Drawing: the vectorised coverage equals the loop reference and the shapes' true areas;
prompts: canonical form, parsing and class indices."""

from __future__ import annotations

import math

import pytest
import torch

from tinygen.data import shapes_draw as draw
from tinygen.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    canonical_prompt,
    combo_index,
    combo_name,
    parse_prompt,
)
from tinygen.data.shapes_prompts import canonical_pair_prompt
from tinygen.errors import TinygenError


@pytest.mark.parametrize("kind", draw.SHAPE_KINDS)
def test_vectorised_coverage_equals_the_loop_reference(kind):
    # one shape in the middle, one cut by the image border
    for centre, radius in (((0.47, 0.55), 0.3), ((0.05, 0.9), 0.2)):
        fast = draw.coverage(kind, torch.tensor([centre]), torch.tensor([radius]), 16)[0]
        slow = draw.draw_shape_reference(kind, centre, radius, 16)
        assert torch.equal(fast, slow)


def _true_area(kind: str) -> float:
    """Area of each unit shape from elementary geometry."""
    if kind == "circle":
        return math.pi
    if kind == "square":
        return (2 * draw.SQUARE_HALF) ** 2
    if kind == "diamond":
        return 2 * draw.DIAMOND_RADIUS**2
    if kind == "triangle":  # base 2, height 1 + TRIANGLE_BASE
        return 1 + draw.TRIANGLE_BASE
    if kind == "cross":
        arm, length = 2 * draw.CROSS_ARM, 2 * draw.CROSS_LENGTH
        return 2 * arm * length - arm * arm
    # star: ten triangles (centre, point, notch)
    return 5 * draw.STAR_OUTER * draw.STAR_INNER * math.sin(math.pi / 5)


@pytest.mark.parametrize("kind", draw.SHAPE_KINDS)
def test_coverage_integrates_to_the_true_area(kind):
    radius, size = 0.3, 64
    area = draw.coverage(kind, torch.tensor([[0.5, 0.5]]), torch.tensor([radius]), size).sum()
    expected = _true_area(kind) * (radius * size) ** 2  # in pixels
    assert abs(area.item() - expected) / expected < 0.01


def test_every_shape_fits_in_its_extent():
    u, v = torch.meshgrid(torch.linspace(-2, 2, 801), torch.linspace(-2, 2, 801), indexing="xy")
    outside = u.square() + v.square() > draw.SHAPE_EXTENT**2
    for kind in draw.SHAPE_KINDS:
        assert not (draw.inside(kind, u, v) & outside).any(), kind


def test_render_paints_background_and_object_colours():
    kinds = torch.tensor([[0]])
    images, masks = draw.render(
        kinds,
        torch.tensor([[[0.5, 0.5]]]),
        torch.tensor([[0.3]]),
        torch.tensor([[[1.0, 0.0, 0.0]]]),
        torch.tensor([[0.0, 0.0, 1.0]]),
        32,
    )
    rgb = (images[0] + 1) / 2
    assert torch.allclose(rgb[:, 16, 16], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    edge = (masks[0, 0] > 0) & (masks[0, 0] < 1)
    assert edge.any()  # anti-aliased border: a blend of both colours
    assert torch.allclose(rgb[0][edge], masks[0, 0][edge]) and torch.allclose(
        rgb[2][edge], 1 - masks[0, 0][edge]
    )


def test_canonical_prompts_parse_back_for_every_attribute_combination():
    for color in COLORS:
        for shape in SHAPES:
            assert parse_prompt(canonical_prompt(color, shape)) == {"color": color, "shape": shape}
            for size in SIZES:
                for position in POSITIONS:
                    text = canonical_prompt(color, shape, size, position)
                    assert parse_prompt(text) == {
                        "color": color,
                        "shape": shape,
                        "size": size,
                        "position": position,
                    }
    assert canonical_prompt("red", "circle", "large", "left") == "a large red circle on the left"


def test_pair_prompts_parse_back():
    text = canonical_pair_prompt(
        {"color": "red", "shape": "circle"},
        "left of",
        {"color": "blue", "shape": "square", "size": "small"},
    )
    assert text == "a red circle to the left of a small blue square"
    assert parse_prompt(text) == {
        "color": "red",
        "shape": "circle",
        "color2": "blue",
        "shape2": "square",
        "size2": "small",
        "relation": "left of",
    }


def test_parse_prompt_accepts_free_wording():
    assert parse_prompt("There is a GREEN star in the center.") == {
        "color": "green",
        "shape": "star",
        "position": "centre",
    }
    assert parse_prompt("small blue square, top") == {
        "size": "small",
        "color": "blue",
        "shape": "square",
        "position": "top",
    }


@pytest.mark.parametrize(
    "text,match",
    [
        ("a red dragon", "'dragon'"),
        ("a red blue circle", "two colors"),
        ("", "names no attribute"),
        ("a red circle on the left to the left of a blue square", "position and a relation"),
    ],
)
def test_parse_prompt_errors_name_the_problem(text, match):
    with pytest.raises(TinygenError, match=match):
        parse_prompt(text)


def test_combo_index_is_a_bijection_named_colour_first():
    seen = {combo_index(c, s) for c in COLORS for s in SHAPES}
    assert seen == set(range(48))
    assert combo_index("blue", "triangle") == COLORS.index("blue") * 6 + SHAPES.index("triangle")
    for c in COLORS:
        for s in SHAPES:
            assert combo_name(combo_index(c, s)) == f"{c} {s}"
    with pytest.raises(TinygenError):
        combo_index("pink", "circle")
    with pytest.raises(TinygenError):
        combo_name(48)
