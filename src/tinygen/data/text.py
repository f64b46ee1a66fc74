"""Moved to tinygen.recipes.gpt; this module keeps old imports working."""

from tinygen.recipes.gpt import TextTask, encode_corpus  # noqa: F401

__all__ = ["TextTask", "encode_corpus"]
