"""CPU speed of our GPT against transformers' GPT2LMHeadModel at the same GPT-2 config and
the same (random) weights, side by side in one process, alternating the two each repeat.

- batch 1 with the KV cache: greedy generation of `--new-tokens` tokens after a 16-token
  prompt, through each library's own generate (ours: `GPT.generate(temperature=0)`;
  transformers: `generate(do_sample=False)`); tokens/s counts the new tokens.
- batch 8 without a cache: one forward of (8, `--seq`) tokens; tokens/s counts 8 x seq.

Our GPT gets transformers' weights through `GPT.from_pretrained` (a `save_pretrained` copy in
a temporary directory; nothing is downloaded), and the two generations must agree token for
token. Prints a markdown table (median of `--repeats`). Run it with the thread count you
want to compare at, e.g.

    OMP_NUM_THREADS=1 python benchmarks/pretrained_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    import transformers

    from tinygen.models.gpt import GPT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 small has 12")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64, help="tokens per row, batch 8")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers)  # GPT-2 small otherwise
    reference = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        ours = GPT.from_pretrained(directory)
    prompt = torch.randint(0, config.vocab_size, (1, 16))
    batch = torch.randint(0, config.vocab_size, (8, args.seq))

    def ours_generate():
        return ours.generate(prompt, args.new_tokens, temperature=0)

    def their_generate():
        return reference.generate(
            prompt,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    with torch.inference_mode():
        same = ours_generate().tolist() == their_generate().tolist()  # also the warm-up
        ours(batch[:1])
        reference(batch[:1])
        times = {key: [] for key in ("gen-ours", "gen-theirs", "fwd-ours", "fwd-theirs")}
        for _ in range(args.repeats):
            times["gen-ours"].append(timed(ours_generate))
            times["gen-theirs"].append(timed(their_generate))
            times["fwd-ours"].append(timed(lambda: ours(batch)))
            times["fwd-theirs"].append(timed(lambda: reference(batch)))
    median = {key: statistics.median(values) for key, values in times.items()}
    rows = [
        ("batch 1, KV cache, generate", args.new_tokens, "gen"),
        (f"batch 8 x {args.seq}, no cache, forward", 8 * args.seq, "fwd"),
    ]
    print(
        f"GPT-2 config, {args.layers} layers, n_embd {config.n_embd}, vocab "
        f"{config.vocab_size}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {torch.get_num_threads()} thread(s); median of "
        f"{args.repeats}; greedy tokens identical: {same}\n"
    )
    print("| measurement | tinygen tokens/s | transformers tokens/s | tinygen / transformers |")
    print("|---|---:|---:|---:|")
    for label, tokens, key in rows:
        mine, theirs = tokens / median[f"{key}-ours"], tokens / median[f"{key}-theirs"]
        print(f"| {label} | {mine:,.1f} | {theirs:,.1f} | {mine / theirs:.2f}x |")


if __name__ == "__main__":
    main()
