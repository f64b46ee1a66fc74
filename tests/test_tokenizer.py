import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygen.data.text import encode_corpus
from tinygen.data.tokenizers import CharTokenizer
from tinygen.errors import TinygenError

VOCAB_TEXT = "abcdefghijklmnopqrstuvwxyz ABC\n,.;:!?'-é"


@given(st.text(alphabet=sorted(set(VOCAB_TEXT)), max_size=200))
def test_encode_decode_round_trip(text):
    tok = CharTokenizer.from_text(VOCAB_TEXT)
    assert tok.decode(tok.encode(text)) == text


@given(st.text(alphabet=sorted(set(VOCAB_TEXT)), min_size=1, max_size=200))
def test_vectorised_corpus_encoding_equals_per_character_encoding(text):
    tok = CharTokenizer.from_text(VOCAB_TEXT)
    assert encode_corpus(text, tok).tolist() == tok.encode(text)


def test_ids_follow_sorted_character_order():
    tok = CharTokenizer.from_text("cab")
    assert tok.encode("abc") == [0, 1, 2]


def test_unknown_characters_are_named_in_the_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TinygenError, match=r"'€'.*'é'|'é'.*'€'"):
        tok.encode("abé€")
    with pytest.raises(TinygenError, match="not in the vocabulary"):
        encode_corpus("abz", tok)


def test_save_load_round_trip(tmp_path):
    tok = CharTokenizer.from_text("hello world\n")
    tok.save(tmp_path)
    again = CharTokenizer.load(tmp_path)
    assert again.chars == tok.chars


def test_corrupt_tokenizer_file_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TinygenError, match="corrupt"):
        CharTokenizer.load(tmp_path)
