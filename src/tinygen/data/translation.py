"""Translation data: built-in tasks with exact answers, parallel TSV files, and vocabularies.

Built-in tasks are generated on the fly from a seed and need no download:
- `number-words`: 4051207 <-> "four million fifty-one thousand two hundred seven"
  (numbers below 10^7, American style without "and").
- `dates`: 2026-11-28 <-> "28 November 2026" -- the day and year swap places and the month
  becomes a name, so the model must reorder, not just transliterate.
Held-out examples (a test set and a validation set, drawn from the task seed) are never
drawn for training. A parallel text file (`source<TAB>target` per line) works too.

A `Vocab` maps text to ids on one side (characters or whitespace-separated words) with the
three special ids every sequence model needs: padding, beginning and end of sequence.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from tinygen.errors import TinygenError

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
TASKS = ("number-words", "dates", "tsv")
DIRECTIONS = ("to-words", "to-digits")
MAX_NUMBER = 10**7


# -- vocabularies ------------------------------------------------------------------------


class Vocab:
    """Token <-> id for one side of a translation pair; ids 0-2 are <pad>, <bos>, <eos>.

    kind "char": one token per character. kind "word": tokens are whitespace-separated
    words, joined back with single spaces.
    """

    def __init__(self, tokens: list[str], kind: str = "char") -> None:
        if kind not in ("char", "word"):
            raise TinygenError(f"unknown tokenizer {kind!r}; choose char or word")
        tokens = sorted(set(tokens) - set(SPECIALS))
        if not tokens:
            raise TinygenError("cannot build a vocabulary from empty text; the data is empty")
        self.kind = kind
        self.itos = list(SPECIALS) + tokens
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def from_texts(cls, texts: list[str], kind: str = "char") -> Vocab:
        tokens: set[str] = set()
        for text in texts:
            tokens.update(text if kind == "char" else text.split())
        return cls(sorted(tokens), kind)

    def __len__(self) -> int:
        return len(self.itos)

    def split(self, text: str) -> list[str]:
        return list(text) if self.kind == "char" else text.split()

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without <bos>/<eos>; unknown tokens and empty text are errors."""
        pieces = self.split(text)
        if not pieces:
            raise TinygenError("the input is empty; give a non-empty line of text to translate")
        unknown = sorted({p for p in pieces if p not in self.stoi})
        if unknown:
            what = "characters" if self.kind == "char" else "words"
            shown = ", ".join(repr(p) for p in unknown[:10])
            raise TinygenError(
                f"the input contains {what} not in the vocabulary: {shown} (the model knows "
                f"{len(self) - len(SPECIALS)} {what}; remove them or train on data that has them)"
            )
        return [self.stoi[p] for p in pieces]

    def decode(self, ids: list[int] | Tensor) -> str:
        """Text of `ids`, stopping at the first <eos> and skipping <pad>/<bos>."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        pieces = []
        for i in ids:
            if i == EOS:
                break
            if i >= len(SPECIALS):
                pieces.append(self.itos[i])
        return ("" if self.kind == "char" else " ").join(pieces)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": self.itos[len(SPECIALS) :]}

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        try:
            return cls(list(data["tokens"]), data["kind"])
        except (KeyError, TypeError) as e:
            raise TinygenError(f"the saved vocabulary is corrupt ({e}); retrain the run") from e

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.kind, self.itos) == (other.kind, other.itos)


def pad_batch(sequences: list[list[int]], *, bos: bool = False, eos: bool = False) -> Tensor:
    """Right-pad id lists into an int64 (B, T) tensor, optionally adding <bos>/<eos>."""
    rows = [([BOS] if bos else []) + s + ([EOS] if eos else []) for s in sequences]
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


# -- number <-> words --------------------------------------------------------------------

_ONES = [
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
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**9, "billion"), (10**6, "million"), (10**3, "thousand"))


def _below_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 10^12: 4051207 -> 'four million fifty-one thousand two
    hundred seven'. Compound tens are hyphenated; no 'and' (American usage)."""
    if not 0 <= n < 10**12:
        raise ValueError(f"number_to_words handles 0 <= n < 10^12, got {n}")
    if n == 0:
        return "zero"
    words: list[str] = []
    for value, name in _SCALES:
        if n >= value:
            words += _below_thousand(n // value) + [name]
            n %= value
    if n:
        words += _below_thousand(n)
    return " ".join(words)


# -- dates -------------------------------------------------------------------------------

_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_FIRST_DAY = datetime.date(1900, 1, 1).toordinal()
_N_DAYS = datetime.date(2099, 12, 31).toordinal() - _FIRST_DAY + 1


def date_to_words(date: datetime.date) -> str:
    """2026-11-28 -> '28 November 2026'."""
    return f"{date.day} {_MONTHS[date.month - 1]} {date.year}"


def _date_pair(index: int) -> tuple[str, str]:
    date = datetime.date.fromordinal(_FIRST_DAY + index)
    return date.isoformat(), date_to_words(date)


# -- the task ----------------------------------------------------------------------------


@dataclass
class TaskSpec:
    """Everything needed to rebuild a task's data (saved in the run's config.json)."""

    task: str = "number-words"
    direction: str = "to-words"
    data: str | None = None
    tokenizer: str = "auto"
    seed: int = 0
    n_heldout: int = 2000

    def validate(self) -> None:
        if self.task not in TASKS:
            raise TinygenError(
                f"unknown --task {self.task!r}; choose number-words or dates "
                "(or pass --data PATH for a tab-separated file)"
            )
        if self.direction not in DIRECTIONS:
            raise TinygenError(
                f"unknown --direction {self.direction!r}; choose to-words or to-digits"
            )
        if self.tokenizer not in ("auto", "char", "word"):
            raise TinygenError(f"unknown --tokenizer {self.tokenizer!r}; choose auto, char or word")
        if self.task == "tsv" and not self.data:
            raise TinygenError("the tsv task needs --data PATH (source<TAB>target per line)")
        if self.n_heldout <= 0:
            raise TinygenError(f"--n-heldout must be positive, got {self.n_heldout}")


class TranslationData:
    """Source/target pairs of one task: training draws, a validation and a test set.

    `draw(split, n, generator)` returns n (source, target) string pairs; `test_pairs` and
    `val_pairs` are fixed lists that training never draws from.
    """

    def __init__(self, spec: TaskSpec, vocabs: tuple[Vocab, Vocab] | None = None) -> None:
        spec.validate()
        self.spec = spec
        self._tsv_train: list[tuple[str, str]] = []
        rng = random.Random(spec.seed)
        if spec.task == "tsv":
            pairs = read_tsv(spec.data)
            rng.shuffle(pairs)
            n_held = max(1, min(spec.n_heldout, len(pairs) // 10))
            self.test_pairs = pairs[:n_held]
            self.val_pairs = self.test_pairs
            self._tsv_train = pairs[n_held:] or pairs
            self._heldout: set[int] = set()
            self._space = len(self._tsv_train)
        else:
            self._space = MAX_NUMBER if spec.task == "number-words" else _N_DAYS
            if 2 * spec.n_heldout > self._space // 10:
                raise TinygenError(f"--n-heldout {spec.n_heldout} is too large for this task")
            held = rng.sample(range(self._space), 2 * spec.n_heldout)
            self._heldout = set(held)
            self.test_pairs = [self._pair(i) for i in held[: spec.n_heldout]]
            self.val_pairs = [self._pair(i) for i in held[spec.n_heldout :]]
        self.src_vocab, self.tgt_vocab = vocabs if vocabs is not None else self._build_vocabs()

    # a direction "to-digits" swaps the natural (digits, words) order of the built-in tasks
    def _pair(self, index: int) -> tuple[str, str]:
        if self.spec.task == "number-words":
            pair = (str(index), number_to_words(index))
        elif self.spec.task == "dates":
            pair = _date_pair(index)
        else:
            return self._tsv_train[index]
        return pair if self.spec.direction == "to-words" else (pair[1], pair[0])

    def _build_vocabs(self) -> tuple[Vocab, Vocab]:
        kind = self.spec.tokenizer
        if self.spec.task == "number-words":
            # digits are always characters; the words side is words unless asked otherwise
            digits = Vocab(list("0123456789"), "char")
            texts = [number_to_words(n) for n in range(1000)] + ["thousand million"]
            words = Vocab.from_texts(texts, "char" if kind == "char" else "word")
            return (digits, words) if self.spec.direction == "to-words" else (words, digits)
        if self.spec.task == "dates":
            texts = [t for i in range(0, _N_DAYS, 7) for t in _date_pair(i)] + list(_MONTHS)
            texts += [str(d) for d in range(10)]
            shared = Vocab.from_texts(texts, "char" if kind == "auto" else kind)
            return shared, shared
        kind = "char" if kind == "auto" else kind
        pairs = self._tsv_train + self.test_pairs
        src = Vocab.from_texts([s for s, _ in pairs], kind)
        tgt = Vocab.from_texts([t for _, t in pairs], kind)
        # one shared vocabulary (characters always, words when both sides use the same
        # words), so the model can share its embeddings
        if kind == "char":
            src = tgt = Vocab(src.itos[len(SPECIALS) :] + tgt.itos[len(SPECIALS) :], "char")
        elif src == tgt:
            tgt = src
        return src, tgt

    def draw(self, split: str, n: int, generator: torch.Generator) -> list[tuple[str, str]]:
        """n pairs for `split` ('train' or 'val'), drawn with `generator`."""
        if split != "train":
            idx = torch.randint(len(self.val_pairs), (n,), generator=generator).tolist()
            return [self.val_pairs[i] for i in idx]
        indices = self._draw_train_indices(n, generator)
        return [self._pair(i) for i in indices]

    def _draw_train_indices(self, n: int, generator: torch.Generator) -> list[int]:
        if self.spec.task != "number-words":
            indices = torch.randint(self._space, (n,), generator=generator).tolist()
        else:
            # Half uniform below 10^7 (what the test set looks like), half with a uniform
            # number of digits, so short numbers are seen often enough to be learned too.
            uniform = torch.randint(MAX_NUMBER, (n,), generator=generator)
            digits = torch.randint(1, 8, (n,), generator=generator)
            low = torch.where(digits == 1, 0, 10 ** (digits - 1))
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            by_length = low + (u * (10**digits - low)).long()
            pick = torch.rand(n, generator=generator) < 0.5
            indices = torch.where(pick, uniform, by_length).tolist()
        # the held-out numbers are redrawn (1 in 2,500 for the default task)
        for k, index in enumerate(indices):
            while index in self._heldout:
                index = int(torch.randint(self._space, (1,), generator=generator))
            indices[k] = index
        return indices

    def describe(self) -> dict:
        """What config.json records: the task spec and both vocabularies."""
        return {
            "task": asdict(self.spec),
            "source_vocab": self.src_vocab.to_dict(),
            "target_vocab": self.tgt_vocab.to_dict(),
        }


def read_tsv(path: str | Path) -> list[tuple[str, str]]:
    """Pairs from a UTF-8 file with one `source<TAB>target` per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise TinygenError(f"--data {path} does not exist; pass a tab-separated text file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TinygenError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8") from e
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise TinygenError(
                f"{path}:{number} is not 'source<TAB>target' (found "
                f"{len(parts) - 1} tabs); fix the line or remove it"
            )
        pairs.append((parts[0].strip(), parts[1].strip()))
    if len(pairs) < 2:
        raise TinygenError(f"{path} has {len(pairs)} pairs; a training file needs at least 2")
    return pairs
