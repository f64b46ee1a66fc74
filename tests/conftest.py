"""Shared fixtures: small text corpora and tiny GPT configs.

Hermetic: every corpus comes from the package itself (`tinygen.data.corpora`), never from
a file outside the repository, so a clean clone with nothing beside it passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def shakespeare_text() -> str:
    """The built-in Shakespeare corpus shipped in the package (about 1.5 MB)."""
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


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU makes two OpenMP threads
    spin against other processes (100x slower steps were measured); restore afterwards.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
