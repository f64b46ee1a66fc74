"""Generation speed with and without the KV cache (CPU, batch 1).

    python benchmarks/gpt_generate_speed.py [--tokens 1000]

Measures, for the 6/6/384 model at block 256 (and the baby 4/4/128 model at block 64):
- cached: `GPT.generate(use_cache=True)`;
- no cache: `GPT.generate(use_cache=False)` -- recomputes the same context windows from
  scratch each step, so its greedy output must be identical to the cached one;
- nanoGPT-style: crop the context to the last block_size tokens every step and run the
  full forward (how nanoGPT generates); a different window policy, timed for reference.
Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch

from tinygen.models.gpt import GPT, GPTConfig


@torch.no_grad()
def nanogpt_style(model: GPT, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
    block = model.config.block_size
    for _ in range(new_tokens):
        logits, _ = model(idx[:, -block:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(config: GPTConfig, new_tokens: int) -> None:
    torch.manual_seed(0)
    model = GPT(config).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    model.generate(prompt, 20)  # warm up
    t_cache, cached = timed(lambda: model.generate(prompt, new_tokens, temperature=0))
    t_plain, plain = timed(
        lambda: model.generate(prompt, new_tokens, temperature=0, use_cache=False)
    )
    t_nano, _ = timed(lambda: nanogpt_style(model, prompt, new_tokens))
    name = f"{config.n_layer}/{config.n_head}/{config.n_embd} block {config.block_size}"
    print(f"{name}: {new_tokens} new tokens, batch 1, greedy")
    print(f"  KV cache       {new_tokens / t_cache:8.1f} tokens/s")
    print(
        f"  no cache       {new_tokens / t_plain:8.1f} tokens/s  "
        f"(cache speed-up {t_plain / t_cache:.1f}x, identical output: "
        f"{torch.equal(cached, plain)})"
    )
    print(
        f"  nanoGPT-style  {new_tokens / t_nano:8.1f} tokens/s  "
        f"(cache speed-up {t_nano / t_cache:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench(GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384), args.tokens)
    bench(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128), args.tokens)


if __name__ == "__main__":
    main()
