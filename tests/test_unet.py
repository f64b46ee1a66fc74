"""The U-Net: shapes for every supported size, clear errors, and the properties its parts
must have (attention over pixels is permutation-equivariant, masks hide context, every
parameter is used, fast attention equals the reference)."""

from __future__ import annotations

import pytest
import torch

from tinygen.errors import TinygenError
from tinygen.nn.attention import Attention
from tinygen.nn.unet import AttentionBlock, UNet, UNetConfig

# tiny models run fastest on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> UNetConfig:
    base = dict(
        image_size=16,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        head_channels=8,
        norm_groups=8,
    )
    return UNetConfig(**{**base, **overrides})


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised layers random weights so outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("size", [16, 32, 48, 64])
def test_output_shape_equals_input_shape_for_every_supported_size(size):
    torch.manual_seed(0)
    config = tiny(image_size=size, channel_mult=(1, 2, 2), attention_resolutions=(size // 4,))
    model = UNet(config)
    x = torch.randn(2, 3, size, size)
    assert model(x, torch.tensor([3, 900])).shape == x.shape


def test_non_square_images_divisible_by_the_downsampling_work():
    model = UNet(tiny())
    x = torch.randn(1, 3, 16, 24)
    assert model(x, torch.tensor([5])).shape == x.shape


@pytest.mark.parametrize("shape", [(1, 3, 30, 30), (1, 3, 17, 16)])
def test_image_size_not_divisible_is_a_clear_error(shape):
    model = UNet(tiny(channel_mult=(1, 2, 2), attention_resolutions=(4,)))
    with pytest.raises(TinygenError, match="not divisible by 4"):
        model(torch.randn(shape), torch.tensor([1]))


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(TinygenError, match=r"\(B, 3, H, W\)"):
        UNet(tiny())(torch.randn(1, 1, 16, 16), torch.tensor([1]))


def test_config_errors_name_the_problem():
    with pytest.raises(TinygenError, match="image size 20 is not divisible by 8"):
        UNet(tiny(image_size=20, channel_mult=(1, 1, 1, 1)))
    with pytest.raises(TinygenError, match="attention_resolutions"):
        UNet(tiny(attention_resolutions=(5,)))
    with pytest.raises(TinygenError, match="head_channels"):
        UNet(tiny(head_channels=7))


def test_untrained_unet_outputs_zero_so_residual_paths_start_as_identity():
    # ADM's zero_module: the output conv starts at zero (DDPM starts predicting eps = 0)
    model = UNet(tiny())
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([1, 500]))
    assert torch.count_nonzero(out) == 0


def test_every_parameter_gets_a_gradient_once_the_output_layer_is_nonzero():
    torch.manual_seed(0)
    model = randomise(UNet(tiny(num_classes=5, context_dim=12)))
    out = model(
        torch.randn(2, 3, 16, 16),
        torch.tensor([1, 500]),
        torch.tensor([0, 4]),
        torch.randn(2, 3, 12),
    )
    out.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert unused == []


def test_output_depends_on_timestep_and_class_label():
    torch.manual_seed(0)
    model = randomise(UNet(tiny(num_classes=3))).eval()
    x = torch.randn(1, 3, 16, 16)
    base = model(x, torch.tensor([10]), torch.tensor([0]))
    assert not torch.allclose(base, model(x, torch.tensor([11]), torch.tensor([0])))
    assert not torch.allclose(base, model(x, torch.tensor([10]), torch.tensor([1])))
    with pytest.raises(TinygenError, match="needs class labels"):
        model(x, torch.tensor([10]))


def test_pixel_attention_is_equivariant_to_permuting_pixels():
    # no positional encoding: permuting the H*W tokens permutes the output the same way,
    # which fails if the (B, C, H, W) <-> (B, H*W, C) reshapes mix channels and pixels
    torch.manual_seed(0)
    block = randomise(
        AttentionBlock(16, head_channels=8, context_dim=None, norm_groups=4, dropout=0.0)
    )
    x = torch.randn(2, 16, 4, 4)
    perm = torch.randperm(16)
    permute = lambda t: t.flatten(2)[:, :, perm].view_as(t)  # noqa: E731
    assert torch.allclose(block(permute(x)), permute(block(x)), atol=1e-5)


def test_masked_context_tokens_do_not_change_the_output():
    torch.manual_seed(0)
    model = randomise(UNet(tiny(context_dim=6))).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 300])
    context = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    changed = context.clone()
    changed[~mask] = 100.0
    out = model(x, t, context=context, context_mask=mask)
    assert torch.allclose(out, model(x, t, context=changed, context_mask=mask), atol=1e-5)
    # and the real tokens do matter
    changed[0, 0] += 1.0
    assert not torch.allclose(out, model(x, t, context=changed, context_mask=mask), atol=1e-5)


def test_sdpa_path_equals_reference_attention():
    torch.manual_seed(0)
    model = randomise(UNet(tiny(context_dim=6))).eval()
    x, t, context = torch.randn(2, 3, 16, 16), torch.tensor([3, 300]), torch.randn(2, 4, 6)
    fast = model(x, t, context=context)
    for m in model.modules():
        if isinstance(m, Attention):
            m.use_sdpa = False
    assert torch.allclose(fast, model(x, t, context=context), atol=1e-5)


def test_additive_and_scale_shift_time_embedding_both_train():
    # one step of Adam lowers the loss of a fixed batch for both injection styles
    for scale_shift in (True, False):
        torch.manual_seed(0)
        model = UNet(tiny(scale_shift=scale_shift))
        x, target = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
        t = torch.tensor([1, 10, 100, 999])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(5):
            loss = (model(x, t) - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
