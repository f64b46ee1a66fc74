"""Model types a run directory can name in its config.json, so that loading a run needs
no code from the run: `model_type` -> (module, model class, config class)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from tinygen.errors import TinygenError
from tinygen.fields import check_fields, check_types

MODEL_TYPES: dict[str, tuple[str, str, str]] = {
    "gpt": ("tinygen.models.gpt", "GPT", "GPTConfig"),
    "diffusion": ("tinygen.models.diffusion", "DiffusionModel", "DiffusionConfig"),
    "glide": ("tinygen.models.diffusion", "DiffusionModel", "DiffusionConfig"),
    "noisy-classifier": (
        "tinygen.models.noisy_classifier",
        "NoisyClassifier",
        "NoisyClassifierConfig",
    ),
    "shapes-evaluator": ("tinygen.models.shapes_evaluator", "ShapesEvaluator", "EvaluatorConfig"),
    "seq2seq": ("tinygen.models.seq2seq", "Seq2SeqTransformer", "Seq2SeqConfig"),
    "clip": ("tinygen.models.clip", "CLIP", "CLIPConfig"),
    "unclip-prior": ("tinygen.models.prior", "DiffusionPrior", "PriorConfig"),
    "unclip-decoder": ("tinygen.models.diffusion", "DiffusionModel", "DiffusionConfig"),
    "latent-diffusion": (
        "tinygen.models.latent_diffusion",
        "LatentDiffusionModel",
        "LatentDiffusionConfig",
    ),
    "autoencoder": ("tinygen.models.autoencoder", "Autoencoder", "AutoencoderConfig"),
}


def build_model(model_type: str, model_config: dict[str, Any], *, run: Any = None) -> Any:
    """Instantiate the model named by `model_type` from its saved config dict. The dict is
    held to the config dataclass first (types, then the fields' ranges), so a garbled
    config.json is one error naming the field and the run (`run`: its directory)."""
    if model_type in ("lora-adapter", "hf-lora-adapter"):
        raise TinygenError(
            "this run is a LoRA adapter, which holds no whole model; pass its base model's "
            "run (with --run, --base or --model) and the adapter with --adapter"
        )
    if model_type not in MODEL_TYPES:
        raise TinygenError(
            f"unknown model_type {model_type!r} in config.json; known: {sorted(MODEL_TYPES)}"
        )
    module_name, model_cls, config_cls = MODEL_TYPES[model_type]
    module = importlib.import_module(module_name)
    config_type = getattr(module, config_cls)
    where = f"{run}/config.json: model" if run is not None else "config.json: model"
    check_types(config_type, model_config, where=where)
    known = {f.name for f in dataclasses.fields(config_type)}
    config = config_type(**{k: v for k, v in model_config.items() if k in known})
    check_fields(config, where=where)
    return getattr(module, model_cls)(config)
