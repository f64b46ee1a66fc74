"""The diffusion model: objectives and min-SNR weighting against their formulas, label
dropping at the configured rate, guidance 0 / 1 against the plain loops, EMA, run
round trips, clear errors, and a short training run that lowers the loss."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from torch import Tensor

from tinygen.data.image_data import ImageData
from tinygen.diffusion.objective import min_snr_weights
from tinygen.diffusion.sampling import sample
from tinygen.errors import TinygenError
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from tinygen.nn.unet import UNetConfig
from tinygen.recipes.diffusion import DiffusionTask
from tinygen.train.config import TrainConfig
from tinygen.train.runs import load_model
from tinygen.train.trainer import Trainer

# tiny models run fastest on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


TINY_UNET = UNetConfig(
    image_size=16,
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(8,),
    head_channels=16,
    norm_groups=8,
)


def tiny_model(seed: int = 0, **overrides) -> DiffusionModel:
    torch.manual_seed(seed)
    config = DiffusionConfig(
        unet=TINY_UNET, conditioning="class", num_classes=48, num_train_timesteps=100, **overrides
    )
    model = DiffusionModel(config)
    with torch.no_grad():  # break the zero init so outputs depend on labels
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def shapes_data() -> ImageData:
    return ImageData("shapes", image_size=16, n_train=512, n_val=64)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weighting_gives_x0_loss_weighted_by_min_snr_gamma(prediction_type):
    # Hang et al. 2023: whatever the parameterisation, the weighted loss equals
    # min(SNR, gamma) * |x0_hat - x0|^2 (per sample).
    model = tiny_model()
    schedule, gamma = model.schedule, 5.0
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 5, 20, 50, 80, 99])
    x_t = schedule.add_noise(x0, noise, t)
    output = torch.randn(6, 3, 4, 4, generator=g)
    target = schedule.target(x0, noise, t, prediction_type)
    x0_hat = schedule.predict_x0(output, x_t, t, prediction_type)
    snr = schedule.snr(t)
    weighted = (output - target).square().mean((1, 2, 3)) * min_snr_weights(
        snr, gamma, prediction_type
    )
    expected = torch.clamp(snr, max=gamma) * (x0_hat - x0).square().mean((1, 2, 3))
    assert torch.allclose(weighted, expected, rtol=1e-3, atol=1e-6)


def test_training_loss_is_the_mse_to_the_target_of_the_objective():
    model = tiny_model(prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)
    t, labels = torch.tensor([1, 50, 99]), torch.tensor([0, 7, 47])
    x_t = model.schedule.add_noise(x0, noise, t)
    v = (
        model.schedule.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1) * noise
        - model.schedule.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) * x0
    )
    expected = (model(x_t, t, labels) - v).square().mean()
    assert torch.allclose(model.training_loss(x0, noise, t, labels), expected, atol=1e-6)


def test_condition_is_dropped_at_the_configured_rate(shapes_data):
    model = tiny_model(cond_drop_prob=0.25)
    task = DiffusionTask(model, shapes_data)
    g = torch.Generator().manual_seed(0)
    seen: list[torch.Tensor] = []

    def spy(x_t, t, cond):  # the model is called with a Condition dict
        seen.append(cond["labels"])
        return torch.zeros_like(x_t)

    drops = []
    for _ in range(20):
        batch = task.get_batch("train", 200, g)
        task.loss(spy, batch)
        drops.append(batch["drop"])
        # dropped rows get the null label, the others keep their own
        assert torch.equal(seen[-1] == model.null_label, batch["drop"])
        assert torch.equal(seen[-1][~batch["drop"]], batch["labels"][~batch["drop"]])
    rate = torch.cat(drops).float().mean().item()
    assert abs(rate - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5  # 4 binomial standard errors


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    model = tiny_model()
    n = 3
    labels = torch.tensor([1, 2, 3])
    x_T = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(5))

    def run(model_fn):
        return sample(
            model_fn,
            (n, 3, 16, 16),
            schedule=model.schedule,
            num_inference_steps=5,
            x_T=x_T,
            progress=False,
            clip_sample=True,  # generate clips x_0 by default, as diffusers does,
            use_clipped_model_output=True,  # and takes eps from the clipped x_0
        ).clamp(-1, 1)

    null = torch.full((n,), model.null_label)
    expect_uncond = run(lambda x, t: model(x, t, null))
    expect_cond = run(lambda x, t: model(x, t, labels))
    assert not torch.allclose(expect_uncond, expect_cond)

    def generate(scale):
        # generate draws x_T from the generator: same seed, same x_T as above
        return model.generate(
            n, labels=labels, guidance=scale, steps=5, generator=torch.Generator().manual_seed(5)
        )

    assert torch.allclose(generate(0.0), expect_uncond, atol=1e-5)
    assert torch.allclose(generate(1.0), expect_cond, atol=1e-5)


def strongly_guided_generate(sample_options: dict, **generate_options) -> Tensor:
    """generate() at guidance 4 on a model whose x_0 estimates leave [-1, 1], checked equal
    to the plain sample() loop run with `sample_options`; returns the images."""
    from tinygen.diffusion.guidance import classifier_free_guidance

    model = tiny_model()
    with torch.no_grad():  # large eps predictions, so x_0 estimates leave [-1, 1]
        model.unet.conv_out.weight.mul_(20)
    n, labels = 3, torch.tensor([1, 2, 3])
    x_T = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    guided = classifier_free_guidance(model, labels, torch.full((1,), model.null_label), 4.0)
    expected = sample(
        guided,
        (n, 3, 16, 16),
        schedule=model.schedule,
        num_inference_steps=5,
        x_T=x_T,  # generate draws the same x_T from the same seed
        progress=False,
        **sample_options,
    ).clamp(-1, 1)
    got = model.generate(
        n,
        labels=labels,
        guidance=4.0,
        steps=5,
        generator=torch.Generator().manual_seed(5),
        **generate_options,
    )
    assert torch.allclose(got, expected, atol=1e-5)
    return got


def test_generate_with_dynamic_thresholding_rescales_x0_instead_of_clipping():
    """thresholding=True runs the sampler with Imagen's dynamic thresholding (s capped at
    1.5), which differs from the default clipping once a predicted x_0 leaves [-1, 1]."""
    clipped = strongly_guided_generate({"clip_sample": True, "use_clipped_model_output": True})
    thresholded = strongly_guided_generate(
        {"thresholding": True, "sample_max_value": 1.5, "use_clipped_model_output": True},
        thresholding=True,
    )
    assert not torch.allclose(clipped, thresholded, atol=1e-3)


def test_ddim_takes_eps_from_the_clipped_x0_unless_told_not_to():
    """Under strong guidance the predicted x_0 leaves [-1, 1]; generate then recomputes eps
    from the clipped x_0 (recompute_eps=True), which keeps x_t consistent with it; the
    diffusers default (recompute_eps=False) pairs the clipped x_0 with the raw eps."""
    recomputed = strongly_guided_generate({"clip_sample": True, "use_clipped_model_output": True})
    raw = strongly_guided_generate(
        {"clip_sample": True, "use_clipped_model_output": False}, recompute_eps=False
    )
    assert not torch.allclose(recomputed, raw, atol=1e-3)


def test_generate_visits_the_timesteps_of_the_chosen_spacing():
    """spacing="trailing" starts at the noisiest timestep (T - 1) instead of 0 + k (N - 1):
    generate equals the sample() loop with that spacing, and differs from leading."""
    options = {"clip_sample": True, "use_clipped_model_output": True}
    trailing = strongly_guided_generate({**options, "spacing": "trailing"}, spacing="trailing")
    leading = strongly_guided_generate(options)
    assert not torch.allclose(trailing, leading, atol=1e-3)
    with pytest.raises(TinygenError, match="unknown timestep spacing"):
        tiny_model().generate(2, labels=torch.tensor([0, 1]), steps=2, spacing="middle")


def test_eval_table_names_the_non_default_sampler_options():
    from tinygen.eval.diffusion_eval import sampler_label

    row = {"sampler": "ddim", "eta": 0.0, "spacing": "leading", "recompute_eps": True}
    assert sampler_label(row) == "ddim"
    assert sampler_label({**row, "eta": 1.0, "spacing": "trailing"}) == "ddim (eta 1, trailing)"
    assert sampler_label({**row, "sampler": "ddpm", "eta": 0.5}) == "ddpm"  # eta is DDIM's


def test_bad_sampling_inputs_are_clear_errors():
    model = tiny_model()
    labels = torch.tensor([0, 1])
    with pytest.raises(TinygenError, match="exceeds the 100 training steps"):
        model.generate(2, labels=labels, steps=101)
    with pytest.raises(TinygenError, match="eta must be in"):
        model.generate(2, labels=labels, steps=2, eta=1.5)
    with pytest.raises(TinygenError, match=r"labels must be in \[0, 47\]"):
        model.generate(2, labels=torch.tensor([0, 48]), steps=2)
    with pytest.raises(TinygenError, match="needs labels|give labels"):
        model.generate(2, steps=2)
    with pytest.raises(TinygenError, match="guidance scale"):
        model.generate(2, labels=labels, guidance=-1.0, steps=2)
    with pytest.raises(TinygenError, match="unknown --objective"):
        DiffusionModel(DiffusionConfig(unet=TINY_UNET, prediction_type="noise"))


def test_classifier_on_another_schedule_is_refused():
    model = tiny_model()
    classifier = NoisyClassifier(
        NoisyClassifierConfig(unet=TINY_UNET, beta_schedule="cosine", num_train_timesteps=100)
    )
    with pytest.raises(TinygenError, match="same --schedule"):
        model.generate(
            2, labels=torch.tensor([0, 1]), steps=2, classifier=classifier, classifier_scale=1.0
        )


def test_noisy_classifier_returns_logits_per_class():
    classifier = NoisyClassifier(NoisyClassifierConfig(unet=TINY_UNET, num_classes=48))
    logits = classifier(torch.randn(5, 3, 16, 16), torch.tensor([0, 1, 2, 500, 999]))
    assert logits.shape == (5, 48)


def test_short_training_lowers_loss_and_ema_is_exact(shapes_data, tmp_path):
    torch.manual_seed(0)
    config = DiffusionConfig(
        unet=TINY_UNET, conditioning="class", num_train_timesteps=100, label_factors=(8, 6)
    )
    model = DiffusionModel(config)
    task = DiffusionTask(model, shapes_data)
    train = TrainConfig(
        max_iters=60,
        batch_size=32,
        learning_rate=2e-3,
        warmup_iters=5,
        eval_interval=60,
        eval_iters=4,
        log_interval=10,
        weight_decay=0.0,
        ema_decay=0.9,
        device="cpu",
    )
    gen = torch.Generator().manual_seed(123)
    val = [task.get_batch("val", 32, gen) for _ in range(4)]
    with torch.no_grad():
        before = sum(task.loss(model, b).item() for b in val) / 4
    trainer = Trainer(
        task,
        train,
        tmp_path / "run",
        progress=False,
        run_config={"model_type": "diffusion", "model": asdict(config)},
    )
    # EMA: after each step, ema = d * ema + (1 - d) * weights -- replay it by hand
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    original_update = trainer.ema.update

    def checked_update(m):
        for k, v in m.state_dict().items():
            if v.dtype.is_floating_point:
                expected[k] = 0.9 * expected[k] + 0.1 * v.detach()
        original_update(m)

    trainer.ema.update = checked_update
    trainer.fit()
    ema_state = trainer.ema.model.state_dict()
    assert all(torch.allclose(ema_state[k], expected[k], atol=1e-5) for k in expected)
    with torch.no_grad():
        after = sum(task.loss(model.eval(), b).item() for b in val) / 4
    assert after < 0.7 * before, (before, after)

    # the run rebuilds from config.json alone (tuples survive JSON as lists)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["unet"]["channel_mult"] == [1, 2]
    loaded, _ = load_model(tmp_path / "run", which="ema")
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 70]), torch.tensor([4, 5])
    assert torch.allclose(loaded(x, t, y), trainer.ema.model(x, t, y), atol=1e-6)


def test_folder_data_cannot_train_a_class_model(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (20, 20), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text("a red square")
    data = ImageData(str(tmp_path), image_size=16)
    assert data.images["train"].shape == (2, 3, 16, 16) and data.labels is None
    with pytest.raises(TinygenError, match="--cond class needs labelled data"):
        DiffusionTask(tiny_model(), data)


def test_factored_labels_map_to_one_row_per_attribute():
    model = tiny_model(label_factors=(8, 6))
    labels = torch.arange(49)  # the 48 (colour, shape) classes, then the null label
    rows = model.embedding_rows(labels)
    colour, shape = labels[:48] // 6, labels[:48] % 6  # label = colour * 6 + shape
    assert torch.equal(rows[:48], torch.stack([colour, 8 + shape], dim=1))
    assert rows[48].tolist() == [14, 14]  # the null label has its own row, after all 8 + 6
    assert model.unet.encoder.class_emb.num_embeddings == 15


def test_factored_label_embedding_is_the_sum_of_its_attributes():
    """emb(c, s) = colour_c + shape_s: swapping the shape changes the embedding by the same
    vector whatever the colour (a joint table has no such structure)."""
    model = tiny_model(label_factors=(8, 6))
    t = torch.zeros(4, dtype=torch.long)
    labels = torch.tensor([0 * 6 + 1, 0 * 6 + 4, 5 * 6 + 1, 5 * 6 + 4])  # 2 colours x 2 shapes
    with torch.no_grad():
        emb = model.unet.encoder.embed(t, model.embedding_rows(labels))
    torch.testing.assert_close(emb[1] - emb[0], emb[3] - emb[2])
    assert not torch.allclose(emb[0], emb[2])
    joint = tiny_model()
    with torch.no_grad():
        emb = joint.unet.encoder.embed(t, joint.embedding_rows(labels))
    assert not torch.allclose(emb[1] - emb[0], emb[3] - emb[2])


def test_label_factors_must_multiply_to_the_classes():
    with pytest.raises(TinygenError, match="multiply to 42"):
        DiffusionModel(DiffusionConfig(unet=TINY_UNET, conditioning="class", label_factors=(7, 6)))


def test_heldout_eval_labels_are_only_the_pairs_training_never_shows():
    from tinygen.data.shapes import HELDOUT_COMBOS, combo_index
    from tinygen.eval.diffusion_eval import eval_labels

    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    _, labels, prompts = eval_labels(60, split="heldout", image_size=16)
    assert set(labels.tolist()) == heldout
    _, labels, _ = eval_labels(200, split="val", image_size=16)
    assert not set(labels.tolist()) & heldout
    assert len(prompts) == 60
