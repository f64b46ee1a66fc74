"""Moved to tinygen.recipes.clip; this module keeps old imports working."""

from tinygen.recipes.clip import (  # noqa: F401
    CLIPTask,
    PairSet,
    evaluate_shapes,
    shapes_pairs,
    shapes_zero_shot_templates,
)

__all__ = ["CLIPTask", "PairSet", "evaluate_shapes", "shapes_pairs", "shapes_zero_shot_templates"]
