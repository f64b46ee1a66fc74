"""Moved to tinygen.models.shapes_evaluator (the network) and tinygen.recipes.evaluator (its
training and accuracy); this module keeps old imports working."""

from tinygen.models.shapes_evaluator import EvaluatorConfig, ShapesEvaluator  # noqa: F401
from tinygen.recipes.evaluator import (  # noqa: F401
    EvaluatorTask,
    accuracy_under_noise,
    attribute_accuracy,
    augment,
    gaussian_blur,
)

__all__ = [
    "EvaluatorConfig",
    "EvaluatorTask",
    "ShapesEvaluator",
    "accuracy_under_noise",
    "attribute_accuracy",
    "augment",
    "gaussian_blur",
]
