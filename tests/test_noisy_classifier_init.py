"""The noisy classifier's warm start (`train noisy-classifier --clean`, then `--init-from`):
the clean stage trains at t = 0 only, the fine-tune starts as the clean classifier at every
t, records where it came from, and a wrong source run is one clear error."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from tinygen.cli.main import main
from tinygen.errors import TinygenError
from tinygen.models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from tinygen.models.runs import load_model
from tinygen.recipes.diffusion import PRESETS, NoisyClassifierTask
from tinygen.recipes.noisy_classifier_init import freeze_time_embedding, warm_start

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny run: the tiny preset at 16 px, 4 steps on 256 images, 20 noise levels
TINY = shlex.split(
    "--preset tiny --image-size 16 --n-train 256 --max-iters 4 --eval-interval 4 "
    "--eval-iters 1 --num-train-timesteps 20 --no-progress"
)


def _tiny_classifier() -> NoisyClassifier:
    unet = PRESETS["tiny"].model.unet
    torch.manual_seed(0)
    model = NoisyClassifier(NoisyClassifierConfig(unet=unet, num_train_timesteps=20))
    with torch.no_grad():  # as if trained: the zero-initialised layers (t's way in) are not
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def test_frozen_time_embedding_is_the_t0_network_at_every_t():
    model = _tiny_classifier().eval()
    x = torch.randn(3, 3, 16, 16)
    t0 = torch.zeros(3, dtype=torch.long)
    before = model(x, t0)
    assert not torch.allclose(before, model(x, torch.full((3,), 15)), atol=1e-4)
    freeze_time_embedding(model)
    assert torch.allclose(model(x, t0), before, atol=1e-5)
    for t in (1, 10, 19):
        assert torch.allclose(model(x, torch.full((3,), t)), before, atol=1e-5)
    assert torch.count_nonzero(model.encoder.time_mlp[-1].weight) == 0


def test_clean_task_draws_t_zero_only():
    class Data:  # the two things the task reads from an ImageData
        labels, num_classes = True, 48

        def draw(self, split, n, generator):
            return torch.randn(n, 3, 16, 16), torch.randint(48, (n,), generator=generator)

    model = _tiny_classifier()
    clean = NoisyClassifierTask(model, Data(), clean=True)
    noisy = NoisyClassifierTask(model, Data())
    gen = torch.Generator().manual_seed(0)
    assert torch.all(clean.get_batch("train", 64, gen)["t"] == 0)
    assert noisy.get_batch("train", 64, gen)["t"].unique().numel() > 1


def test_init_from_a_clean_run_starts_as_it_and_records_it(tmp_path):
    clean, tuned = tmp_path / "clean", tmp_path / "tuned"
    assert main(["train", "noisy-classifier", "--clean", "--out", str(clean), *TINY]) == 0
    assert json.loads((clean / "config.json").read_text())["clean"] is True
    source, config = load_model(clean, expect="noisy-classifier")
    # the warm start alone (no training step): the clean network at every t
    fresh = NoisyClassifier(NoisyClassifierConfig(**config["model"])).eval()
    warm_start(clean, fresh.config)(fresh)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    expected = source(x, torch.zeros(4, dtype=torch.long))
    for t in (0, 7, 19):
        assert torch.allclose(fresh(x, torch.full((4,), t)), expected, atol=1e-5)

    assert main(["train", "noisy-classifier", "--init-from", str(clean), "--out", str(tuned),
                 *TINY]) == 0  # fmt: skip
    recorded = json.loads((tuned / "config.json").read_text())
    assert recorded["clean"] is False
    assert recorded["init_from"]["run"] == str(clean)
    assert len(recorded["init_from"]["weights"]) > 32

    # a resume reads the checkpoint, not the source run (which may be gone), and keeps the record
    more = [a if a != "4" else "6" for a in TINY]  # --max-iters 6 (and --eval-interval 6)
    (clean / "best.safetensors").unlink()
    (clean / "model.safetensors").unlink()
    assert main(["train", "noisy-classifier", "--resume", "--out", str(tuned), *more]) == 0
    resumed = json.loads((tuned / "config.json").read_text())
    assert resumed["init_from"] == recorded["init_from"]
    assert resumed["train"]["max_iters"] == 6


def test_init_from_errors(tmp_path, capsys):
    noisy, diffusion = tmp_path / "noisy", tmp_path / "diffusion"
    assert main(["train", "noisy-classifier", "--out", str(noisy), *TINY]) == 0
    assert main(["train", "diffusion", "--out", str(diffusion), *TINY]) == 0
    capsys.readouterr()
    cases = [
        (["--init-from", str(noisy)], "trained on noisy images"),
        (["--init-from", str(diffusion)], "noisy-classifier"),
        (["--init-from", str(tmp_path / "missing")], "missing"),
        (["--init-from", str(noisy), "--clean"], "drop --clean"),
    ]
    for extra, message in cases:
        code = main(["train", "noisy-classifier", "--out", str(tmp_path / "x"), *extra, *TINY])
        assert code != 0
        assert message in capsys.readouterr().err
    model = _tiny_classifier()
    other = NoisyClassifierConfig(unet=model.config.unet, num_train_timesteps=40)
    clean = tmp_path / "clean"
    assert main(["train", "noisy-classifier", "--clean", "--out", str(clean), *TINY]) == 0
    with pytest.raises(TinygenError, match="num_train_timesteps: 20 there, 40 here"):
        warm_start(clean, other)
