"""The real evaluator run: `tinygen train evaluator` with its defaults must reach the
issue's bar, >= 99.5% per attribute on clean test images (minutes on a CPU)."""

from __future__ import annotations

import pytest

from tinygen.cli.main import main
from tinygen.eval import load_evaluator
from tinygen.recipes.evaluator import accuracy_under_noise


@pytest.mark.slow
def test_default_evaluator_run_reaches_99_5_percent_per_attribute(tmp_path):
    out = tmp_path / "evaluator"
    assert main(["train", "evaluator", "--out", str(out), "--no-install", "--no-progress"]) == 0
    table = accuracy_under_noise(load_evaluator(out), n=2000, sigmas=(0.0, 0.1), seed=1)
    assert min(table[0.0].values()) >= 0.995, table
    assert min(table[0.1].values()) >= 0.99, table  # robust to a diffusion model's leftovers
    # latent diffusion's 64 px world, judged after the evaluator's antialiased resize
    table_64 = accuracy_under_noise(
        load_evaluator(out), n=2000, sigmas=(0.0,), seed=1, image_size=64
    )
    assert min(table_64[0.0].values()) >= 0.99, table_64
