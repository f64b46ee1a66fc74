"""Moved to tinygen.models.runs; this module keeps old imports working."""

from tinygen.models.runs import load_model, load_run_config  # noqa: F401

__all__ = ["load_model", "load_run_config"]
