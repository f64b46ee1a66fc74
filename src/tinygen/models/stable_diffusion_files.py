"""What a diffusers Stable Diffusion folder holds, read and checked before any model is built.

A pipeline folder (diffusers' `save_pretrained`, or a Hub snapshot) has `model_index.json`
and one subfolder per component:

    unet/          config.json (UNet2DConditionModel), diffusion_pytorch_model.safetensors
    vae/           config.json (AutoencoderKL),        diffusion_pytorch_model.safetensors
    text_encoder/  config.json (CLIPTextModel),         model.safetensors
    tokenizer/     vocab.json, merges.txt, ...          (transformers' CLIPTokenizer)
    scheduler/     scheduler_config.json

`open_pipeline_folder(name_or_dir)` never downloads for a path; only a Hub name
("runwayml/stable-diffusion-v1-5") is fetched, and then only the files above (no safety
checker, no full-precision EMA copies). A folder missing a component, a component of the
wrong kind, or a folder of another kind altogether is one `TinygenError` that says which.
Weights load as safetensors, or as PyTorch bins with `weights_only=True` (tensors only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from tinygen.errors import TinygenError
from tinygen.io import read_json
from tinygen.models.pretrained import (
    _read_weight_file,
    looks_like_path,
    read_state_dict,
    resolve_pretrained,
)

EXAMPLE = "runwayml/stable-diffusion-v1-5"
COMPONENTS = {  # subfolder -> (its config file, the class diffusers/transformers wrote there)
    "unet": ("config.json", "UNet2DConditionModel"),
    "vae": ("config.json", "AutoencoderKL"),
    "text_encoder": ("config.json", "CLIPTextModel"),
    "tokenizer": ("tokenizer_config.json", None),
    "scheduler": ("scheduler_config.json", None),
}
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
HUB_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@dataclass
class PipelineFolder:
    """A checked diffusers Stable Diffusion folder: its configs read, weights on demand."""

    directory: Path
    unet_config: dict
    vae_config: dict
    text_encoder_config: dict
    scheduler_config: dict

    def weights(self, component: str) -> dict[str, Tensor]:
        """The tensors of unet/, vae/ (diffusers' file names) or text_encoder/."""
        folder = self.directory / component
        if component == "text_encoder":
            return read_state_dict(folder)
        for name in DIFFUSERS_WEIGHTS:
            if (folder / name).is_file():
                return _read_weight_file(folder / name)
        raise TinygenError(
            f"{folder} has no weights ({', '.join(DIFFUSERS_WEIGHTS)}); the download is "
            "incomplete, fetch the folder again"
        )

    def tokenizer(self):
        """transformers' CLIPTokenizer from tokenizer/ (no download)."""
        try:
            from transformers import CLIPTokenizer
        except ImportError as e:
            raise TinygenError(
                "Stable Diffusion's tokenizer needs transformers: pip install 'tinygen[hf]'"
            ) from e
        try:
            return CLIPTokenizer.from_pretrained(str(self.directory / "tokenizer"))
        except Exception as e:  # a corrupt or foreign tokenizer folder
            raise TinygenError(
                f"cannot read the CLIP tokenizer in {self.directory / 'tokenizer'} "
                f"({type(e).__name__}: {e}); the folder is incomplete, fetch it again"
            ) from e


def _read_json(path: Path) -> dict:
    value = read_json(path)
    if not isinstance(value, dict):
        raise TinygenError(f"{path} is not a JSON object; it is corrupt")
    return value


def _component_config(directory: Path, component: str) -> dict:
    filename, kind = COMPONENTS[component]
    path = directory / component / filename
    if not (directory / component).is_dir():
        raise TinygenError(
            f"{directory} has no {component}/ folder, which a Stable Diffusion pipeline "
            f"needs (unet/, vae/, text_encoder/, tokenizer/, scheduler/); pass a complete "
            f"diffusers folder such as a download of {EXAMPLE}"
        )
    if not path.is_file():
        raise TinygenError(f"{directory / component} has no {filename}; the folder is incomplete")
    config = _read_json(path)
    found = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if kind is not None and found != kind:
        raise TinygenError(
            f"{directory / component} holds a {found or 'untyped'} model, not the {kind} of "
            f"a Stable Diffusion pipeline; pass a Stable Diffusion v1.x folder such as {EXAMPLE}"
        )
    return config


def open_pipeline_folder(name_or_dir: str | Path) -> PipelineFolder:
    """Find (a path) or fetch (a Hub name) a Stable Diffusion folder and read its configs."""
    name = str(name_or_dir)
    path = Path(name).expanduser()
    if path.is_dir() or path.exists() or isinstance(name_or_dir, Path) or looks_like_path(name):
        directory = resolve_pretrained(name_or_dir, example=EXAMPLE)  # never downloads a path
    else:
        directory = _download(name)
    if not (directory / "model_index.json").is_file():
        single = (directory / "config.json").is_file()
        kind = " (it has a config.json: a single model, not a pipeline)" if single else ""
        raise TinygenError(
            f"{directory} is no diffusers pipeline folder: it has no model_index.json{kind}; "
            f"pass a Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, "
            f"scheduler/) such as a download of {EXAMPLE}"
        )
    configs = {c: _component_config(directory, c) for c in COMPONENTS}
    return PipelineFolder(
        directory=directory,
        unet_config=configs["unet"],
        vae_config=configs["vae"],
        text_encoder_config=configs["text_encoder"],
        scheduler_config=configs["scheduler"],
    )


def _download(name: str) -> Path:
    """The files of Hub pipeline `name` that we read, or how to work offline."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise TinygenError(
            f"{name!r} is not a local directory, and downloading it needs huggingface_hub: "
            "pip install 'tinygen[hf]', or pass a local Stable Diffusion folder"
        ) from e
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated, bad name: one message
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise TinygenError(
            f"cannot get {name!r}: it is no local directory, and downloading it from the "
            f"Hugging Face Hub failed ({reason}); without network, copy the pipeline here "
            f"first (`huggingface-cli download {name} --local-dir DIR` on a machine with "
            "network) and pass that directory instead of the name"
        ) from e
