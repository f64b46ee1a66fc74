"""Validation loss of a trained GPT run, measured precisely: the mean next-character loss
over many random validation windows, with its standard error.

The trainer's periodic evaluation averages only `eval_iters` batches (20 for the `baby`
preset, as nanoGPT), which is noisy to about +-0.01; this script averages as many batches
as asked, on the run's own corpus split and tokenizer, so two runs (or two seeds) can be
compared within a few thousandths.

    python benchmarks/gpt_val_loss.py runs/baby-tinyshakespeare --batches 300
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from tinygen.data.corpora import load_corpus, split_train_val
from tinygen.data.tokenizers import CharTokenizer
from tinygen.models.runs import load_model
from tinygen.recipes.gpt import TextTask, encode_corpus


@torch.no_grad()
def val_loss(run: Path, batches: int, batch_size: int, checkpoint: str, seed: int) -> list[float]:
    """Per-batch mean losses of `batches` random validation batches of the run's corpus."""
    model, config = load_model(run, which=checkpoint, device="cpu", expect="gpt")
    model.eval()
    tokenizer = CharTokenizer.load(run)
    _, val_text = split_train_val(load_corpus(config["data"]["corpus"]))
    val_ids = encode_corpus(val_text, tokenizer)
    task = TextTask(model, val_ids, val_ids, model.config.block_size)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(batches):
        x, y = task.get_batch("val", batch_size, generator)
        _, loss = model(x, y)
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="GPT run directories")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", default="last", help="last | best")
    parser.add_argument("--seed", type=int, default=0, help="same windows for every run")
    args = parser.parse_args()
    for run in args.runs:
        losses = val_loss(run, args.batches, args.batch_size, args.checkpoint, args.seed)
        mean = statistics.fmean(losses)
        sem = statistics.stdev(losses) / len(losses) ** 0.5
        print(f"{run}: val loss {mean:.4f} +- {sem:.4f} ({args.batches} x {args.batch_size})")


if __name__ == "__main__":
    main()
