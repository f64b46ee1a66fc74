"""The figure of issue 3 as a test: the default recipe, number -> words, 2,000 held-out
numbers below 10^7, >= 99% exact match, beam 4 at least as good as greedy."""

from __future__ import annotations

import json
import time

import pytest

from tinygen.cli.main import main


@pytest.mark.slow
def test_default_recipe_reaches_99_percent_on_held_out_numbers(tmp_path) -> None:
    out = tmp_path / "run"
    start = time.perf_counter()
    assert (
        main(["train", "seq2seq", "--task", "number-words", "--out", str(out), "--no-progress"])
        == 0
    )
    assert time.perf_counter() - start < 15 * 60
    scores = json.loads((out / "heldout_eval.json").read_text())
    assert scores["greedy"]["n"] == 2000
    assert scores["greedy"]["exact_match"] >= 0.99
    assert scores["beam4"]["exact_match"] >= scores["greedy"]["exact_match"]


@pytest.mark.slow
def test_dates_task_learns_to_reorder(tmp_path) -> None:
    """28 November 2026 -> 2026-11-28 on held-out dates after a short character-level run."""
    out = tmp_path / "dates"
    assert (
        main(
            [
                "train",
                "seq2seq",
                "--task",
                "dates",
                "--direction",
                "to-digits",
                "--out",
                str(out),
                "--max-iters",
                "600",
                "--n-heldout",
                "500",
                "--no-progress",
            ]
        )
        == 0
    )
    scores = json.loads((out / "heldout_eval.json").read_text())
    assert scores["greedy"]["exact_match"] >= 0.95
