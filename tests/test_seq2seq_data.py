"""Translation data and text metrics: number words, dates, held-out sets, vocabularies,
TSV files, exact match and character error rate."""

from __future__ import annotations

import datetime
import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygen.data.translation import (
    BOS,
    EOS,
    PAD,
    TaskSpec,
    TranslationData,
    Vocab,
    date_to_words,
    number_to_words,
    pad_batch,
    read_tsv,
)
from tinygen.errors import TinygenError
from tinygen.eval.text_metrics import character_error_rate, edit_distance, exact_match
from tinygen.train.config import TrainConfig
from tinygen.train.lr import get_lr

# -- number words ------------------------------------------------------------------------

_UNITS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_TENS = {
    w: 10 * i
    for i, w in enumerate(
        ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    )
    if w != "_"
}


def parse_words(text: str) -> int:
    """An independent reader of English number words (the inverse of number_to_words)."""
    total, group = 0, 0
    for word in text.split():
        if word in ("million", "thousand"):
            total += group * (10**6 if word == "million" else 1000)
            group = 0
        elif word == "hundred":
            group *= 100
        else:
            for part in word.split("-"):
                group += _UNITS[part] if part in _UNITS else _TENS[part]
    return total + group


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety-nine"),
        (100, "one hundred"),
        (1005, "one thousand five"),
        (70000, "seventy thousand"),
        (1000000, "one million"),
        (4051207, "four million fifty-one thousand two hundred seven"),
        (9999999, "nine million nine hundred ninety-nine thousand nine hundred ninety-nine"),
    ],
)
def test_number_to_words_examples(n: int, words: str) -> None:
    assert number_to_words(n) == words


@given(st.integers(0, 10**7 - 1))
@settings(max_examples=300, deadline=None)
def test_number_words_read_back_to_the_number(n: int) -> None:
    assert parse_words(number_to_words(n)) == n


def test_dates_match_strftime() -> None:
    for day in (datetime.date(2026, 11, 28), datetime.date(1900, 1, 1), datetime.date(2099, 2, 9)):
        assert date_to_words(day) == f"{day.day} {day.strftime('%B %Y')}"


# -- held-out sets -----------------------------------------------------------------------


@pytest.mark.parametrize("task", ["number-words", "dates"])
def test_training_never_draws_held_out_pairs(task: str) -> None:
    data = TranslationData(TaskSpec(task=task, n_heldout=300))
    held = {s for s, _ in data.test_pairs} | {s for s, _ in data.val_pairs}
    assert len(held) == 600  # distinct, and test and validation do not overlap
    g = torch.Generator().manual_seed(0)
    drawn = [s for _ in range(20) for s, _ in data.draw("train", 500, g)]
    assert not held & set(drawn)
    # the exclusion is real: redrawn training samples cover the space densely enough that
    # (for dates, 73k days) about 10000 * 600 / 73049 ~ 82 hits would occur otherwise
    if task == "dates":
        assert len(set(drawn)) > 5000


def test_held_out_sets_depend_only_on_the_task_seed() -> None:
    a, b = TranslationData(TaskSpec(seed=3)), TranslationData(TaskSpec(seed=3))
    assert a.test_pairs == b.test_pairs and a.val_pairs == b.val_pairs
    assert TranslationData(TaskSpec(seed=4)).test_pairs != a.test_pairs
    assert all(int(s) < 10**7 for s, _ in a.test_pairs) and len(a.test_pairs) == 2000


def test_directions_swap_source_and_target() -> None:
    to_words = TranslationData(TaskSpec(direction="to-words", n_heldout=50))
    to_digits = TranslationData(TaskSpec(direction="to-digits", n_heldout=50))
    assert to_digits.test_pairs == [(t, s) for s, t in to_words.test_pairs]
    assert to_words.src_vocab == to_digits.tgt_vocab
    for s, t in to_words.test_pairs:
        assert number_to_words(int(s)) == t
    dates = TranslationData(TaskSpec(task="dates", direction="to-digits", n_heldout=50))
    assert dates.src_vocab is dates.tgt_vocab  # one character vocabulary: shared embeddings
    for s, t in dates.test_pairs:
        assert date_to_words(datetime.date.fromisoformat(t)) == s


# -- vocabularies ------------------------------------------------------------------------


def test_vocab_round_trip_and_specials() -> None:
    words = Vocab.from_texts(["four million fifty-one", "two"], "word")
    ids = words.encode("fifty-one two")
    assert min(ids) > EOS and words.decode(ids + [EOS, 7, 7]) == "fifty-one two"
    assert words.decode([BOS, *ids, PAD]) == "fifty-one two"
    assert Vocab.from_dict(words.to_dict()) == words
    batch = pad_batch([[5, 6], [7]], bos=True, eos=True)
    assert batch.tolist() == [[BOS, 5, 6, EOS], [BOS, 7, EOS, PAD]] and batch.dtype == torch.long


def test_vocab_errors_name_the_problem() -> None:
    chars = Vocab(list("0123456789"))
    with pytest.raises(TinygenError, match=r"not in the vocabulary: ','"):
        chars.encode("4,051")
    with pytest.raises(TinygenError, match="empty"):
        chars.encode("")
    with pytest.raises(TinygenError, match="'bogus'"):
        Vocab.from_texts(["one two"], "word").encode("one bogus")


# -- TSV files ---------------------------------------------------------------------------


def test_tsv_task_with_shared_char_vocabulary(tmp_path) -> None:
    path = tmp_path / "pairs.tsv"
    lines = [f"{w}\t{w[::-1]}" for w in ("abc", "hello", "tiny", "gen", "xyz") * 4]
    path.write_text("\n".join(lines) + "\n\n")
    data = TranslationData(TaskSpec(task="tsv", data=str(path)))
    assert len(data.test_pairs) == 2 and data.src_vocab is data.tgt_vocab
    train = data.draw("train", 50, torch.Generator().manual_seed(0))
    assert all(t == s[::-1] for s, t in train)
    assert len(read_tsv(path)) == 20


def test_tsv_errors(tmp_path) -> None:
    with pytest.raises(TinygenError, match="does not exist"):
        read_tsv(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab here\n")
    with pytest.raises(TinygenError, match=r"bad.tsv:2"):
        read_tsv(bad)
    with pytest.raises(TinygenError, match="--data"):
        TranslationData(TaskSpec(task="tsv"))


# -- metrics -----------------------------------------------------------------------------


@functools.cache
def _recursive_distance(a: str, b: str) -> int:
    """The textbook recursive definition of the Levenshtein distance."""
    if not a or not b:
        return len(a) + len(b)
    return min(
        _recursive_distance(a[1:], b) + 1,
        _recursive_distance(a, b[1:]) + 1,
        _recursive_distance(a[1:], b[1:]) + (a[0] != b[0]),
    )


@given(st.text("abc", max_size=8), st.text("abc", max_size=8))
@settings(max_examples=200, deadline=None)
def test_edit_distance_matches_recursive_definition(a: str, b: str) -> None:
    assert edit_distance(a, b) == _recursive_distance(a, b) == edit_distance(b, a)


def test_metrics_on_known_values() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert exact_match(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    # 3 edits over 7 + 3 reference characters
    assert math.isclose(character_error_rate(["kitten", "abc"], ["sitting", "abc"]), 3 / 10)
    assert character_error_rate([""], ["four"]) == 1.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_inverse_sqrt_schedule_is_the_papers_eq_3_up_to_scale() -> None:
    """lrate = d^-0.5 * min(s^-0.5, s * w^-1.5): our peak-normalised schedule must be
    proportional to it at every step."""
    config = TrainConfig(lr_schedule="inverse_sqrt", warmup_iters=400, learning_rate=1.0)
    paper = [128**-0.5 * min(s**-0.5, s * 400**-1.5) for s in range(1, 5000)]
    ours = [get_lr(s - 1, config) for s in range(1, 5000)]
    ratios = torch.tensor(ours) / torch.tensor(paper)
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()))
    assert max(ours) == pytest.approx(1.0) and ours.index(max(ours)) == 399
