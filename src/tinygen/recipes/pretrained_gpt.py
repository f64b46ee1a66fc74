"""OpenAI's GPT-2 (any transformers GPT2LMHeadModel checkpoint) in our GPT: its tokenizer,
streaming text from it, and writing a fine-tuned one back in GPT-2's own format.

The tokenizer is GPT-2's byte-level BPE, read by transformers from the checkpoint's own
files (vocab.json + merges.txt or tokenizer.json); nothing fetches a vocabulary by itself.
A BPE token can end in the middle of a UTF-8 character, so streaming decodes the whole
continuation each step and prints only what has become whole text (as transformers'
TextStreamer holds text back), never a replacement character the next token would fix.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor

from tinygen.errors import TinygenError
from tinygen.models.gpt import GPT

EXAMPLE = "gpt2"
HF_PREFIX = "hf:"  # `--base hf:gpt2` in `tinygen finetune gpt`


class HFTokenizer:
    """A transformers tokenizer behind our tokenizer's methods: encode, decode, vocab_size."""

    kind = "hf"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        # the fast tokenizer directly: no special tokens, no warning about long texts
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_tensor(self, text: str) -> Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: list[int] | Tensor) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids)

    def save(self, directory: str | Path) -> None:
        self.tokenizer.save_pretrained(str(directory))


def load_gpt2_tokenizer(directory: str | Path) -> HFTokenizer:
    """The checkpoint's own tokenizer files, through transformers' AutoTokenizer."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise TinygenError(
            "GPT-2's tokenizer comes from transformers: pip install 'tinygen[hf]'"
        ) from e
    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(directory)))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise TinygenError(
            f"{directory} has no usable tokenizer files (tokenizer.json, or vocab.json and "
            f"merges.txt): {' '.join(str(e).split())[:200]}; download the whole checkpoint"
        ) from e


def base_directory(name_or_dir: str | Path) -> Path:
    from tinygen.models.pretrained import resolve_pretrained

    return resolve_pretrained(name_or_dir, example=EXAMPLE)


def load_pretrained_gpt(
    name_or_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    adapter: str | Path | None = None,
    merge: bool = False,
) -> tuple[GPT, HFTokenizer]:
    """GPT-2 in our GPT (with a LoRA adapter of `tinygen finetune gpt --base hf:...`,
    merged or not), in eval mode on `device`, with its tokenizer."""
    directory = base_directory(name_or_dir)
    model = GPT.from_pretrained(directory)
    tokenizer = load_gpt2_tokenizer(directory)
    if adapter is not None:
        from tinygen.finetune.lora import load_adapter, merge_lora

        load_adapter(model, adapter)
        if merge:
            merge_lora(model)
    return model.to(device).eval(), tokenizer


def stream_text(
    model: GPT,
    tokenizer: HFTokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 200,
    num_samples: int = 1,
    seed: int = 1337,
    out: TextIO | None = None,
    **sampling,
) -> list[str]:
    """Write `num_samples` continuations of `prompt` to `out` (default stdout) as they are
    generated, separated by a dashed line; returns the continuations. `sampling`:
    temperature, top_k, top_p, use_cache (GPT.stream's keywords)."""
    ids = tokenizer.encode_tensor(prompt)
    if len(ids) == 0:
        raise TinygenError("--prompt is empty; give at least one character (default is a newline)")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = out or sys.stdout
    texts = []
    for i in range(num_samples):
        if i:
            out.write("\n---------------\n")
        out.write(prompt)
        new: list[int] = []
        shown = ""
        for token in model.stream(
            ids[None].to(device), max_new_tokens, generator=generator, **sampling
        ):
            new.append(int(token[0, 0]))
            text = tokenizer.decode(new)
            if not text.endswith("\ufffd"):  # a character still incomplete waits a token
                out.write(text[len(shown) :])
                out.flush()
                shown = text
        out.write(tokenizer.decode(new)[len(shown) :] + "\n")
        texts.append(tokenizer.decode(new))
    return texts


def save_as_gpt2(model: GPT, base: str | Path, tokenizer: HFTokenizer, out: str | Path) -> Path:
    """Write `model` as a transformers GPT-2 checkpoint in `out` (the base's config.json,
    model.safetensors in GPT2LMHeadModel's names, the tokenizer): `--hf OUT` reads it, and
    so does `transformers.GPT2LMHeadModel.from_pretrained(OUT)`."""
    import shutil

    from safetensors.torch import save_file

    from tinygen.io import atomic_write
    from tinygen.models.convert.gpt2 import to_gpt2_state_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base_directory(base) / "config.json", out / "config.json")
    tensors = to_gpt2_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_write(out / "model.safetensors", lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
    tokenizer.save(out)
    return out
