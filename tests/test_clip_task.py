"""The CLIP training task: batches without repeats, reproducible from the generator, and
partial captions that name exactly a subset of the image's attributes."""

from __future__ import annotations

import torch

from tinygen.data.caption_tokenizer import CaptionTokenizer
from tinygen.data.shapes import ATTRIBUTES, parse_prompt
from tinygen.models.clip import CLIP, CLIPConfig
from tinygen.recipes.clip import CLIPTask, shapes_pairs, shapes_zero_shot_templates


def make_task(variant_prob: float) -> tuple[CLIPTask, object]:
    pairs = shapes_pairs(64, split="train", seed=3)
    tokenizer = CaptionTokenizer.from_captions(pairs.captions)
    config = CLIPConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=tokenizer.context_length,
        embed_dim=8,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        text_width=16,
        text_layers=1,
        text_heads=2,
    )
    return CLIPTask(CLIP(config), tokenizer, pairs, pairs, variant_prob=variant_prob), pairs


def test_partial_captions_name_a_subset_of_the_true_attributes():
    pairs = shapes_pairs(40, split="train", seed=1)
    full = [parse_prompt(c) for c in pairs.captions]
    for truth, variants in zip(full, pairs.variants):
        named = [parse_prompt(v) for v in variants]
        assert named[0] == {"color": truth["color"], "shape": truth["shape"]}
        for attributes in named:
            assert attributes.items() <= truth.items()
        assert {"size", "position"} == {k for a in named for k in a} - {"color", "shape"}


def test_batches_have_no_repeated_image_and_follow_the_generator():
    task, _ = make_task(0.5)
    a = task.get_batch("train", 32, torch.Generator().manual_seed(7))
    b = task.get_batch("train", 32, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    flat = a[0].flatten(1)
    assert len(torch.unique(flat, dim=0)) == 32


def test_variant_probability_chooses_between_full_and_partial_captions():
    for prob, expect_full in ((0.0, True), (1.0, False)):
        task, pairs = make_task(prob)
        images, tokens = task.get_batch("train", 16, torch.Generator().manual_seed(0))
        index = [int((pairs.images == im).flatten(1).all(1).nonzero()) for im in images]
        for i, row in zip(index, tokens):
            text = task.tokenizer.decode(row)
            full = task.tokenizer.decode(task.tokenizer.encode(pairs.captions[i]))
            assert (text == full) == expect_full
            if not expect_full:
                assert text in pairs.variants[i]
    # validation batches always carry the full captions
    task, pairs = make_task(1.0)
    _, tokens = task.get_batch("val", 8, torch.Generator().manual_seed(0))
    assert all(len(task.tokenizer.decode(r).split()) >= 4 for r in tokens)  # "a red circle" has 3


def test_zero_shot_templates_parse_to_colour_and_shape_plus_at_most_one_attribute():
    for template in shapes_zero_shot_templates():
        parsed = parse_prompt(template.format("blue star"))
        assert parsed["color"] == "blue" and parsed["shape"] == "star"
        assert len(parsed) <= 3 and set(parsed) <= set(ATTRIBUTES)
