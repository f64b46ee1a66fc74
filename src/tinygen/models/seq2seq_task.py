"""Moved to tinygen.recipes.seq2seq; this module keeps old imports working."""

from tinygen.recipes.seq2seq import (  # noqa: F401
    HELDOUT_FILE,
    Seq2SeqTask,
    Translator,
    evaluate_heldout,
    save_attention_map,
)

__all__ = ["HELDOUT_FILE", "Seq2SeqTask", "Translator", "evaluate_heldout", "save_attention_map"]
