"""GLIDE, piece by piece against independent truths: where the text enters the U-Net, the
concat-kv attention against plain self-attention, CFG's end points, the caption drop rate,
CLIP guidance against autograd, inpainting's kept pixels, a short training run, the
two-object judge on ground truth, and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from tinygen.data.caption_tokenizer import CaptionTokenizer
from tinygen.data.shapes import generate_shapes, slot_labels
from tinygen.diffusion.guidance import classifier_free_guidance, score_grad
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.eval.pairs import judge_pairs, pair_scores
from tinygen.models.conditioning import TextConditionerConfig, drop_condition
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.models.text2image import GlidePipeline
from tinygen.nn.resnet import AttentionBlock
from tinygen.nn.unet import UNetConfig
from tinygen.recipes import glide as glide_recipes

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_UNET = UNetConfig(
    image_size=8,
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    head_channels=8,
    norm_groups=4,
    context_mode="concat_kv",
)


def _jitter(module: torch.nn.Module, seed: int = 0) -> None:
    """Break the zero inits so every input path changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _model(context_mode: str = "concat_kv", inpainting: bool = False) -> DiffusionModel:
    torch.manual_seed(0)
    config = DiffusionConfig(
        unet=dataclasses.replace(TINY_UNET, context_mode=context_mode),
        conditioning="text",
        text=TextConditionerConfig(vocab_size=12, context_length=6, width=16, layers=1, heads=2),
        inpainting=inpainting,
        num_train_timesteps=100,
    )
    model = DiffusionModel(config).eval()
    _jitter(model)
    return model


def _tokens(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 12, (batch, 6), generator=torch.Generator().manual_seed(seed))


# -- where the text enters ----------------------------------------------------------------


@pytest.mark.parametrize("context_mode", ["concat_kv", "cross_attention"])
def test_pooled_feature_enters_only_the_embedding_and_tokens_only_attention(context_mode):
    model = _model(context_mode)
    seen: dict[str, list[torch.Tensor]] = {"emb": [], "attention_context": []}
    model.unet.encoder.register_forward_hook(lambda m, i, o: seen["emb"].append(o[2]))
    kv_modules = [
        (m.encoder_kv if m.encoder_kv is not None else m.cross_attn.kv_proj)
        for m in model.unet.modules()
        if isinstance(m, AttentionBlock)
    ]
    for m in kv_modules:  # what each attention block makes of the tokens
        m.register_forward_hook(lambda m, i, o: seen["attention_context"].append(o))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 60])
    pooled, tokens = model.conditioner(_tokens())

    def run(cond_emb, context):
        for v in seen.values():
            v.clear()
        out = model.unet(x, t, cond_emb=cond_emb, context=context)
        return out, seen["emb"][0].clone(), [c.clone() for c in seen["attention_context"]]

    base, emb, kv = run(pooled, tokens)
    no_pool, emb_np, kv_np = run(torch.zeros_like(pooled), tokens)
    no_tok, emb_nt, kv_nt = run(pooled, torch.zeros_like(tokens))
    assert not torch.allclose(emb, emb_np)  # the pooled feature moves the time embedding
    assert all(torch.equal(a, b) for a, b in zip(kv, kv_np))  # ... and nothing in attention
    torch.testing.assert_close(emb, emb_nt)  # the tokens leave the time embedding alone
    assert not all(torch.allclose(a, b) for a, b in zip(kv, kv_nt))  # ... and reach attention
    assert not torch.allclose(base, no_pool) and not torch.allclose(base, no_tok)


def test_concat_kv_with_an_empty_context_is_plain_self_attention():
    torch.manual_seed(0)
    block = AttentionBlock(
        16, head_channels=8, context_dim=6, norm_groups=4, dropout=0.0, context_mode="concat_kv"
    ).eval()
    _jitter(block)
    x = torch.randn(2, 16, 4, 4)
    tokens = block.norm(x).flatten(2).transpose(1, 2)
    want = (x.flatten(2).transpose(1, 2) + block.attn(tokens)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x, torch.zeros(2, 0, 6)), want)
    # a context whose every token is masked out is the same as none
    masked = block(x, torch.randn(2, 3, 6), torch.zeros(2, 3, dtype=torch.bool))
    torch.testing.assert_close(masked, want)
    assert not torch.allclose(block(x, torch.randn(2, 3, 6)), want)  # a real context matters


def test_concat_kv_joins_one_softmax_over_tokens_and_pixels():
    """The block's attention equals softmax([q k_text^T, q k_pix^T]) [v_text; v_pix] written
    out with the reference attention."""
    from tinygen.nn.attention import attention_reference

    torch.manual_seed(0)
    block = AttentionBlock(
        16, head_channels=8, context_dim=6, norm_groups=4, dropout=0.0, context_mode="concat_kv"
    ).eval()
    _jitter(block)
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 6)
    h = block.norm(x).flatten(2).transpose(1, 2)  # (2, 16, 16)
    attn = block.attn
    q, k, v = attn.qkv_proj(h).split(16, dim=2)
    ek, ev = block.encoder_kv(context).chunk(2, dim=-1)
    heads = lambda z: z.view(2, -1, 2, 8).transpose(1, 2)  # noqa: E731
    y, _ = attention_reference(
        heads(q), torch.cat([heads(ek), heads(k)], 2), torch.cat([heads(ev), heads(v)], 2)
    )
    y = attn.out_proj(y.transpose(1, 2).reshape(2, 16, 16))
    want = (x.flatten(2).transpose(1, 2) + y).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x, context), want, atol=1e-5, rtol=1e-4)


# -- classifier-free guidance on the empty caption ------------------------------------------


def test_cfg_at_one_is_the_caption_and_at_zero_the_empty_caption():
    model = _model()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 50])
    cond, null = {"tokens": _tokens()}, model.null_condition(1)
    assert torch.equal(null["tokens"], torch.zeros(1, 6, dtype=torch.long))  # all padding
    with torch.no_grad():
        at_one = classifier_free_guidance(model, cond, null, 1.0)(x, t)
        at_zero = classifier_free_guidance(model, cond, null, 0.0)(x, t)
        at_three = classifier_free_guidance(model, cond, null, 3.0)(x, t)
        c, u = model(x, t, cond), model(x, t, model.null_condition(2))
    torch.testing.assert_close(at_one, c)
    torch.testing.assert_close(at_zero, u)
    torch.testing.assert_close(at_three, u + 3 * (c - u), atol=1e-5, rtol=1e-4)


def test_the_caption_is_dropped_at_the_configured_rate():
    model = _model()
    tokenizer = glide_recipes.world_tokenizer()
    data = glide_recipes.CaptionData(image_size=8 * 2, pair_fraction=0.5)
    task = glide_recipes.GlideTask(model, tokenizer, data)
    gen = torch.Generator().manual_seed(0)
    drops = torch.cat([task.get_batch("train", 64, gen)["drop"] for _ in range(40)])
    rate, n = drops.float().mean().item(), len(drops)
    sigma = (0.2 * 0.8 / n) ** 0.5
    assert abs(rate - model.config.text.drop_prob) < 4 * sigma, rate  # 0.2 +- 4 sigma
    cond = {"tokens": _tokens(4)}
    dropped = drop_condition(cond, model.null_condition(1), torch.tensor([1, 0, 1, 0]).bool())
    assert (dropped["tokens"][[0, 2]] == 0).all()
    assert torch.equal(dropped["tokens"][[1, 3]], cond["tokens"][[1, 3]])


# -- CLIP guidance ---------------------------------------------------------------------------


def test_clip_guide_gradient_equals_autograd_of_the_clip_logit():
    from tinygen.models.clip import CLIP, CLIPConfig
    from tinygen.models.text2image import ClipGuide

    torch.manual_seed(0)
    clip = CLIP(
        CLIPConfig(
            embed_dim=16,
            image_size=8,
            patch_size=4,
            vision_width=16,
            vision_layers=1,
            vision_heads=2,
            text_width=16,
            text_layers=1,
            text_heads=2,
            vocab_size=40,
            context_length=8,
            num_timesteps=100,
        )
    )
    tokenizer = CaptionTokenizer(["a", "red", "blue", "circle", "square"], context_length=8)
    guide = ClipGuide(clip, tokenizer, {"beta_schedule": "linear", "num_train_timesteps": 100})
    prompts = ["a red circle", "a blue square"]
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 70])
    grad = score_grad(guide.log_score(prompts), x, t)
    text = clip.encode_text(tokenizer.encode_batch(prompts))  # normalised
    for i in range(2):
        xi = x[i : i + 1].clone().requires_grad_(True)
        image = torch.nn.functional.normalize(clip.encode_image(xi, t[i : i + 1]), dim=-1)
        logit = clip.logit_scale.exp() * (image * text[i : i + 1]).sum()  # GLIDE's cond_fn
        (want,) = torch.autograd.grad(logit, xi)
        torch.testing.assert_close(grad[i : i + 1], want, atol=1e-5, rtol=1e-4)
    guide.check_matches(_model())  # the same schedule: accepted


def test_clip_guide_refuses_a_model_of_another_schedule():
    from tinygen.models.text2image import ClipGuide

    guide = ClipGuide(
        torch.nn.Linear(1, 1), None, {"beta_schedule": "cosine", "num_train_timesteps": 1000}
    )
    with pytest.raises(TinygenError, match="--noised --schedule linear"):
        guide.check_matches(_model())


# -- inpainting ------------------------------------------------------------------------------


@pytest.mark.parametrize("inpainting", [True, False])
def test_inpainting_keeps_every_pixel_outside_the_mask(inpainting):
    from tinygen.diffusion.inpainting import known_region_fn

    model = _model(inpainting=inpainting)
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 1:5] = 1
    cond = {"tokens": _tokens()}
    if inpainting:
        cond.update(masked_image=image * (1 - mask), mask=mask)
    gen = torch.Generator().manual_seed(0)
    raw = model.denoise(
        2,
        cond=cond,
        guidance=2.0,
        sampler=SamplerConfig(steps=5),
        generator=gen,
        post_step_fn=known_region_fn(image, mask, model.schedule),
    )
    keep = mask.expand_as(image) == 0
    assert torch.equal(raw[keep], image[keep])  # exact: the loop's own last replacement
    assert not torch.allclose(raw[~keep], image[~keep])  # inside, something was painted


def test_an_inpainting_model_reads_the_masked_image():
    model = _model(inpainting=True)
    assert model.unet.config.in_channels == 7
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    mask = torch.ones(1, 1, 8, 8)
    a = model(x, t, {"tokens": _tokens(1), "masked_image": torch.zeros(1, 3, 8, 8), "mask": mask})
    b = model(x, t, {"tokens": _tokens(1), "masked_image": torch.ones(1, 3, 8, 8), "mask": mask})
    assert not torch.allclose(a, b)
    with pytest.raises(TinygenError, match="masked_image and mask"):
        model(x, t, {"tokens": _tokens(1)})


# -- training ----------------------------------------------------------------------------------


def test_a_short_training_run_lowers_the_loss(tmp_path):
    preset = glide_recipes.PRESETS["tiny"]
    train = dataclasses.replace(preset.train, max_iters=60, eval_interval=60)
    result = glide_recipes.train_glide(
        preset.model, train, preset.extras["data"], tmp_path / "run", progress=False
    )
    losses = [row["train_loss"] for row in result.history if "train_loss" in row]
    assert len(losses) >= 3
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    assert (tmp_path / "run" / "tokenizer.json").is_file()


# -- the two-object judge on ground truth --------------------------------------------------------


def _perfect_predictions(batch) -> dict[str, torch.Tensor]:
    return {"slot_" + k: v.clamp(min=0) for k, v in slot_labels(batch.labels).items()}


def test_the_pair_judge_is_right_on_ground_truth_and_catches_swaps():
    from tinygen.data.shapes import parse_prompt

    batch = generate_shapes(200, split="test", seed=3, two_objects=True)
    wanted = [parse_prompt(p) for p in batch.prompts]
    truth = _perfect_predictions(batch)
    scores = pair_scores(judge_pairs(truth, wanted))
    assert scores["all"] == 1.0 and scores["relation"] == 1.0 and scores["binding_swap"] == 0.0
    # exchange the colours of the two objects: a binding swap wherever colours and shapes differ
    swapped = {k: v.clone() for k, v in truth.items()}
    rows = torch.arange(200)
    first = torch.tensor(
        [
            ["left", "right", "top", "bottom", "centre"].index(
                {"left of": "left", "right of": "right", "above": "top", "below": "bottom"}[
                    w["relation"]
                ]
            )
            for w in wanted
        ]
    )
    second = torch.tensor(
        [
            {"left": 1, "right": 0, "top": 3, "bottom": 2}[
                ["left", "right", "top", "bottom"][int(f)]
            ]
            for f in first
        ]
    )
    c1, c2 = truth["slot_color"][rows, first], truth["slot_color"][rows, second]
    swapped["slot_color"][rows, first], swapped["slot_color"][rows, second] = c2, c1
    verdict = judge_pairs(swapped, wanted)
    eligible = verdict["binding_eligible"]
    assert eligible.float().mean() > 0.5
    assert verdict["binding_swap"][eligible].all() and not verdict["all"][eligible].any()
    # the shapes are where the relation puts them: right, wherever the shapes differ
    differ = torch.tensor([w["shape"] != w["shape2"] for w in wanted])
    assert verdict["relation"][differ].all() and not verdict["relation"][~differ & (c1 != c2)].any()
    # exchange the whole objects (positions swapped): the relation is wrong
    moved = {k: v.clone() for k, v in truth.items()}
    for key in ("slot_color", "slot_shape", "slot_size"):
        a, b = truth[key][rows, first], truth[key][rows, second]
        moved[key][rows, first], moved[key][rows, second] = b, a
    verdict = judge_pairs(moved, wanted)
    assert not verdict["relation"][eligible].any()


# -- bad input ---------------------------------------------------------------------------------


def _pipeline():
    model = _model()
    words = ["a", "red", "circle", "on", "the", "left", "to", "of", "blue", "square"]
    return GlidePipeline(model, CaptionTokenizer(words, context_length=6))


def test_unknown_words_and_empty_prompts_are_one_clear_error():
    pipeline = _pipeline()
    with pytest.raises(
        TinygenError,
        match="not in this model's caption vocabulary: blob.*the vocabulary is: a, blue, circle",
    ):
        pipeline.check_prompts(["a red blob"])
    with pytest.raises(TinygenError, match="is empty"):
        pipeline.check_prompts(["  "])
    with pytest.raises(TinygenError, match="no prompt"):
        pipeline.check_prompts([])


def test_a_prompt_with_a_position_and_a_relation_is_refused_by_the_judge():
    from tinygen.eval.fidelity import prompt_fidelity

    with pytest.raises(TinygenError, match="a position and a relation"):
        prompt_fidelity(
            torch.zeros(1, 3, 32, 32),
            ["a red circle on the left to the left of a blue square"],
            evaluator=object(),
        )


def test_bad_masks_are_one_clear_error(tmp_path):
    from tinygen.recipes.text2image import load_exact_image, load_mask

    def save(name, array_fn, size=8, mode="L"):
        path = tmp_path / name
        im = Image.new(mode, (size, size))
        im.putdata([array_fn(i) for i in range(size * size)])
        im.save(path)
        return path

    with pytest.raises(TinygenError, match="must match the image, 8x8"):
        load_mask(save("big.png", lambda i: 255, size=16), 8)
    with pytest.raises(TinygenError, match="grey pixels"):
        load_mask(save("grey.png", lambda i: 128), 8)
    with pytest.raises(TinygenError, match="all black"):
        load_mask(save("black.png", lambda i: 0), 8)
    assert load_mask(save("ok.png", lambda i: 255 * (i % 2)), 8).sum() == 32
    with pytest.raises(TinygenError, match="resize it to 8x8"):
        load_exact_image(save("img.png", lambda i: (1, 2, 3), size=16, mode="RGB"), 8)


def test_the_pipeline_refuses_a_mask_of_the_wrong_size():
    pipeline = _pipeline()
    with pytest.raises(TinygenError, match="mask must be"):
        pipeline.inpaint(torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 4, 4), ["a red circle"])


# -- the commands, end to end on a tiny run ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A seconds-long GLIDE run (16 px) and an untrained-but-valid judge with slot heads."""
    from tinygen.models.shapes_evaluator import EvaluatorConfig
    from tinygen.recipes.evaluator import train_evaluator
    from tinygen.train.config import TrainConfig

    root = tmp_path_factory.mktemp("glide")
    torch.set_num_threads(1)
    preset = glide_recipes.PRESETS["tiny"]
    train = dataclasses.replace(preset.train, max_iters=20, eval_interval=20)
    glide_recipes.train_glide(
        preset.model, train, preset.extras["data"], root / "glide", progress=False
    )
    judge = TrainConfig(max_iters=2, batch_size=8, eval_interval=2, eval_iters=1, warmup_iters=1)
    train_evaluator(
        EvaluatorConfig(width=8, two_objects=True), judge, root / "judge", progress=False
    )
    return root


def test_generate_eval_and_inpaint_commands_run_on_a_tiny_run(tiny_runs, monkeypatch):
    import json

    from tinygen.cli.main import main

    monkeypatch.setenv("TINYGEN_EVALUATOR", str(tiny_runs / "judge"))
    run, out = tiny_runs / "glide", tiny_runs / "out"
    assert (
        main(
            [
                "generate",
                "--run",
                str(run),
                "--prompt",
                "a red circle",
                "--prompt",
                "a blue square above a green star",
                "--n",
                "2",
                "--steps",
                "3",
                "--out",
                str(out / "grid.png"),
            ]
        )
        == 0
    )
    assert (out / "grid.png").is_file() and (out / "grid_strip.png").is_file()
    for prompts in ("single", "pairs", "partial"):
        assert (
            main(
                [
                    "eval",
                    "text2image",
                    "--run",
                    str(run),
                    "--prompts",
                    prompts,
                    "--n",
                    "8",
                    "--guidance",
                    "0,3",
                    "--steps",
                    "2",
                    "--out",
                    str(out / prompts),
                ]
            )
            == 0
        )
        rows = json.loads((out / prompts / "eval.json").read_text())
        assert [r["guidance"] for r in rows] == [0, 3] and all(r["n"] == 8 for r in rows)
        assert (out / prompts / "fidelity_diversity.png").is_file()
    assert (
        "binding_swap" in rows[0]
        or "relation" in json.loads((out / "pairs" / "eval.json").read_text())[0]
    )
    assert 0 <= json.loads((out / "partial" / "eval.json").read_text())[0]["diversity_size"] <= 1
    assert (
        main(
            [
                "eval",
                "inpainting",
                "--run",
                str(run),
                "--n",
                "4",
                "--steps",
                "2",
                "--out",
                str(out / "inpaint"),
            ]
        )
        == 0
    )
    row = json.loads((out / "inpaint" / "eval.json").read_text())
    assert row["outside_max_abs_error"] == 0.0 and row["n"] == 4


def test_the_commands_refuse_unknown_words_and_bad_masks(tiny_runs, tmp_path, capsys):
    from tinygen.cli.main import main

    run = str(tiny_runs / "glide")
    assert (
        main(["generate", "--run", run, "--prompt", "a red blob", "--out", str(tmp_path / "g.png")])
        == 2
    )
    assert "blob" in capsys.readouterr().err
    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "small.png")
    assert (
        main(
            [
                "inpaint",
                "--run",
                run,
                "--image",
                str(tmp_path / "in.png"),
                "--mask",
                str(tmp_path / "small.png"),
                "--prompt",
                "a red circle",
            ]
        )
        == 2
    )
    assert "must match the image, 16x16" in capsys.readouterr().err
    assert main(["eval", "text2image", "--run", run, "--clip-scales", "1"]) == 2
    assert "--clip" in capsys.readouterr().err


def test_a_noised_clip_run_records_its_schedule_and_is_judged_at_four_noise_levels(tmp_path):
    from tinygen.recipes.clip import PRESETS
    from tinygen.recipes.clip_noised import noise_of_run, train_noised_clip
    from tinygen.recipes.text2image import load_clip_guide

    preset = PRESETS["tiny"]
    train = dataclasses.replace(preset.train, max_iters=4, eval_interval=4)
    result = train_noised_clip(
        preset.model,
        train,
        tmp_path / "clip",
        beta_schedule="linear",
        num_train_timesteps=100,
        train_size=256,
        val_size=64,
        progress=False,
    )
    row = next(r for r in reversed(result.history) if "zero_shot_t0" in r)
    assert {"zero_shot_t0", "zero_shot_t25", "zero_shot_t50", "zero_shot_t75"} <= set(row)
    guide = load_clip_guide(tmp_path / "clip")
    assert guide.noise == {"beta_schedule": "linear", "num_train_timesteps": 100}
    guide.check_matches(_model())  # linear, 100 steps: the tiny model's schedule
    with pytest.raises(TinygenError, match="trained on clean images"):
        noise_of_run({"model_type": "clip"}, "runs/clip")
