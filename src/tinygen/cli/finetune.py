"""CLI commands of the finetune family (filled in by its issue)."""

from __future__ import annotations


def register(commands) -> None:
    """Add this family's subcommands to `commands` (see tinygen.cli.main.Commands)."""
