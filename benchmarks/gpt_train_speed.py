"""Training throughput of the `baby` preset on CPU (nanoGPT's CPU config).

Runs the real trainer (the same loop `tinygen train gpt` runs) on tinyshakespeare with
one log line per step, and reports the median ms/iter and tokens/s. Median, not mean:
shared machines have bursts of noise.

    python benchmarks/gpt_train_speed.py --iters 300 [--compile]

Reference (nanoGPT commit 3adf61e1, same config, this machine kind, quiet):
43.3 ms/iter = 17.7k tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import torch

from tinygen.data.corpora import load_corpus, split_train_val
from tinygen.data.tokenizers import CharTokenizer
from tinygen.models.gpt import GPT
from tinygen.recipes.common import fit
from tinygen.recipes.gpt import PRESETS, TextTask, encode_corpus

NANOGPT_MS_PER_ITER = 43.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="steps excluded from the median")
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    model_config, train_config = PRESETS["baby"].model, PRESETS["baby"].train
    text = load_corpus(args.data)
    tokenizer = CharTokenizer.from_text(text)
    train_text, val_text = split_train_val(text)
    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    train_config = dataclasses.replace(
        train_config,
        max_iters=args.iters,
        log_interval=1,
        eval_interval=10**9,
        eval_iters=1,
        compile=args.compile,
        device="cpu",
    )
    torch.manual_seed(0)
    model = GPT(model_config)
    task = TextTask(
        model,
        encode_corpus(train_text, tokenizer),
        encode_corpus(val_text, tokenizer),
        model_config.block_size,
    )
    with tempfile.TemporaryDirectory() as tmp:
        fit(task, train_config, tmp, {"model_type": "gpt"}, progress=False, announce=False)
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][args.warmup :]
    tokens_per_iter = train_config.batch_size * model_config.block_size
    median_rate = statistics.median(rates)
    ms = 1000 * tokens_per_iter / median_rate
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, compile {args.compile}")
    print(
        f"baby preset: median {ms:.1f} ms/iter = {median_rate:,.0f} tokens/s over "
        f"{len(rates)} steps"
    )
    print(f"vs nanoGPT 43.3 ms/iter: {NANOGPT_MS_PER_ITER / ms:.2f}x")


if __name__ == "__main__":
    main()
