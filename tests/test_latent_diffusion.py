"""Latent diffusion against independent truths: the transformer block with an empty context
is self-attention + feed-forward (the formula), a run reloads from its own directory alone,
a damaged run is one clear error, CLIP's tower stays frozen, latent blending keeps the known
latents exactly, and the commands run end to end on tiny runs."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from ldm_runs import autoencoder_run, clip_run, ldm_run
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.models.latent_diffusion import latent_mask, latent_unet_config
from tinygen.nn.spatial_transformer import TransformerBlock
from tinygen.nn.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the transformer block ---------------------------------------------------------------


def _self_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, then the output projection (Vaswani eq. 1)."""
    b, t, dim = x.shape
    heads = attn.n_head
    q, k, v = attn.qkv_proj(x).split(dim, dim=-1)
    q, k, v = (z.view(b, t, heads, dim // heads).transpose(1, 2) for z in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    return attn.out_proj((weights @ v).transpose(1, 2).reshape(b, t, dim))


def _geglu(ff, x: torch.Tensor) -> torch.Tensor:
    value, gate = ff.proj(x).chunk(2, dim=-1)
    return ff.out(value * F.gelu(gate))


def test_transformer_block_with_an_empty_context_is_self_attention_plus_feed_forward():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, context_dim=8).eval()
    x = torch.randn(2, 5, 16)
    h = x + _self_attention(block.attn1, block.norm1(x))
    want = h + _geglu(block.ff, block.norm3(h))
    for context in (torch.zeros(2, 0, 8), None):
        torch.testing.assert_close(block(x, context), want, atol=1e-5, rtol=1e-5)
    # a real context does change it: the cross-attention is there, and used
    assert not torch.allclose(block(x, torch.randn(2, 3, 8)), want, atol=1e-3)


def test_the_latent_unet_attends_to_the_caption_the_way_it_is_asked():
    base = UNetConfig(
        image_size=32, base_channels=16, channel_mult=(1, 2), attention_resolutions=(8,)
    )
    for attention, block, mode in (
        ("transformer", "transformer", "cross_attention"),
        ("concat_kv", "adm", "concat_kv"),
    ):
        config = latent_unet_config(base, latent_size=16, latent_channels=3, attention=attention)
        assert (config.image_size, config.in_channels, config.out_channels) == (16, 3, 3)
        assert (config.attention_type, config.context_mode) == (block, mode)
        unet = UNet(dataclasses.replace(config, context_dim=8))
        context = torch.randn(2, 5, 8)
        x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 7])
        with torch.no_grad():  # the caption changes the output either way
            for p in unet.parameters():
                torch.nn.init.normal_(p, std=0.05)
            assert not torch.allclose(unet(x, t, context=context), unet(x, t, context=-context))
    with pytest.raises(TinygenError, match="unknown attention"):
        latent_unet_config(base, latent_size=16, latent_channels=3, attention="flash")


def test_latent_mask_repaints_a_latent_cell_when_any_of_its_pixels_is_masked():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 5, 2] = 1  # one pixel of the latent cell (1, 0) at f = 4
    want = torch.zeros(1, 1, 2, 2)
    want[0, 0, 1, 0] = 1
    assert torch.equal(latent_mask(mask, 4), want)


# -- runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    torch.set_num_threads(1)
    ae = autoencoder_run(root)
    clip = clip_run(root)
    return {
        "root": root,
        "ae": ae,
        "clip": clip,
        "joint": ldm_run(root, ae),
        "clip-ldm": ldm_run(root, ae, f"clip:{clip}", name="ldm-clip"),
    }


def _generate(run, prompts=("a red circle", "a large blue square on the left")):
    from tinygen.recipes.text2image import load_text2image

    pipeline = load_text2image(run)
    gen = torch.Generator().manual_seed(0)
    return pipeline.generate(list(prompts), sampler=SamplerConfig(steps=4), generator=gen)


@pytest.mark.parametrize("which", ["joint", "clip-ldm"])
def test_a_run_reloads_from_its_own_directory_alone(runs, which, tmp_path):
    before = _generate(runs[which])
    root = tmp_path / "elsewhere"
    shutil.copytree(runs["root"], root)  # the autoencoder and CLIP runs too, then delete them
    shutil.rmtree(root / runs["ae"].name)
    shutil.rmtree(root / runs["clip"].name)
    after = _generate(root / runs[which].name)
    assert torch.equal(before, after)


def test_the_clip_text_tower_is_the_clip_runs_and_stays_frozen(runs):
    from tinygen.recipes.clip import load_clip
    from tinygen.recipes.latent_diffusion import load_latent_diffusion

    clip, _, _ = load_clip(runs["clip"])
    ldm, tokenizer, config = load_latent_diffusion(runs["clip-ldm"])
    tower = ldm.denoiser.conditioner.text.state_dict()
    for name, value in clip.text.state_dict().items():  # trained 6 steps: not a weight moved
        assert torch.equal(tower[name], value), name
    assert config["model"]["text_encoder"] == "clip"
    assert tokenizer.words == load_clip(runs["clip"])[1].words


def test_a_missing_or_damaged_autoencoder_is_one_clear_error(runs, tmp_path):
    from tinygen.recipes.latent_diffusion import load_latent_diffusion

    run = shutil.copytree(runs["joint"], tmp_path / "ldm")
    weights = run / "autoencoder" / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(TinygenError, match="autoencoder inside the run cannot be loaded"):
        load_latent_diffusion(run)
    weights.unlink()
    with pytest.raises(TinygenError, match="autoencoder is missing"):
        load_latent_diffusion(run)


def test_latent_blending_keeps_the_known_latents_exactly(runs):
    from tinygen.data.shapes import generate_shapes
    from tinygen.recipes.text2image import load_text2image

    pipeline = load_text2image(runs["joint"])
    ldm = pipeline.model
    images = generate_shapes(2, split="test", image_size=32).images
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:17, 4:12] = 1
    z0 = ldm.encode(images, torch.Generator().manual_seed(5))  # inpaint's first draw
    ldm.decode = lambda latents: latents  # see the final latents themselves
    try:
        out = pipeline.inpaint(images, masks, ["a red star"] * 2, sampler=SamplerConfig(steps=4),
                               generator=torch.Generator().manual_seed(5))  # fmt: skip
    finally:
        del ldm.decode
    keep = latent_mask(masks, 4).expand_as(z0) == 0
    assert torch.equal(out[keep], z0[keep])
    assert not torch.equal(out[~keep], z0[~keep])


def test_wrong_inputs_are_clear_errors(runs):
    from tinygen.recipes.latent_diffusion import (
        parse_text_encoder,
        preset,
        train_latent_diffusion,
    )
    from tinygen.recipes.text2image import load_text2image

    pipeline = load_text2image(runs["joint"])
    with pytest.raises(TinygenError, match="resize them to 32 px"):
        pipeline.img2img(torch.zeros(1, 3, 16, 16), ["a red circle"])
    with pytest.raises(TinygenError, match="prompts for"):
        pipeline.img2img(torch.zeros(2, 3, 32, 32), ["a red circle"])
    with pytest.raises(TinygenError, match="not in this model's caption vocabulary"):
        pipeline.generate(["a red dragon"])
    with pytest.raises(TinygenError, match="joint.*clip:RUN"):
        parse_text_encoder("clip")
    with pytest.raises(TinygenError, match="autoencoder"):  # a run of another kind
        p = preset("tiny")
        train_latent_diffusion(runs["clip"], p.model, p.train, p.extras["data"], runs["root"] / "x")


# -- the commands --------------------------------------------------------------------------


def test_the_commands_run_on_a_tiny_run(runs, tmp_path, monkeypatch):
    from tinygen.cli.main import main
    from tinygen.data.image_folder import save_image_grid
    from tinygen.data.shapes import generate_shapes
    from tinygen.models.shapes_evaluator import EvaluatorConfig
    from tinygen.recipes.evaluator import train_evaluator
    from tinygen.train.config import TrainConfig

    judge = TrainConfig(max_iters=2, batch_size=8, eval_interval=2, eval_iters=1, warmup_iters=1)
    train_evaluator(EvaluatorConfig(width=8), judge, tmp_path / "judge", progress=False)
    monkeypatch.setenv("TINYGEN_EVALUATOR", str(tmp_path / "judge"))
    out = runs["root"] / "cmd"
    assert main(["train", "latent-diffusion", "--autoencoder", str(runs["ae"]), "--preset",
                 "tiny", "--max-iters", "3", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    assert (out / "autoencoder" / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    grid = tmp_path / "grid.png"
    assert main(["generate", "--run", str(out), "--prompt", "a red circle", "--n", "2",
                 "--steps", "2", "--out", str(grid)]) == 0  # fmt: skip
    assert grid.is_file()
    assert main(["eval", "text2image", "--run", str(out), "--n", "4", "--guidance", "3",
                 "--steps", "2", "--out", str(tmp_path / "t2i")]) == 0  # fmt: skip
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    save_image_grid(generate_shapes(1, split="test", image_size=32).images, image, padding=0)
    m = torch.zeros(1, 3, 32, 32)
    m[:, :, 8:20, 8:20] = 1
    save_image_grid(m * 2 - 1, mask, padding=0)
    assert main(["inpaint", "--run", str(out), "--image", str(image), "--mask", str(mask),
                 "--prompt", "a blue star", "--n", "1", "--steps", "2",
                 "--out", str(tmp_path / "inpaint.png")]) == 0  # fmt: skip
    assert main(["eval", "inpainting", "--run", str(out), "--n", "4", "--steps", "2",
                 "--out", str(tmp_path / "inp")]) == 0  # fmt: skip
    import json

    row = json.loads((tmp_path / "inp" / "eval.json").read_text())
    assert row["outside_mean_abs_error"] > 0  # latent blending: the decoder redraws it all
