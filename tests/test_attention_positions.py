"""The U-Net attention's pixel-position embedding (`UNetConfig.attention_positions`): off by
default (no new weights), started at the 2-D sinusoids, it breaks the block's symmetry
between places (a uniform feature map no longer gives the same output at every pixel),
and a feature map of another size is one clear error."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinygen.errors import TinygenError
from tinygen.nn.embeddings import sinusoidal_embedding, sinusoidal_embedding_2d
from tinygen.nn.resnet import AttentionBlock
from tinygen.nn.unet import UNet
from tinygen.recipes.diffusion import PRESETS

CONFIG = PRESETS["tiny"].model.unet  # 16 px, attention at 8x8 and in the middle


def test_grid_embedding_is_row_then_column_sinusoids():
    emb = sinusoidal_embedding_2d(4, 10).view(4, 4, 10)
    rows = sinusoidal_embedding(torch.arange(4), 5, max_period=100.0)
    cols = sinusoidal_embedding(torch.arange(4), 5, max_period=100.0)
    assert torch.equal(emb[2, 3, :5], rows[2]) and torch.equal(emb[2, 3, 5:], cols[3])
    assert torch.equal(emb[2, 0, :5], emb[2, 3, :5])  # a row shares its first half


def test_off_by_default_and_one_table_per_attention_block():
    assert not any("position" in k for k in UNet(CONFIG).state_dict())
    model = UNet(dataclasses.replace(CONFIG, attention_positions=True))
    tables = {k: v.shape for k, v in model.state_dict().items() if k.endswith(".position")}
    # attention at 8x8 (down, two up blocks) and in the middle (8x8 too: two levels, 16 -> 8)
    assert tables and all(shape == (64, 32) for shape in tables.values())


def test_positions_break_the_symmetry_between_places():
    torch.manual_seed(0)
    uniform = torch.randn(2, 32, 1, 1).expand(2, 32, 8, 8).contiguous()
    for side, varies in ((0, False), (8, True)):
        block = AttentionBlock(32, head_channels=16, context_dim=None, norm_groups=8,
                               dropout=0.0, position_side=side)  # fmt: skip
        with torch.no_grad():  # the output projection starts at zero; make it count
            block.attn.out_proj.weight.normal_()
        out = block(uniform + 0.01 * torch.arange(32.0).view(1, 32, 1, 1))
        spread = (out - out[..., :1, :1]).abs().amax().item()
        assert (spread > 1e-3) == varies, (side, spread)


def test_another_feature_map_size_is_an_error():
    block = AttentionBlock(32, head_channels=16, context_dim=None, norm_groups=8, dropout=0.0,
                           position_side=8)  # fmt: skip
    with pytest.raises(TinygenError, match="8x8 feature map.*got 4x4"):
        block(torch.randn(1, 32, 4, 4))
    with pytest.raises(TinygenError, match="adm attention"):
        UNet(dataclasses.replace(CONFIG, attention_positions=True, attention_type="transformer"))
