"""CLIP model and loss: the loss against a direct formulation, unit-norm features, the
temperature clamp, end-of-text pooling, and errors for inputs that do not fit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinygen.errors import TinygenError
from tinygen.models.clip import CLIP, CLIPConfig, clip_loss
from tinygen.models.registry import build_model

TINY = dict(
    embed_dim=16,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
    vocab_size=20,
    context_length=8,
    resnet_width=8,
)


def loss_by_log_softmax(img: torch.Tensor, txt: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's pseudo-code (fig. 3), written element by element with log-softmax."""
    img = img / img.norm(dim=1, keepdim=True)
    txt = txt / txt.norm(dim=1, keepdim=True)
    logits = scale * img @ txt.T
    n = len(img)
    loss_i = -sum(torch.log_softmax(logits[i], 0)[i] for i in range(n)) / n
    loss_t = -sum(torch.log_softmax(logits[:, j], 0)[j] for j in range(n)) / n
    return (loss_i + loss_t) / 2


def test_loss_equals_direct_log_softmax_formulation():
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    for scale in (1.0, 14.3, 100.0):
        expected = loss_by_log_softmax(img.double(), txt.double(), scale)
        assert clip_loss(img, txt, scale).item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_is_log_batch_size_for_uninformative_features():
    same = torch.ones(9, 4)
    assert clip_loss(same, same, 50.0).item() == pytest.approx(math.log(9), rel=1e-6)
    assert clip_loss(torch.randn(6, 3), torch.randn(6, 3), 0.0).item() == pytest.approx(
        math.log(6), rel=1e-6
    )


def test_loss_near_zero_for_perfect_matching_at_high_scale():
    eye = torch.eye(5)
    assert clip_loss(eye, eye, 100.0).item() < 1e-6  # log(1 + 4 e^-100)


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(torch.randn(4, 8), torch.randn(5, 8), 1.0)


@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_features_are_unit_norm_and_scale_starts_at_one_over_0_07(tower):
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(image_tower=tower, **TINY))
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0]] * 3)
    img, txt, scale = model(images, tokens)
    assert img.shape == txt.shape == (3, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_temperature_never_exceeds_100_during_training():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**TINY))
    opt = torch.optim.SGD([model.logit_scale], lr=10.0)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    tokens = torch.tensor([[1, 3 + i, 2, 0, 0, 0, 0, 0] for i in range(4)])
    seen = []
    for _ in range(20):
        img, txt, scale = model(images, tokens)
        # Reward a larger scale directly so the optimiser pushes t up hard.
        (clip_loss(img, txt, scale) - scale).backward()
        opt.step()
        opt.zero_grad()
        model.clamp_logit_scale()
        seen.append(model.logit_scale.exp().item())
    assert max(seen) <= 100.0 + 1e-4
    assert seen[-1] == pytest.approx(100.0, rel=1e-5)


def test_text_tower_pools_at_end_of_text_and_ignores_padding():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**TINY)).eval()
    short = torch.tensor([[1, 7, 8, 2, 0, 0, 0, 0]])
    pooled = model.text(short)
    by_hand = model.text.ln_final(_run_blocks(model, short))[:, 3]
    torch.testing.assert_close(pooled, by_hand)
    cut = torch.tensor([[1, 7, 8, 2]])  # the same caption without padding
    torch.testing.assert_close(model.encode_text(short), model.encode_text(cut))


def _run_blocks(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    x = model.text.token_embedding(tokens) + model.text.pos_embedding[: tokens.shape[1]]
    for block in model.text.blocks:
        x = block(x)
    return x


def test_vit_matches_reference_attention_path():
    """The SDPA fast path and the plain softmax path give the same image features."""
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**TINY)).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    fast = model.encode_image(images)
    for block in model.visual.blocks:
        block.attn.use_sdpa = False
    torch.testing.assert_close(model.encode_image(images), fast, atol=1e-5, rtol=1e-5)


def test_registry_rebuilds_clip_from_config_dict():
    from dataclasses import asdict

    config = CLIPConfig(image_tower="resnet", **TINY)
    model = build_model("clip", asdict(config))
    assert isinstance(model, CLIP) and model.config == config


def test_wrong_image_size_is_a_clear_error():
    model = CLIP(CLIPConfig(**TINY))
    with pytest.raises(TinygenError, match="resize them to 32x32"):
        model.encode_image(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_tower": "cnn"}, "choose vit or resnet"),
        ({"text_tower": "bert"}, "choose transformer or minilm"),
        ({"vision_width": 30, "vision_heads": 4}, "divisible by"),
        ({"patch_size": 5}, "not divisible"),
    ],
)
def test_bad_config_is_a_clear_error(change, message):
    with pytest.raises(TinygenError, match=message):
        CLIP(CLIPConfig(**{**TINY, **change}))


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    """A sanity property of the whole graph: gradients reach both towers and descend."""
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**TINY))
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    tokens = torch.tensor([[1, 3 + i, 2, 0, 0, 0, 0, 0] for i in range(8)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = clip_loss(*model(images, tokens))
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.5 * losses[0]
    assert F.cosine_similarity(*model(images, tokens)[:2]).mean() > 0.5
