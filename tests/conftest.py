"""Shared fixtures: small text corpora and tiny GPT configs."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_TINYSHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"


def shakespeare_text() -> str:
    """The classic tinyshakespeare file when present, else the built-in corpus."""
    if SHARED_TINYSHAKESPEARE.is_file():
        return SHARED_TINYSHAKESPEARE.read_text()
    from tinygen.data.corpora import load_corpus

    return load_corpus("shakespeare")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200k-character Shakespeare file for short training runs."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(shakespeare_text()[:200_000])
    return path


@pytest.fixture(scope="session")
def shakespeare() -> str:
    return shakespeare_text()
