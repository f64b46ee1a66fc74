"""The ViT's optional conv stem (`vision_stem_channels`): its features join the pixels before
the patch embedding, a clean CLIP warm-starts a stemmed noised CLIP exactly, and the stem
learns from step 0."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tinygen.errors import TinygenError
from tinygen.models.clip import CLIP, CLIPConfig, VisionTransformer
from tinygen.recipes.clip import PRESETS, load_clip, train_clip
from tinygen.recipes.clip_noised import noised_config, warm_start

TOWER = dict(image_size=16, patch_size=4, width=32, layers=1, heads=2)


def test_the_stem_is_a_same_size_conv_whose_gelu_features_join_the_pixels():
    torch.manual_seed(0)
    tower = VisionTransformer(**TOWER, stem_channels=5, stem_kernel=5).eval()
    assert tower.patch_embed.proj.in_channels == 3 + 5
    images = torch.randn(2, 3, 16, 16)
    # the reference: the same patch embedding applied by hand to [pixels, gelu(conv(pixels))]
    features = F.gelu(F.conv2d(images, tower.stem.weight, tower.stem.bias, padding=2))
    joined = torch.cat([images, features], dim=1)
    tokens = F.conv2d(joined, tower.patch_embed.proj.weight, tower.patch_embed.proj.bias, stride=4)
    x = torch.cat([tower.class_token.expand(2, 1, -1), tokens.flatten(2).transpose(1, 2)], 1)
    x = tower.ln_pre(x + tower.pos_embedding)
    for block in tower.blocks:
        x = block(x)
    torch.testing.assert_close(tower(images), tower.ln_post(x[:, 0]))


def test_without_a_stem_the_tower_is_the_clean_one():
    tower = VisionTransformer(**TOWER)
    assert tower.stem is None
    assert not any(name.startswith("stem.") for name, _ in tower.named_parameters())


def test_an_even_kernel_or_a_stem_on_the_resnet_is_one_clear_error():
    with pytest.raises(TinygenError, match="odd"):
        VisionTransformer(**TOWER, stem_channels=4, stem_kernel=4)
    with pytest.raises(TinygenError, match="odd"):
        CLIPConfig(vision_stem_channels=4, vision_stem_kernel=8).validate()
    with pytest.raises(TinygenError, match="image-tower vit"):
        CLIPConfig(image_tower="resnet", vision_stem_channels=4).validate()


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clip"
    preset = PRESETS["tiny"]
    train = dataclasses.replace(preset.train, max_iters=3)
    train_clip(preset.model, train, out, train_size=256, val_size=64, progress=False)
    return out


def test_a_clean_clip_warm_starts_a_stemmed_noised_clip_exactly_and_the_stem_learns(clean_run):
    clean, tokenizer, _ = load_clip(clean_run)
    model = dataclasses.replace(
        PRESETS["tiny"].model,
        vocab_size=tokenizer.vocab_size,
        context_length=tokenizer.context_length,
        vision_stem_channels=6,
        vision_stem_kernel=5,
    )
    config = noised_config(model, 100)
    _, load = warm_start(clean_run, config)
    noised = CLIP(config)
    load(noised)
    size = config.image_size
    images = torch.rand(4, 3, size, size) * 2 - 1
    t = torch.tensor([0, 10, 50, 99])
    noised.eval()
    torch.testing.assert_close(noised.encode_image(images, t), clean.encode_image(images))
    # the pixel columns are the clean ones, the stem's columns zero, the stem itself random
    patch = noised.visual.patch_embed.proj.weight
    torch.testing.assert_close(patch[:, :3], clean.visual.patch_embed.proj.weight)
    assert (patch[:, 3:] == 0).all()
    assert noised.visual.stem.weight.abs().sum() > 0
    # so the stem's columns receive a gradient at step 0 (the stem itself once they move)
    noised.train()
    noised.encode_image(images, t).pow(2).sum().backward()
    assert patch.grad[:, 3:].abs().sum() > 0


def test_a_stemmed_source_keeps_its_stem_or_is_one_clear_error(tmp_path):
    preset = PRESETS["tiny"]
    stemmed = dataclasses.replace(preset.model, vision_stem_channels=4, vision_stem_kernel=3)
    train = dataclasses.replace(preset.train, max_iters=1)
    run = tmp_path / "stemmed"
    train_clip(stemmed, train, run, train_size=64, val_size=16, progress=False)
    clean, tokenizer, _ = load_clip(run)
    sizes = dict(vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length)
    same = noised_config(dataclasses.replace(stemmed, **sizes), 100)
    _, load = warm_start(run, same)
    noised = CLIP(same).eval()
    load(noised)
    images = torch.rand(2, 3, same.image_size, same.image_size) * 2 - 1
    torch.testing.assert_close(noised.encode_image(images, 5), clean.encode_image(images))
    for other in (dict(vision_stem_channels=0), dict(vision_stem_channels=8)):
        config = noised_config(dataclasses.replace(stemmed, **sizes, **other), 100)
        with pytest.raises(TinygenError, match="vision_stem_channels"):
            warm_start(run, config)
