"""CLI commands of the clip family (filled in by its issue)."""

from __future__ import annotations


def register(commands) -> None:
    """Add this family's subcommands to `commands` (see tinygen.cli.main.Commands)."""
