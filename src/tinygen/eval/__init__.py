"""Metrics: prompt fidelity and feature distance with the shapes evaluator (fidelity.py);
other metrics live in their own modules of this package."""

from tinygen.eval.fidelity import (
    feature_distance,
    frechet_distance,
    install_evaluator,
    load_evaluator,
    prompt_fidelity,
)

__all__ = [
    "feature_distance",
    "frechet_distance",
    "install_evaluator",
    "load_evaluator",
    "prompt_fidelity",
]
