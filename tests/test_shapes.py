"""The captioned-shapes world: determinism, splits, and labels that match the pixels."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch

from tinygen.data import shapes
from tinygen.data.shapes import (
    COLORS,
    HELDOUT_COMBOS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    ShapesDataset,
    combo_index,
    generate_shapes,
    shapes_stream,
)
from tinygen.data.shapes_draw import hsv_to_rgb
from tinygen.errors import TinygenError


def _names(batch, key: str) -> list[str]:
    values = shapes.ATTRIBUTES_ALL[key]
    return [values[i] for i in batch.labels[key].tolist()]


def test_same_seed_and_split_give_the_same_batch():
    a = generate_shapes(64, split="train", seed=3)
    b = generate_shapes(64, split="train", seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels)
    c = generate_shapes(64, split="train", seed=4)
    assert not torch.equal(a.images, c.images)


def test_splits_never_share_an_image():
    images = {
        split: generate_shapes(200, split=split, seed=seed).images.flatten(1)
        for split in ("train", "val", "test")
        for seed in (0, 1)
    }
    everything = torch.cat(list(images.values()))
    assert torch.unique(everything, dim=0).shape[0] == everything.shape[0]


def test_train_split_never_shows_a_heldout_pair_even_in_two_object_scenes():
    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    one = generate_shapes(3000, split="train", seed=0)
    two = generate_shapes(1000, split="train", seed=0, two_objects=True)
    for batch, suffixes in ((one, ("",)), (two, ("", "2"))):
        for sfx in suffixes:
            combos = batch.labels["color" + sfx] * len(SHAPES) + batch.labels["shape" + sfx]
            assert not set(combos.tolist()) & heldout


def test_heldout_pairs_are_one_in_eight_and_leave_every_colour_and_shape_in_training():
    assert len(HELDOUT_COMBOS) == len(COLORS) * len(SHAPES) // 8
    train = generate_shapes(2000, split="train", seed=0)
    assert set(train.labels["color"].tolist()) == set(range(len(COLORS)))
    assert set(train.labels["shape"].tolist()) == set(range(len(SHAPES)))


def test_test_split_has_all_pairs_and_heldout_split_only_heldout_pairs():
    test = generate_shapes(48, split="test", seed=5)
    combos = test.labels["color"] * len(SHAPES) + test.labels["shape"]
    assert sorted(combos.tolist()) == list(range(48))
    held = generate_shapes(60, split="heldout", seed=5)
    pairs = {
        (COLORS[c], SHAPES[s])
        for c, s in zip(held.labels["color"].tolist(), held.labels["shape"].tolist())
    }
    assert pairs == set(HELDOUT_COMBOS)


def test_no_two_images_are_identical():
    batch = generate_shapes(2000, split="train", seed=1)
    assert torch.unique(batch.images.flatten(1), dim=0).shape[0] == 2000


@pytest.mark.parametrize("image_size", [32, 64])
def test_images_are_rgb_in_range(image_size):
    batch = generate_shapes(10, seed=0, image_size=image_size)
    assert batch.images.shape == (10, 3, image_size, image_size)
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    assert batch.masks.shape == (10, 1, image_size, image_size)


def _named_colours() -> torch.Tensor:
    rows = []
    for c in COLORS:
        sat = 0.0 if c == "white" else 1.0
        rows.append(hsv_to_rgb(torch.tensor(shapes.HUES[c]), torch.tensor(sat), torch.tensor(1.0)))
    return torch.stack(rows)  # (8, 3)


@pytest.mark.parametrize("two_objects", [False, True])
def test_mean_colour_inside_each_object_is_nearest_to_its_named_colour(two_objects):
    batch = generate_shapes(2000, split="test", seed=2, two_objects=two_objects)
    rgb = (batch.images + 1) / 2
    for obj, key in enumerate(("color", "color2")[: batch.masks.shape[1]]):
        inside = (batch.masks[:, obj] >= 0.999).float()  # fully covered pixels only
        assert inside.sum((1, 2)).min() >= 1
        mean = (rgb * inside[:, None]).sum((2, 3)) / inside.sum((1, 2))[:, None]
        nearest = torch.cdist(mean, _named_colours()).argmin(1)
        assert torch.equal(nearest, batch.labels[key])


def _centroids(mask: torch.Tensor) -> torch.Tensor:
    """(N, H, W) coverage -> (N, 2) centre of mass (x, y) in image widths."""
    size = mask.shape[-1]
    coords = (torch.arange(size) + 0.5) / size
    total = mask.sum((1, 2))
    return torch.stack(
        [(mask.sum(1) * coords).sum(1) / total, (mask.sum(2) * coords).sum(1) / total], 1
    )


def test_position_label_is_where_the_object_is():
    batch = generate_shapes(1500, split="test", seed=3)
    centre = _centroids(batch.masks[:, 0])
    dx, dy = centre[:, 0] - 0.5, centre[:, 1] - 0.5
    # the region of each position, from the geometry alone (triangles sit a little low)
    region = torch.full((1500,), POSITIONS.index("centre"))
    region[dx < -0.13] = POSITIONS.index("left")
    region[dx > 0.13] = POSITIONS.index("right")
    region[dy < -0.13] = POSITIONS.index("top")
    region[dy > 0.13] = POSITIONS.index("bottom")
    assert torch.equal(region, batch.labels["position"])


def test_large_objects_cover_more_than_small_ones_of_the_same_shape():
    batch = generate_shapes(1500, split="test", seed=4)
    area = batch.masks[:, 0].sum((1, 2))
    for s in range(len(SHAPES)):
        of_shape = batch.labels["shape"] == s
        small = area[of_shape & (batch.labels["size"] == 0)]
        large = area[of_shape & (batch.labels["size"] == 1)]
        assert small.max() * 2 < large.min()


def test_two_object_scenes_follow_their_relation_and_never_overlap():
    batch = generate_shapes(800, split="test", seed=6, two_objects=True)
    first, second = _centroids(batch.masks[:, 0]), _centroids(batch.masks[:, 1])
    expected = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
    for i, relation in enumerate(_names(batch, "relation")):
        axis, sign = expected[relation]
        assert sign * (first[i, axis] - second[i, axis]) > 0.25
    assert (batch.masks[:, 0] * batch.masks[:, 1]).sum() == 0
    same = (batch.labels["color"] == batch.labels["color2"]) & (
        batch.labels["shape"] == batch.labels["shape2"]
    )
    assert not same.any()
    assert set(_names(batch, "relation")) == set(RELATIONS)


def test_hsv_to_rgb_matches_colorsys():
    gen = torch.Generator().manual_seed(0)
    h, s, v = torch.rand(3, 200, generator=gen)
    ours = hsv_to_rgb(h * 360, s, v)
    ref = torch.tensor(
        [colorsys.hsv_to_rgb(a, b, c) for a, b, c in zip(h.tolist(), s.tolist(), v.tolist())]
    )
    assert torch.allclose(ours, ref, atol=1e-6)


def test_captions_parse_back_to_their_labels():
    for two in (False, True):
        batch = generate_shapes(300, split="test", seed=7, two_objects=two)
        keys = [k for k in batch.labels if not (two and k.startswith("position"))]
        for i, (caption, prompt) in enumerate(zip(batch.captions, batch.prompts)):
            truth = {k: shapes.ATTRIBUTES_ALL[k][int(batch.labels[k][i])] for k in keys}
            assert shapes.parse_prompt(caption) == truth, caption
            assert shapes.parse_prompt(prompt) == truth, prompt
        assert len(set(batch.captions)) > len(set(batch.prompts)) // 2  # templates vary


def test_dataset_items_equal_the_generated_batch():
    data = ShapesDataset(20, split="val", seed=9)
    batch = generate_shapes(20, split="val", seed=9)
    assert len(data) == 20
    item = data[7]
    assert torch.equal(item["image"], batch.images[7]) and item["caption"] == batch.captions[7]
    assert item["shape"] == int(batch.labels["shape"][7])
    with pytest.raises(IndexError):
        data[20]


def test_stream_resumes_from_a_saved_generator_state():
    gen = torch.Generator().manual_seed(11)
    stream = shapes_stream(8, split="train", generator=gen)
    next(stream)
    state = gen.get_state()
    expected = next(stream)
    resumed = shapes_stream(8, split="train", generator=torch.Generator().set_state(state))
    got = next(resumed)
    assert torch.equal(got.images, expected.images) and got.captions == expected.captions
    assert not torch.equal(next(stream).images, expected.images)  # a fresh batch every step


def test_select_keeps_images_and_labels_together():
    batch = generate_shapes(10, seed=0)
    part = batch.select([3, 1])
    assert torch.equal(part.images[0], batch.images[3]) and part.prompts[1] == batch.prompts[1]
    assert len(batch.select(slice(2, 5))) == 3


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TinygenError, match="unknown split"):
        generate_shapes(4, split="training")
    with pytest.raises(TinygenError, match="seed"):
        generate_shapes(4, seed=-1)
    with pytest.raises(TinygenError, match="positive"):
        generate_shapes(0)


def test_sizes_and_radii_constants_are_consistent():
    assert set(shapes.RADII) == set(SIZES) and set(shapes.CENTRES) == set(POSITIONS)
    assert math.isclose(len(shapes.allowed_combos("train")), 42)
