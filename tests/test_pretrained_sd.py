"""Stable Diffusion in our modules equals diffusers: a tiny random pipeline built in-process
(no download), saved with `save_pretrained`, loaded with `StableDiffusion.from_pretrained`.

- components: U-Net forward, VAE encode / decode, text encoder, each against the reference;
- pipelines: the final latents of txt2img and img2img equal `StableDiffusionPipeline` and
  `StableDiffusionImg2ImgPipeline`'s for the same seed, scheduler and guidance;
- coverage of the real configs: SD v1.5's U-Net, VAE and text encoder built on the meta
  device map every tensor onto ours with the same shape, none left over;
- bad input is one clear error.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tinygen.errors import TinygenError

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)
WORDS = ["a", "red", "blue", "circle", "square", "photo", "of", "cat"]


def tiny_tokenizer(directory):
    """A CLIPTokenizer over single letters (no merges): every word is its letters, the last
    one marked `</w>`."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77
    )


def tiny_components(tmp):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,  # SD v1's naming: the number of heads
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=54,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    with torch.no_grad():  # diffusers starts a few layers at zero; make every tensor matter
        for p in [*unet.parameters(), *vae.parameters()]:
            p.add_(torch.randn(p.shape) * 0.02)
    return dict(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tiny_tokenizer(tmp),
        scheduler=DDIMScheduler(**SD_SCHEDULER),
    )


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    tmp = tmp_path_factory.mktemp("sd")
    components = tiny_components(tmp)
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(tmp / "pipe")
    return tmp / "pipe", pipe


@pytest.fixture(scope="module")
def ours(pipeline_dir):
    from tinygen.models.stable_diffusion import StableDiffusion

    return StableDiffusion.from_pretrained(pipeline_dir[0])


def max_error(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# -- components ------------------------------------------------------------------------------
def test_unet_forward_matches_diffusers(pipeline_dir, ours):
    unet = pipeline_dir[1].unet
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([3, 981])
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=context).sample
        got = ours.unet(x, t, context=context)
    assert max_error(got, expected) < 1e-5, max_error(got, expected)


def test_vae_encode_decode_match_diffusers(pipeline_dir, ours):
    vae = pipeline_dir[1].vae
    g = torch.Generator().manual_seed(2)
    images, z = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        theirs, mine = vae.encode(images).latent_dist, ours.vae.encode(images)
        assert max_error(mine.mean, theirs.mean) < 1e-5
        assert max_error(mine.logvar, theirs.logvar) < 1e-5
        assert max_error(mine.kl(), theirs.kl()) < 1e-4
        draw = mine.sample(torch.Generator().manual_seed(5))
        assert max_error(draw, theirs.sample(torch.Generator().manual_seed(5))) < 1e-5
        assert max_error(ours.vae.decode(z), vae.decode(z).sample) < 1e-5


def test_text_encoder_matches_transformers(pipeline_dir, ours):
    ids = ours.tokenize(["a red circle", "a photo of a cat", ""])
    assert ids.shape == (3, 77) and ids[0, 0] == 0  # <|startoftext|> first
    with torch.no_grad():
        expected = pipeline_dir[1].text_encoder(ids).last_hidden_state
    assert max_error(ours.encode_prompt(ids), expected) < 1e-5


# -- pipelines -------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_txt2img_latents_match_stable_diffusion_pipeline(pipeline_dir, ours, guidance):
    pipe = pipeline_dir[1]
    prompts = ["a red circle", "a blue square"]
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    expected = pipe(
        prompts, num_inference_steps=8, guidance_scale=guidance, latents=latents.clone(),
        output_type="latent", height=32, width=32,
    ).images  # fmt: skip
    got = ours.txt2img(
        prompts, steps=8, guidance=guidance, latents=latents, output="latent", progress=False
    )
    assert max_error(got, expected) < 1e-4, max_error(got, expected)


def test_txt2img_draws_diffusers_noise_from_the_seed(pipeline_dir, ours):
    expected = pipeline_dir[1](
        "a cat", num_inference_steps=4, guidance_scale=7.5, output_type="latent",
        generator=torch.Generator().manual_seed(11), height=32, width=32,
    ).images  # fmt: skip
    got = ours.txt2img("a cat", steps=4, seed=11, height=32, width=32, output="latent")
    assert max_error(got, expected) < 1e-4


@pytest.mark.parametrize("strength", [0.58, 1.0])
def test_img2img_latents_match_img2img_pipeline(pipeline_dir, ours, strength):
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    pipe = StableDiffusionImg2ImgPipeline(**pipeline_dir[1].components)
    pixels = torch.randint(0, 256, (32, 32, 3), generator=torch.Generator().manual_seed(4))
    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    expected = pipe(
        "a blue circle", image=image, strength=strength, num_inference_steps=10,
        guidance_scale=7.5, generator=torch.Generator().manual_seed(7), output_type="latent",
    ).images  # fmt: skip
    got = ours.img2img(
        image, "a blue circle", strength=strength, steps=10, guidance=7.5, seed=7,
        output="latent", progress=False,
    )  # fmt: skip
    assert max_error(got, expected) < 1e-4, max_error(got, expected)


def test_strength_zero_returns_the_image_encoded_and_decoded(ours):
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with pytest.warns(UserWarning, match="no denoising step"):
        latents = ours.img2img(image, "a cat", strength=0.0, steps=10, output="latent")
    assert max_error(latents, ours.encode_image(image, torch.Generator().manual_seed(0))) == 0


# -- the real configs on the meta device -----------------------------------------------------
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
    center_input_sample=False, downsample_padding=1, mid_block_scale_factor=1,
)  # fmt: skip
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512,
    scaling_factor=0.18215,
)  # fmt: skip
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=768,
)  # fmt: skip


def test_every_sd15_tensor_maps_onto_ours():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tinygen.models.autoencoder import AutoencoderKL as OurAutoencoder
    from tinygen.models.clip import TextTransformer
    from tinygen.models.convert import stable_diffusion as convert
    from tinygen.models.convert.clip import clip_text_config_from_hf, convert_clip_text_state_dict
    from tinygen.nn.unet import UNet

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
        our_unet = UNet(convert.unet_config_from_diffusers(dict(unet.config)))
        our_vae = OurAutoencoder(convert.vae_config_from_diffusers(dict(vae.config)))
        our_text = TextTransformer(**clip_text_config_from_hf(SD15_TEXT))
    theirs = {"unet": unet.state_dict(), "vae": vae.state_dict(), "text": text.state_dict()}
    assert [len(v) for v in theirs.values()] == [686, 248, 196]
    unet_done = convert.convert_unet_state_dict(theirs["unet"], our_unet.state_dict())
    vae_done = convert.convert_vae_state_dict(theirs["vae"], our_vae.state_dict())
    assert (unet_done.used, vae_done.used) == (686, 248)  # every reference tensor, once
    assert (unet_done.mapped, vae_done.mapped) == (638, 240)  # q, k, v fused into one of ours
    text_done = convert_clip_text_state_dict(theirs["text"], our_text.state_dict())
    assert len(text_done) == len(our_text.state_dict())  # (it raises on anything left over)
    counts = [sum(p.numel() for p in m.parameters()) for m in (our_unet, our_vae, our_text)]
    assert counts == [
        sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)
    ]  # 859,520,964 / 83,653,863 / 123,060,480


def test_old_vae_attention_names_load(pipeline_dir, ours):
    """The Hub's SD v1 VAE files name the middle attention query/key/value/proj_attn."""
    from tinygen.models.convert.stable_diffusion import convert_vae_state_dict

    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, tensor in pipeline_dir[1].vae.state_dict().items():
        for new, before in old_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{before}.")
        old[key] = tensor
    assert sum(".query." in k or ".proj_attn." in k for k in old) == 8  # encoder + decoder
    converted = convert_vae_state_dict(old, ours.vae.state_dict()).state_dict
    assert all(torch.equal(converted[k], v) for k, v in ours.vae.state_dict().items())


# -- bad input -------------------------------------------------------------------------------
def test_a_folder_without_vae_is_one_clear_error(pipeline_dir, tmp_path):
    from tinygen.models.stable_diffusion import StableDiffusion

    broken = tmp_path / "no_vae"
    shutil.copytree(pipeline_dir[0], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(TinygenError, match="has no vae/ folder"):
        StableDiffusion.from_pretrained(broken)


def test_a_folder_of_another_kind_is_one_clear_error(pipeline_dir, tmp_path):
    from tinygen.models.stable_diffusion import StableDiffusion

    with pytest.raises(TinygenError, match="no diffusers pipeline folder.*single model"):
        StableDiffusion.from_pretrained(pipeline_dir[0] / "text_encoder")  # a CLIPTextModel
    swapped = tmp_path / "swapped"
    shutil.copytree(pipeline_dir[0], swapped)
    shutil.rmtree(swapped / "vae")
    shutil.copytree(swapped / "unet", swapped / "vae")  # a U-Net where the VAE should be
    with pytest.raises(TinygenError, match="UNet2DConditionModel model, not the AutoencoderKL"):
        StableDiffusion.from_pretrained(swapped)
    with pytest.raises(TinygenError, match="does not exist"):
        StableDiffusion.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_unit_interval_is_refused(ours, strength):
    with pytest.raises(TinygenError, match=r"--strength must be in \[0, 1\]"):
        ours.img2img(torch.zeros(1, 3, 32, 32), "a cat", strength=strength)


def test_an_image_of_another_size_is_resized_or_refused(ours):
    from PIL import Image

    with pytest.warns(UserWarning, match="36x30; resized to 32x24"):
        pixels = ours.image_tensor(Image.new("RGB", (36, 30)))
    assert pixels.shape == (1, 3, 24, 32)  # multiples of 8 = VAE (2) x U-Net (4)
    with pytest.raises(TinygenError, match="multiples of 8"):
        ours.image_tensor(torch.zeros(1, 3, 30, 32))  # a tensor is never resized silently
    with pytest.raises(TinygenError, match="needs at least 8x8"):
        ours.image_tensor(Image.new("RGB", (3, 40)))


def test_transformer_block_with_empty_context_is_self_attention_and_feed_forward():
    from tinygen.nn.spatial_transformer import SpatialTransformer

    torch.manual_seed(0)
    block = SpatialTransformer(32, 4, context_dim=16, norm_groups=8).eval()
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)  # (zero at init)
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        got = block(x, torch.zeros(2, 0, 16))
        assert torch.equal(got, block(x, None))
        inner = block.transformer_blocks[0]
        h = block.proj_in(block.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = h + inner.attn1(inner.norm1(h))
        h = h + inner.ff(inner.norm3(h))
        expected = block.proj_out(h.transpose(1, 2).reshape(2, 32, 4, 4)) + x
        assert max_error(got, expected) < 1e-6
        with_context = block(x, torch.randn(2, 3, 16))
    assert max_error(with_context, got) > 1e-3  # the context does matter when present


# -- the commands and the memory figure ------------------------------------------------------
def test_txt2img_and_img2img_commands_write_pngs(pipeline_dir, tmp_path, capsys):
    from PIL import Image

    from tinygen.cli.main import main

    folder, out = str(pipeline_dir[0]), tmp_path / "a.png"
    common = ["--steps", "2", "--seed", "1", "--no-progress"]
    assert main(["txt2img", "--hf", folder, "--prompt", "a cat", "--height", "32",
                 "--width", "40", "--out", str(out), *common]) == 0  # fmt: skip
    assert Image.open(out).size == (40, 32)
    again = tmp_path / "b.png"
    assert main(["img2img", "--hf", folder, "--image", str(out), "--prompt", "a red cat",
                 "--strength", "0.5", "--out", str(again), *common]) == 0  # fmt: skip
    assert Image.open(again).size == (40, 32)
    assert main(["img2img", "--hf", folder, "--image", str(tmp_path / "none.png"),
                 "--prompt", "x"]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


def test_memory_figure_is_weights_plus_the_largest_stage():
    from tinygen.models.stable_diffusion_memory import stable_diffusion_memory

    report = stable_diffusion_memory("fp16", height=256, width=256)
    assert report["parameters"] == {
        "unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480,
    }  # fmt: skip
    assert report["weights_bytes"] == 2 * 1_066_235_307
    for kind, stages in report["activations_bytes"].items():
        assert report["peak_bytes"][kind] == report["weights_bytes"] + max(stages.values())
    fused, math = report["activations_bytes"]["fused"], report["activations_bytes"]["math"]
    assert 0 < fused["unet"] < math["unet"]  # the materialised attention matrix costs more
    with pytest.raises(TinygenError, match="multiples of 64"):
        stable_diffusion_memory("fp32", height=500)
    with pytest.raises(TinygenError, match="precision must be one of"):
        stable_diffusion_memory("int8")
