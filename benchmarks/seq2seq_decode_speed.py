"""Decoding throughput of the encoder-decoder Transformer with and without the KV cache.

Batched greedy and beam-4 decoding of held-out sources, cached (decoder self-attention
KVCache + cross-attention StaticKV) vs the uncached twin that re-runs the decoder over the
whole prefix every step. The two run alternately in one process, `--repeats` times each;
the script prints the median sequences/s and the ratio, and checks that both produced the
same outputs.

    python benchmarks/seq2seq_decode_speed.py --run runs/seq2seq-numbers
    python benchmarks/seq2seq_decode_speed.py            # an untrained model, fixed length
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tinygen.data.translation import TaskSpec, TranslationData
from tinygen.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from tinygen.recipes.seq2seq import Translator


def load(args: argparse.Namespace) -> tuple[Translator, list[str]]:
    if args.run:
        translator = Translator.from_run(args.run)
        from tinygen.models.runs import load_run_config

        spec = TaskSpec(**load_run_config(args.run)["task"])
    else:  # untrained: decodes to max_tgt_len, the worst case for the uncached path
        spec = TaskSpec(n_heldout=args.sequences)
        data = TranslationData(spec)
        config = Seq2SeqConfig(
            src_vocab_size=len(data.src_vocab),
            tgt_vocab_size=len(data.tgt_vocab),
            dropout=0.0,
            max_tgt_len=args.max_tgt_len,
        )
        torch.manual_seed(0)
        translator = Translator(Seq2SeqTransformer(config).eval(), data.src_vocab, data.tgt_vocab)
    data = TranslationData(spec, (translator.src_vocab, translator.tgt_vocab))
    return translator, [s for s, _ in data.test_pairs[: args.sequences]]


def time_once(translator: Translator, texts: list[str], beam: int, cache: bool) -> tuple:
    start = time.perf_counter()
    out = translator.translate(texts, beam_size=beam, batch_size=len(texts), use_cache=cache)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a trained seq2seq run directory")
    parser.add_argument("--sequences", type=int, default=500, help="batch of held-out sources")
    parser.add_argument("--beams", default="1,4", help="beam sizes to time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tgt-len", type=int, default=24, help="untrained model only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    translator, texts = load(args)
    results = []
    for beam in (int(b) for b in args.beams.split(",")):
        times = {True: [], False: []}
        outputs = {}
        time_once(translator, texts[:32], beam, True)  # warm-up
        for _ in range(args.repeats):
            for cache in (True, False):  # alternate so drifts in machine load hit both
                seconds, outputs[cache] = time_once(translator, texts, beam, cache)
                times[cache].append(seconds)
        cached, uncached = statistics.median(times[True]), statistics.median(times[False])
        row = {
            "beam": beam,
            "sequences": len(texts),
            "mean_output_words": sum(len(o.split()) for o in outputs[True]) / len(texts),
            "cached_seq_per_s": len(texts) / cached,
            "uncached_seq_per_s": len(texts) / uncached,
            "speedup": uncached / cached,
            "same_outputs": outputs[True] == outputs[False],
        }
        results.append(row)
        print(json.dumps(row))
    print(
        json.dumps(
            {
                "run": args.run,
                "threads": args.threads,
                "repeats": args.repeats,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
