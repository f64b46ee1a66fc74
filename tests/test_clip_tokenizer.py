"""The caption tokenizer: vocabulary from captions, specials, unknown words, save/load."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tinygen.data.caption_tokenizer import (
    EOT_ID,
    PAD_ID,
    SOT_ID,
    UNK_ID,
    CaptionTokenizer,
    load_caption_tokenizer,
    split_words,
)
from tinygen.errors import TinygenError

CAPTIONS = [
    "a large red circle on the left",
    "small blue square, top",
    "there is a green star in the centre",
]


def test_split_words_separates_punctuation_and_lowercases():
    assert split_words("Small blue square, top.") == ["small", "blue", "square", ",", "top", "."]


def test_vocabulary_is_specials_then_sorted_caption_words():
    tok = CaptionTokenizer.from_captions(CAPTIONS)
    assert tok.words[:4] == ["<pad>", "<sot>", "<eot>", "<unk>"]
    words = sorted({w for c in CAPTIONS for w in split_words(c)})
    assert tok.words[4:] == words
    assert tok.context_length == 8 + 2  # the longest caption has 8 words


def test_encode_round_trips_and_wraps_in_sot_eot():
    tok = CaptionTokenizer.from_captions(CAPTIONS)
    ids = tok.encode("a large red circle on the left")
    assert ids[0] == SOT_ID and ids[-1] == EOT_ID
    assert tok.decode(ids) == "a large red circle on the left"
    # colour and shape are separate tokens, so unseen combinations are expressible
    assert tok.decode(tok.encode("a blue circle")) == "a blue circle"


def test_encode_batch_pads_with_zero_after_eot():
    tok = CaptionTokenizer.from_captions(CAPTIONS)
    batch = tok.encode_batch(["red circle", "small blue square, top"])
    assert batch.dtype == torch.long and batch.shape == (2, tok.context_length)
    assert batch[0, :4].tolist() == [SOT_ID, tok.stoi["red"], tok.stoi["circle"], EOT_ID]
    assert (batch[0, 4:] == PAD_ID).all()


def test_unknown_words_become_unk_with_a_warning_not_an_error():
    tok = CaptionTokenizer.from_captions(CAPTIONS)
    with pytest.warns(UserWarning, match="'magenta'"):
        ids = tok.encode("a magenta circle")
    assert ids == [SOT_ID, tok.stoi["a"], UNK_ID, tok.stoi["circle"], EOT_ID]


def test_long_captions_are_cut_but_keep_eot():
    tok = CaptionTokenizer.from_captions(CAPTIONS, context_length=4)
    ids = tok.encode("a large red circle on the left")
    assert ids == [SOT_ID, tok.stoi["a"], tok.stoi["large"], EOT_ID]


def test_save_and_load_give_the_same_ids(tmp_path):
    tok = CaptionTokenizer.from_captions(CAPTIONS)
    tok.save(tmp_path)
    again = load_caption_tokenizer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(again.encode_batch(CAPTIONS), tok.encode_batch(CAPTIONS))


def test_empty_captions_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(TinygenError, match="no words"):
        CaptionTokenizer.from_captions(["", "  "])
    with pytest.raises(TinygenError, match="missing"):
        load_caption_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "word"}))
    with pytest.raises(TinygenError, match="corrupt"):
        load_caption_tokenizer(tmp_path)
