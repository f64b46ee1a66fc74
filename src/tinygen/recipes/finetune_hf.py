"""The "real deal": LoRA / QLoRA fine-tuning of any Hugging Face causal LM (LLaMA-2 is
the seed's example) with transformers + PEFT, driven by tinygen's own Trainer.

- lora: PEFT's `get_peft_model` on the float model.
- qlora on CUDA: the base loads in 4 bits through bitsandbytes, as the QLoRA paper does.
  transformers 5.x only accepts an explicit `BitsAndBytesConfig`; the old
  `from_pretrained(..., load_in_4bit=True)` is rejected, and a bare
  `BitsAndBytesConfig(load_in_4bit=True)` silently gives FP4 without double quantisation,
  so every NF4 field is spelled out below.
- qlora on CPU: the base's linear layers become tinygen's `Linear4bit` (NF4 + double
  quant, pure PyTorch) with tinygen's LoRA on top. bitsandbytes is deliberately not used
  on CPU: on CPUs with AVX512-BF16, after one eval-mode no-grad forward it repacks 4-bit
  weights for an inference-only kernel and LoRA then silently receives no gradients.

Either way the adapter is saved in PEFT's format, loadable with
`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(NAME), OUT)`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.io import BEST_FILE, load_weights, write_json
from tinygen.recipes.common import fit
from tinygen.recipes.gpt import TextTask
from tinygen.train.config import TrainConfig

# A short adapter run: a few hundred small batches at lr 2e-4 (QLoRA's for 7B and 13B).
DEFAULT_TRAIN = TrainConfig(
    max_iters=200,
    batch_size=4,
    learning_rate=2e-4,
    warmup_iters=10,
    eval_interval=50,
    eval_iters=10,
)


class HFTextTask(TextTask):
    """TextTask for a Hugging Face causal LM: the model returns `.logits`, not (logits, loss)."""

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits = model(input_ids=x).logits  # (B, T, vocab)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


@dataclass
class HFFinetuneResult:
    method: str
    val_loss_before: float
    val_loss_after: float
    trainable: int
    total: int
    peak_memory_bytes: int
    out_dir: str

    def summary(self) -> str:
        return (
            f"{self.method}: val loss {self.val_loss_before:.4f} -> {self.val_loss_after:.4f};"
            f" trainable {self.trainable:,} of {self.total:,} "
            f"({100 * self.trainable / self.total:.3f}%); peak memory "
            f"{self.peak_memory_bytes / 2**20:.0f} MiB; adapter in {self.out_dir}"
        )


def _import_hf():
    try:
        import peft
        import transformers
    except ImportError as e:
        raise TinygenError(
            "the Hugging Face path needs transformers and peft: pip install 'tinygen[hf]'"
        ) from e
    return transformers, peft


def load_hf_model(name: str, method: str, device: torch.device):
    """Load the causal LM and its tokenizer; on CUDA qlora, in NF4 through bitsandbytes."""
    transformers, _ = _import_hf()
    kwargs: dict = {}
    if method == "qlora" and device.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise TinygenError(
                "QLoRA on CUDA loads the base through bitsandbytes: pip install bitsandbytes"
            ) from e
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": device.index or 0}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    except OSError as e:
        raise TinygenError(
            f"cannot load Hugging Face model {name!r} ({e}); pass a local "
            "directory or a hub name you have access to"
        ) from e
    return model, tokenizer


def attach_adapter(
    model: nn.Module,
    method: str,
    device: torch.device,
    targets,
    r: int,
    alpha: float,
    dropout: float,
    seed: int,
) -> nn.Module:
    """PEFT LoRA (lora, and qlora on CUDA) or tinygen's NF4 + LoRA (qlora on CPU)."""
    _, peft = _import_hf()
    if method == "qlora" and device.type != "cuda":
        from tinygen.finetune.lora import apply_lora
        from tinygen.finetune.nf4 import quantize_model

        if not quantize_model(model, skip=["lm_head"]):
            raise TinygenError(
                "the model has no nn.Linear layers to quantise; CPU QLoRA "
                "supports models built from nn.Linear (LLaMA, Mistral, Qwen...)"
            )
        apply_lora(model, targets, r=r, alpha=alpha, dropout=dropout, seed=seed)
        return model
    if method == "qlora":
        model = peft.prepare_model_for_kbit_training(model)
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, config)


def finetune_hf(
    model_name: str,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    method: str = "lora",
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    targets: str | list[str] = "all-linear",
    block_size: int = 256,
    train: TrainConfig | None = None,
    eval_batches: int = 20,
    progress: bool = True,
) -> HFFinetuneResult:
    """Fine-tune `model_name` (hub name or local directory) on the text file `data_path`."""
    from tinygen.data.corpora import read_text_file, split_train_val
    from tinygen.finetune.lora import TrainableView, count_parameters, save_adapter
    from tinygen.finetune.memory import peak_memory_bytes
    from tinygen.recipes.finetune_gpt import fixed_val_loss
    from tinygen.train.device import resolve_device

    if method not in ("lora", "qlora"):
        raise TinygenError(f"unknown --method {method!r} for hf; choose lora or qlora")
    train = train or DEFAULT_TRAIN
    device = resolve_device(train.device)
    out_dir = Path(out_dir)
    model, tokenizer = load_hf_model(model_name, method, device)
    if method == "lora" or device.type != "cuda":
        model = model.to(device)
    train_text, val_text = split_train_val(read_text_file(data_path))
    ids = {
        s: torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=torch.long)
        for s, t in (("train", train_text), ("val", val_text))
    }
    eval_task = HFTextTask(model, ids["train"], ids["val"], block_size)
    before = fixed_val_loss(model, eval_task, eval_batches, train.batch_size)
    model = attach_adapter(model, method, device, targets, r, alpha, dropout, train.seed)
    trainable, total = count_parameters(model)
    view = TrainableView(model)
    record = {
        "model_type": "hf-lora-adapter",
        "hf_model": model_name,
        "finetune": {
            "method": method,
            "r": r,
            "alpha": alpha,
            "dropout": dropout,
            "targets": targets,
            "block_size": block_size,
            "data": str(data_path),
        },
    }

    def announce(out: Path) -> None:  # counts that see NF4 weights (buffers, not parameters)
        if progress:
            print(
                f"{method} on {model_name}: {trainable:,} of {total:,} parameters trainable "
                f"({100 * trainable / total:.3f}%), {len(ids['train']):,} training tokens",
                file=sys.stderr,
            )

    result = fit(
        HFTextTask(view, ids["train"], ids["val"], block_size),
        train,
        out_dir,
        record,
        progress=progress,
        announce=False,
        on_start=announce,
    )
    if result.interrupted:
        raise KeyboardInterrupt
    load_weights(view, out_dir / BEST_FILE)
    after = fixed_val_loss(
        model,
        HFTextTask(model, ids["train"], ids["val"], block_size),
        eval_batches,
        train.batch_size,
    )
    if hasattr(model, "save_pretrained") and hasattr(model, "peft_config"):
        model.save_pretrained(out_dir)
    else:
        save_adapter(model, out_dir, base_model_name_or_path=model_name)
    outcome = HFFinetuneResult(
        method, before, after, trainable, total, peak_memory_bytes(device), str(out_dir)
    )
    write_json(out_dir / "finetune_result.json", dataclasses.asdict(outcome))
    return outcome
