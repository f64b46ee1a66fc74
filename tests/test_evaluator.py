"""The shapes evaluator and its metrics: Fréchet distance against scipy, prompt fidelity
against known answers, augmentation against scipy's Gaussian filter, and a tiny evaluator
trained in-process (CI machines have no trained one)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tinygen.data.shapes import ATTRIBUTES, generate_shapes
from tinygen.errors import TinygenError
from tinygen.eval import feature_distance, frechet_distance, load_evaluator, prompt_fidelity
from tinygen.eval.fidelity import install_evaluator
from tinygen.models.shapes_evaluator import EvaluatorConfig, ShapesEvaluator
from tinygen.recipes.evaluator import EvaluatorTask, augment, gaussian_blur


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=gen, dtype=torch.float64)
    b = (
        torch.randn(250, 6, generator=gen, dtype=torch.float64)
        @ torch.rand(6, 6, generator=gen, dtype=torch.float64)
        + 0.5
    )
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(
        ca + cb - 2 * linalg.sqrtm(ca @ cb).real
    )
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_in_one_dimension_is_the_gaussian_formula():
    a = torch.tensor([[0.0], [2.0]])  # mean 1, std sqrt(2)
    b = torch.tensor([[3.0], [7.0]])  # mean 5, std sqrt(8)
    expected = (1 - 5) ** 2 + (2**0.5 - 8**0.5) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected)
    assert frechet_distance(b, b) == pytest.approx(0.0, abs=1e-9)


def test_blur_matches_scipy_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    images = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5, 0.8])
    ours = gaussian_blur(images, sigma)
    for i, s in enumerate(sigma.tolist()):
        ref = images[i].numpy()
        for axis in (1, 2):  # torch's "reflect" padding is scipy's "mirror"
            ref = ndimage.gaussian_filter1d(ref, s, axis=axis, mode="mirror", radius=2)
        assert np.allclose(ours[i].numpy(), ref, atol=1e-6)
    assert torch.allclose(gaussian_blur(images, torch.zeros(2)), images)


def test_augment_adds_noise_of_the_drawn_level_and_stays_in_range():
    images = torch.zeros(1000, 3, 16, 16)
    out = augment(images, torch.Generator().manual_seed(0), max_noise=0.3, p_noise=1.0, p_blur=0.0)
    std = out.flatten(1).std(1)  # per image: one uniform noise level in [0, 0.3]
    assert std.max() < 0.33 and std.min() < 0.01 and abs(std.mean().item() - 0.15) < 0.01
    assert out.abs().max() <= 1
    clean = augment(images + 0.5, torch.Generator(), p_noise=0.0, p_blur=0.0)
    assert torch.equal(clean, images + 0.5)


class Oracle:
    """A stand-in evaluator that 'predicts' given labels, to test the metric alone."""

    def __init__(self, labels: dict[str, torch.Tensor]) -> None:
        self.labels = labels

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.labels


def test_prompt_fidelity_counts_exactly_what_matches():
    batch = generate_shapes(40, split="test", seed=0)
    assert prompt_fidelity(batch.images, batch.prompts, evaluator=Oracle(batch.labels)) == {
        "all": 1.0,
        "shape": 1.0,
        "color": 1.0,
        "size": 1.0,
        "position": 1.0,
    }
    wrong = dict(batch.labels)
    wrong["color"] = batch.labels["color"].clone()
    wrong["color"][:10] = (wrong["color"][:10] + 1) % 8  # 10 of 40 colours wrong
    wrong["size"] = batch.labels["size"].clone()
    wrong["size"][5:15] = 1 - wrong["size"][5:15]  # 10 sizes wrong, 5 overlap the colours
    scores = prompt_fidelity(batch.images, batch.prompts, evaluator=Oracle(wrong))
    assert scores["color"] == 0.75 and scores["size"] == 0.75 and scores["shape"] == 1.0
    assert scores["all"] == 25 / 40


def test_prompt_fidelity_scores_only_the_attributes_named():
    batch = generate_shapes(8, split="test", seed=1)
    prompts = [
        f"a {c} {s}"
        for c, s in zip(
            [
                ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white")[i]
                for i in batch.labels["color"].tolist()
            ],
            [ATTRIBUTES["shape"][i] for i in batch.labels["shape"].tolist()],
        )
    ]
    wrong = dict(batch.labels, size=1 - batch.labels["size"])  # sizes are not asked for
    assert prompt_fidelity(batch.images, prompts, evaluator=Oracle(wrong)) == {
        "all": 1.0,
        "shape": 1.0,
        "color": 1.0,
    }


def test_prompt_fidelity_rejects_bad_input():
    batch = generate_shapes(2, seed=0)
    oracle = Oracle(batch.labels)
    with pytest.raises(TinygenError, match="2 images but 1 prompts"):
        prompt_fidelity(batch.images, batch.prompts[:1], evaluator=oracle)
    # a judge without slot heads cannot read two-object images; one kind of prompt per call
    with pytest.raises(TinygenError, match="no two-object \\(slot\\) heads"):
        prompt_fidelity(batch.images, ["a red circle above a blue star"] * 2, evaluator=oracle)
    with pytest.raises(TinygenError, match="mix one-object and two-object"):
        prompt_fidelity(
            batch.images, ["a red circle above a blue star", "a red circle"], evaluator=oracle
        )
    with pytest.raises(TinygenError, match="'unicorn'"):
        prompt_fidelity(batch.images, ["a red unicorn"] * 2, evaluator=oracle)
    with pytest.raises(TinygenError, match=r"\(N, 3, H, W\)"):
        prompt_fidelity(batch.images[:, :1], batch.prompts, evaluator=oracle)


def test_missing_evaluator_tells_the_user_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TINYGEN_EVALUATOR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TinygenError, match="tinygen train evaluator"):
        load_evaluator()


def test_evaluator_resizes_other_image_sizes_and_checks_channels():
    model = ShapesEvaluator(EvaluatorConfig(width=8, feature_dim=16)).eval()
    x64 = generate_shapes(2, seed=0, image_size=64).images
    x32 = torch.nn.functional.interpolate(x64, size=(32, 32), mode="bilinear", antialias=True)
    assert torch.allclose(model.features(x64), model.features(x32), atol=1e-6)
    with pytest.raises(TinygenError, match="RGB"):
        model(torch.zeros(1, 1, 32, 32))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny evaluator trained for a few seconds with the shared Trainer."""
    from tinygen.train.config import TrainConfig
    from tinygen.train.trainer import Trainer

    out = tmp_path_factory.mktemp("evaluator")
    config = EvaluatorConfig(width=8, feature_dim=32)
    torch.manual_seed(0)
    task = EvaluatorTask(config, n_test=300)
    train = TrainConfig(
        max_iters=60,
        batch_size=32,
        learning_rate=3e-3,
        warmup_iters=5,
        eval_interval=60,
        eval_iters=2,
        log_interval=20,
        device="cpu",
    )
    run_config = {"model_type": "shapes-evaluator", "model": dataclasses.asdict(config)}
    result = Trainer(task, train, out, run_config=run_config, progress=False).fit()
    return out, result


def test_a_tiny_evaluator_learns_position_and_size(tiny_run):
    _, result = tiny_run
    final = result.history[-1]
    first = next(r for r in result.history if "train_loss" in r)
    assert final["val_loss"] < first["train_loss"]
    assert final["acc_position"] > 0.9  # chance: 0.2 (this run: 0.997)
    assert final["acc_size"] > 0.7  # chance: 0.5 (this run: 0.86)


def test_installed_evaluator_is_found_and_scores_prompts(tiny_run, tmp_path, monkeypatch):
    out, _ = tiny_run
    dest = install_evaluator(out, tmp_path / "installed")
    monkeypatch.setenv("TINYGEN_EVALUATOR", str(dest))
    evaluator = load_evaluator()
    batch = generate_shapes(200, split="test", seed=3)
    scores = prompt_fidelity(batch.images, batch.prompts)  # default evaluator from the env
    predicted = evaluator.predict(batch.images)
    assert (
        scores["position"]
        == (predicted["position"] == batch.labels["position"]).float().mean().item()
    )
    wrong = [
        p.replace(" on the left", " on the right")
        if "left" in p
        else p.replace(" on the right", " on the left")
        for p in batch.prompts
    ]
    sideways = prompt_fidelity(batch.images, wrong)["position"]
    assert sideways < scores["position"] - 0.2  # it notices a prompt asking the wrong side


def test_feature_distance_is_small_within_the_world_and_large_to_noise(tiny_run):
    out, _ = tiny_run
    evaluator = load_evaluator(out)
    a = generate_shapes(400, split="test", seed=4).images
    b = generate_shapes(400, split="test", seed=5).images
    noise = torch.rand(400, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    same_world = feature_distance(a, b, evaluator=evaluator)
    assert same_world < feature_distance(a, noise, evaluator=evaluator) / 5
    assert feature_distance(a, a, evaluator=evaluator) == pytest.approx(0.0, abs=1e-4)


def test_cli_eval_reports_accuracy_per_noise_level(tiny_run):
    out, _ = tiny_run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinygen.cli.main",
            "eval",
            "evaluator",
            "--run",
            str(out),
            "--n",
            "100",
            "--noise",
            "0,0.1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["noise_std"] for r in rows] == [0.0, 0.1]
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ATTRIBUTES)
