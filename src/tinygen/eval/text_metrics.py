"""Metrics for text outputs with one right answer: exact match and character error rate.

Character error rate (CER) is the Levenshtein edit distance (insertions, deletions and
substitutions, each costing 1; Levenshtein 1966) between prediction and reference, summed
over the corpus and divided by the total reference length -- the corpus-level CER that
speech and OCR papers report, so long references weigh more than short ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (strings or token lists).

    The classic dynamic programme over a (len(a)+1) x (len(b)+1) table, kept one row at a
    time: row[j] is the distance between the prefix of `a` seen so far and b[:j].
    """
    if len(a) < len(b):
        a, b = b, a  # the shorter one indexes the row: O(min(len)) memory
    previous = list(range(len(b) + 1))
    for i, item_a in enumerate(a, start=1):
        current = [i]
        for j, item_b in enumerate(b, start=1):
            current.append(
                min(
                    previous[j] + 1,  # delete item_a
                    current[j - 1] + 1,  # insert item_b
                    previous[j - 1] + (item_a != item_b),  # substitute (or match)
                )
            )
        previous = current
    return previous[-1]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference, character for character."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def character_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CER: sum of edit distances / sum of reference lengths (can exceed 1)."""
    _check_lengths(predictions, references)
    total = sum(len(r) for r in references)
    errors = sum(edit_distance(p, r) for p, r in zip(predictions, references))
    if total == 0:
        return 0.0 if errors == 0 else float("inf")
    return errors / total


@dataclass
class TextScores:
    """Exact match and CER of one decoding method on one evaluation set."""

    exact_match: float
    cer: float
    n: int

    def __str__(self) -> str:
        return f"exact match {100 * self.exact_match:.2f}%  CER {100 * self.cer:.3f}%  (n={self.n})"


def score_texts(predictions: Sequence[str], references: Sequence[str]) -> TextScores:
    """Both metrics at once."""
    return TextScores(
        exact_match(predictions, references),
        character_error_rate(predictions, references),
        len(references),
    )


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up"
        )
