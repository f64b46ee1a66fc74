"""The shapes-world CLIP figures from a real CPU training run (slow: about 15 minutes).

Run with `python -m pytest tests/test_clip_slow.py -m slow`. The thresholds are those of
issue 5: zero-shot (colour, shape) accuracy among all 48 pairs >= 95% on pairs seen in
training and >= 80% on held-out pairs, and text->image recall@1 >= 0.9 on 1,000 test pairs
with canonical captions.
"""

from __future__ import annotations

import time

import pytest

from tinygen.cli.main import main
from tinygen.data.caption_tokenizer import load_caption_tokenizer
from tinygen.models.runs import load_model
from tinygen.recipes.clip import evaluate_shapes


@pytest.mark.slow
def test_shapes_preset_reaches_the_issue_figures(tmp_path):
    out = tmp_path / "clip"
    start = time.perf_counter()
    assert main(["train", "clip", "--out", str(out), "--no-progress"]) == 0
    minutes = (time.perf_counter() - start) / 60
    model, _ = load_model(out, which="last")
    metrics = evaluate_shapes(model, load_caption_tokenizer(out), n_test=1000)
    assert minutes <= 15.0, f"took {minutes:.1f} min"
    assert metrics["zero_shot_seen"] >= 0.95, metrics
    assert metrics["zero_shot_heldout"] >= 0.80, metrics
    assert metrics["t2i_recall@1"] >= 0.90, metrics
