"""unCLIP (issue 13): the prior, the CLIP-image decoder, DDIM inversion, the composition, the
embedding cache and its invalidation, and bad input -- on tiny in-process models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinygen import io
from tinygen.diffusion.inversion import ddim_inverse_step, ddim_invert
from tinygen.diffusion.sampling import SamplerConfig, sample
from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.errors import TinygenError
from tinygen.models.clip import CLIP, CLIPConfig
from tinygen.models.clip_image_conditioner import ClipImageConditionerConfig
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.models.prior import DiffusionPrior, PriorConfig, pick_best, to_prior_space
from tinygen.models.unclip import UnCLIP, slerp
from tinygen.nn.unet import UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

D = 16


def _prior(**changes) -> DiffusionPrior:
    torch.manual_seed(0)
    config = PriorConfig(embed_dim=D, vocab_size=12, context_length=6, width=16, layers=1, heads=2)
    return DiffusionPrior(dataclasses.replace(config, **changes)).eval()


def _decoder(captions: bool = False) -> DiffusionModel:
    torch.manual_seed(0)
    clip_image = ClipImageConditionerConfig(embed_dim=D, width=16, captions=captions)
    if captions:
        text = dataclasses.replace(
            clip_image.text, vocab_size=12, context_length=6, width=16, layers=1, heads=2
        )
        clip_image = dataclasses.replace(clip_image, text=text)
    unet = UNetConfig(
        image_size=16,
        base_channels=16,
        channel_mult=(1, 2),
        attention_resolutions=(8,),
        head_channels=16,
        norm_groups=8,
        context_mode="concat_kv",
    )
    model = DiffusionModel(
        DiffusionConfig(unet=unet, conditioning="clip_image", clip_image=clip_image)
    )
    with torch.no_grad():  # the zero-initialised paths must carry signal in these tests
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _cond(b: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "tokens": torch.randint(1, 12, (b, 6), generator=g),
        "embedding": torch.randn(b, D, generator=g),
    }


# -- the prior ---------------------------------------------------------------------------------


def test_the_prior_loss_is_the_mse_to_the_clean_embedding():
    prior = _prior()
    g = torch.Generator().manual_seed(0)
    z_0, noise = torch.randn(4, D, generator=g), torch.randn(4, D, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    cond = _cond(4)
    loss = prior.training_loss(z_0, noise, t, cond)
    ab = prior.schedule.alphas_cumprod[t][:, None]
    z_t = ab.sqrt() * z_0 + (1 - ab).sqrt() * noise  # DDPM eq. 4, by hand
    expected = (prior(z_t, t, cond) - z_0).pow(2).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_the_prior_drops_the_text_condition_but_never_the_noised_embedding():
    prior = _prior()
    g = torch.Generator().manual_seed(0)
    z_0, noise, t = (
        torch.randn(3, D, generator=g),
        torch.randn(3, D, generator=g),
        torch.tensor([5, 50, 500]),
    )
    dropped = prior.training_loss(z_0, noise, t, _cond(3), torch.ones(3, dtype=torch.bool))
    null = prior.training_loss(z_0, noise, t, prior.null_condition(3))
    assert torch.allclose(dropped, null)
    assert set(prior.null_condition(1)) == {"tokens", "embedding"}  # z_t is not a condition
    z_t = torch.randn(3, D)
    assert not torch.allclose(
        prior(z_t, t, prior.null_condition(3)), prior(z_t + 1, t, prior.null_condition(3))
    )


def test_best_of_two_keeps_the_candidate_with_the_higher_dot_product():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[[0.9, 0.1], [0.8, 0.2]], [[0.1, 0.9], [0.2, 0.8]]])  # (K=2, B=2, D)
    assert torch.equal(pick_best(candidates, text), torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    # through generate: rerank=2 from [x_a; x_b] is, per caption, the better of the two draws
    prior, cond = _prior(), _cond(3)
    x_a, x_b = torch.randn(3, D), torch.randn(3, D)
    sampler = SamplerConfig(steps=4, clip_sample=False)
    kw = dict(guidance=1.5, sampler=sampler)
    one_a = prior.generate(cond["tokens"], cond["embedding"], rerank=1, x_T=x_a, **kw)
    one_b = prior.generate(cond["tokens"], cond["embedding"], rerank=1, x_T=x_b, **kw)
    two = prior.generate(
        cond["tokens"], cond["embedding"], rerank=2, x_T=torch.cat([x_a, x_b]), **kw
    )
    a_wins = (one_a * cond["embedding"]).sum(-1) >= (one_b * cond["embedding"]).sum(-1)
    assert torch.allclose(two, torch.where(a_wins[:, None], one_a, one_b), atol=1e-5)
    assert torch.allclose(two.norm(dim=-1), torch.ones(3))


def test_prior_space_is_unit_norm_times_sqrt_d():
    z = to_prior_space(torch.randn(5, D) * 7)
    assert torch.allclose(z.pow(2).mean(-1), torch.ones(5), atol=1e-5)
    assert torch.equal(to_prior_space(torch.zeros(2, D)), torch.zeros(2, D))


# -- the decoder -------------------------------------------------------------------------------


@pytest.mark.parametrize("captions", [False, True])
def test_a_decoder_with_its_embedding_dropped_equals_the_null_condition(captions):
    from tinygen.recipes.unclip import DecoderTask
    from tinygen.recipes.unclip_data import EmbeddingSet

    model = _decoder(captions)
    g = torch.Generator().manual_seed(0)
    x0, noise, t = (
        torch.rand(2, 3, 16, 16) * 2 - 1,
        torch.randn(2, 3, 16, 16),
        torch.tensor([3, 700]),
    )
    cond = {"embedding": torch.randn(2, D, generator=g)}
    if captions:
        cond["tokens"] = torch.randint(1, 12, (2, 6), generator=g)
    batch = {"x0": x0, "noise": noise, "t": t, **cond}
    batch.update({f"drop_{k}": torch.ones(2, dtype=torch.bool) for k in cond})
    empty = EmbeddingSet(torch.zeros(4, D), torch.zeros(4, D), torch.zeros(4, 6, dtype=torch.long))
    task = DecoderTask(model, empty, torch.zeros(4, 3, 16, 16, dtype=torch.uint8))
    null = model.training_loss(x0, noise, t, model.null_condition(2))
    assert torch.allclose(task.loss(model, batch), null)
    kept = {**batch, **{f"drop_{k}": torch.zeros(2, dtype=torch.bool) for k in cond}}
    assert not torch.allclose(task.loss(model, kept), null)


def test_the_embedding_reaches_the_time_embedding_and_four_context_tokens():
    model = _decoder(captions=True)
    cond = {"embedding": torch.randn(2, D), "tokens": torch.randint(1, 12, (2, 6))}
    inputs = model.conditioner.unet_inputs(cond)
    assert inputs["cond_emb"].shape == (2, 16) and inputs["context"].shape == (2, 4 + 6, 16)
    other = model.conditioner.unet_inputs({**cond, "embedding": torch.randn(2, D)})
    assert not torch.allclose(inputs["context"][:, :4], other["context"][:, :4])
    assert torch.equal(inputs["context"][:, 4:], other["context"][:, 4:])  # the caption's


def test_the_drop_rates_are_ten_and_fifty_percent_independently():
    masks = _decoder(captions=True).conditioner.drop_masks(20000, torch.Generator().manual_seed(0))
    e, c = masks["embedding"].float(), masks["tokens"].float()
    assert abs(e.mean() - 0.1) < 0.01 and abs(c.mean() - 0.5) < 0.015
    assert abs((e * c).mean() - 0.05) < 0.01  # independent


# -- DDIM inversion ----------------------------------------------------------------------------


def test_one_inverse_step_is_the_ddim_formula_run_upwards():
    s = NoiseSchedule("cosine", 1000)
    x, eps = torch.randn(2, 5), torch.randn(2, 5)
    out = ddim_inverse_step(s, eps, 100, 300, x, prediction_type="epsilon")
    ab, ab_next = s.alphas_cumprod[100], s.alphas_cumprod[300]
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    assert torch.allclose(out, ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps, atol=1e-6)


def _gaussian_denoiser(s: NoiseSchedule, mu: float = 0.3, sd: float = 0.5):
    """E[x_0 | x_t] for data N(mu, sd^2 I): the exact model of a Gaussian world."""

    def model(x, t):
        ab = s.alphas_cumprod[t].view(-1, 1)
        return mu + ab.sqrt() * sd**2 / (ab * sd**2 + 1 - ab) * (x - ab.sqrt() * mu)

    return model


def test_inverting_then_sampling_returns_the_input_and_converges_with_steps():
    s = NoiseSchedule("cosine", 1000)
    model = _gaussian_denoiser(s)
    x0 = 0.3 + 0.5 * torch.randn(8, 16, generator=torch.Generator().manual_seed(0))

    def round_trip(steps, x_T=None):
        x_T = (
            ddim_invert(model, x0, s, prediction_type="sample", num_inference_steps=steps)
            if x_T is None
            else x_T
        )
        back = sample(
            model,
            x0.shape,
            schedule=s,
            prediction_type="sample",
            x_T=x_T,
            num_inference_steps=steps,
            clip_sample=False,
            progress=False,
        )
        return float((back - x0).abs().max())

    err_100, err_200 = round_trip(100), round_trip(200)
    assert err_100 < 0.06 and err_200 < 0.6 * err_100
    assert round_trip(100, torch.randn(8, 16)) > 10 * err_100  # a random x_T lands elsewhere


# -- the composition ---------------------------------------------------------------------------


def test_slerp_endpoints_are_the_two_embeddings_and_the_path_stays_on_the_sphere():
    a, b = torch.nn.functional.normalize(torch.randn(2, D), dim=-1)
    path = slerp(a.expand(5, -1), b.expand(5, -1), torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    assert torch.allclose(path.norm(dim=-1), torch.ones(5), atol=1e-5)
    angle = torch.arccos((path[:-1] * path[1:]).sum(-1).clamp(-1, 1))
    assert torch.allclose(angle, angle[0].expand(4), atol=1e-4)  # equal angular steps


def _unclip(captions: bool = False) -> UnCLIP:
    from tinygen.data.caption_tokenizer import CaptionTokenizer

    torch.manual_seed(0)
    words = ["a", "red", "blue", "circle", "square", "above"]
    tokenizer = CaptionTokenizer(words, context_length=6)
    clip = CLIP(
        CLIPConfig(
            embed_dim=D,
            image_size=16,
            patch_size=8,
            vision_width=16,
            vision_layers=1,
            vision_heads=2,
            text_width=16,
            text_layers=1,
            text_heads=2,
            vocab_size=tokenizer.vocab_size,
            context_length=6,
        )
    )
    prior = _prior(vocab_size=tokenizer.vocab_size)
    return UnCLIP(
        clip,
        tokenizer,
        _decoder(captions),
        prior=prior,
        tokenizer=tokenizer,
        prior_sampler=SamplerConfig(steps=3, clip_sample=False),
    )


def test_generate_runs_the_prior_then_the_decoder_once_each_per_sample():
    pipeline = _unclip()
    calls = []
    prior_generate, denoise = pipeline.prior.generate, pipeline.decoder.denoise

    def counting_prior(tokens, text, **kw):
        calls.append(("prior", tokens.shape[0], kw["rerank"]))
        return prior_generate(tokens, text, **kw)

    def counting_decoder(n, **kw):
        calls.append(("decoder", n, kw["cond"]["embedding"].shape[0]))
        return denoise(n, **kw)

    pipeline.prior.generate, pipeline.decoder.denoise = counting_prior, counting_decoder
    images = pipeline.generate(
        ["a red circle", "a blue square", "a red square above a blue circle"],
        sampler=SamplerConfig(steps=2),
        rerank=2,
    )
    assert calls == [("prior", 3, 2), ("decoder", 3, 3)]
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1


def test_variations_interpolation_and_text_diffs_have_their_shapes():
    pipeline = _unclip(captions=True)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(0)
    assert pipeline.variations(images, 3, steps=2, generator=g).shape == (6, 3, 16, 16)
    same = pipeline.variations(images, 2, steps=2, from_inversion=True, generator=g)
    assert same.shape == (4, 3, 16, 16)
    strip = pipeline.interpolate(images[0], images[1], 4, sampler_steps=2, generator=g)
    assert strip.shape == (4, 3, 16, 16)
    diffs = pipeline.text_diff(
        images[0], "a red circle", "a blue circle", [0.0, 0.25, 0.5], steps=2
    )
    assert diffs.shape == (3, 3, 16, 16)


def test_bad_input_is_one_clear_error(tmp_path):
    from PIL import Image

    from tinygen.recipes.text2image import load_exact_image

    pipeline = _unclip()
    with pytest.raises(TinygenError, match="not in this model's caption vocabulary: green"):
        pipeline.check_prompts(["a green circle"])
    with pytest.raises(TinygenError, match=r"\(N, 3, 16, 16\)"):
        pipeline.variations(torch.zeros(1, 1, 16, 16), 2)  # one channel: the wrong mode
    with pytest.raises(TinygenError, match="eta > 0"):
        pipeline.variations(torch.zeros(1, 3, 16, 16), 2, eta=0)
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    with pytest.raises(TinygenError, match="is 8x8 but this model paints 16x16"):
        load_exact_image(tmp_path / "small.png", pipeline.image_size)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(TinygenError, match="not an image"):
        load_exact_image(tmp_path / "text.png", 16)


# -- runs: the cache and the components --------------------------------------------------------


def _clip_run(path, embed_dim: int = D, seed: int = 0):
    """A CLIP run directory with random (untrained) tiny weights, as `train clip` writes one."""
    from tinygen.recipes.glide import world_tokenizer

    tokenizer = world_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        embed_dim=embed_dim,
        image_size=16,
        patch_size=8,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        text_width=16,
        text_layers=1,
        text_heads=2,
        vocab_size=tokenizer.vocab_size,
        context_length=tokenizer.context_length,
    )
    model = CLIP(config)
    path.mkdir(parents=True)
    io.write_json(
        path / io.CONFIG_FILE, {"model_type": "clip", "model": dataclasses.asdict(config)}
    )
    io.save_weights(model, path / io.BEST_FILE)
    tokenizer.save(path)
    return model


def test_the_embedding_cache_is_reused_and_invalidated_when_the_clip_run_changes(tmp_path):
    from tinygen.recipes.glide import world_tokenizer
    from tinygen.recipes.unclip_data import UnclipData, clip_embeddings

    clip = _clip_run(tmp_path / "clip")
    tokenizer, data = world_tokenizer(), UnclipData(train_images=40, pair_fraction=0.5)
    first, cached = clip_embeddings(
        tmp_path / "clip", tmp_path / "run", tokenizer, data, progress=False
    )
    assert not cached and first.image_emb.shape == (40, D) and first.tokens.shape == (40, 16)
    again, cached = clip_embeddings(
        tmp_path / "clip", tmp_path / "run", tokenizer, data, progress=False
    )
    assert cached and torch.equal(again.image_emb, first.image_emb)
    with torch.no_grad():  # "retrain" the CLIP run: other weights in the same place
        clip.visual_projection.weight.mul_(-1)
    io.save_weights(clip, tmp_path / "clip" / io.BEST_FILE)
    changed, cached = clip_embeddings(
        tmp_path / "clip", tmp_path / "run", tokenizer, data, progress=False
    )
    assert not cached and torch.allclose(changed.image_emb, -first.image_emb, atol=1e-5)
    other = dataclasses.replace(data, data_seed=1)
    _, cached = clip_embeddings(
        tmp_path / "clip", tmp_path / "run", tokenizer, other, progress=False
    )
    assert not cached


def test_components_of_another_clip_are_one_error_naming_both_runs(tmp_path):
    from tinygen.recipes import unclip as recipes

    _clip_run(tmp_path / "clip")
    _clip_run(tmp_path / "clip-b", seed=1)
    _clip_run(tmp_path / "clip-wide", embed_dim=24)
    data = recipes.UnclipData(train_images=32)
    tiny = recipes.PRIOR_PRESETS["tiny"]
    train = dataclasses.replace(tiny.train, max_iters=2, eval_interval=2)
    recipes.train_prior(
        tmp_path / "clip-b", tiny.model, train, data, tmp_path / "prior", progress=False
    )
    dec = recipes.DECODER_PRESETS["tiny"]
    recipes.train_decoder(
        tmp_path / "clip",
        dec.model,
        dataclasses.replace(dec.train, max_iters=2, eval_interval=2),
        data,
        tmp_path / "dec",
        prior=tmp_path / "prior",
        progress=False,
    )
    with pytest.raises(
        TinygenError, match=r"prior was trained on CLIP run .*clip-b.* but CLIP run .*clip "
    ):
        recipes.load_unclip(tmp_path / "dec")
    with pytest.raises(
        TinygenError,
        match=r"dec was trained on 16-wide CLIP embeddings .*clip-wide embeds into 24",
    ):
        recipes.load_unclip(tmp_path / "dec", clip=tmp_path / "clip-wide")
    recipes.train_prior(
        tmp_path / "clip", tiny.model, train, data, tmp_path / "prior-a", progress=False
    )
    pipeline = recipes.load_unclip(tmp_path / "dec", prior=tmp_path / "prior-a")
    assert pipeline.generate(["a red circle"], sampler=SamplerConfig(steps=2)).shape == (
        1,
        3,
        16,
        16,
    )
