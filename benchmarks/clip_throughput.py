"""Training throughput of CLIP (image–text pairs per second), ViT vs ResNet image tower,
measured side by side in one process on the same batches.

Each configuration runs `--warmup` optimiser steps, then `--steps` timed steps of the
full training step (forward of both towers, clip_loss, backward, AdamW, temperature clamp);
the median step time is reported. Run under the shared CPU lock:

    flock /tmp/tinygen-cpu.lock python benchmarks/clip_throughput.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from tinygen.data.caption_tokenizer import CaptionTokenizer
from tinygen.models.clip import CLIP
from tinygen.recipes.clip import PRESETS, CLIPTask, shapes_pairs
from tinygen.train.optim import make_optimizer


def time_steps(task: CLIPTask, train_config, steps: int, warmup: int) -> list[float]:
    model = task.model
    optimizer = make_optimizer(model, train_config, "cpu")
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        batch = task.get_batch("train", train_config.batch_size, gen)
        loss = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_step(model)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shapes", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_config, train_config = PRESETS[args.preset].model, PRESETS[args.preset].train
    pairs = shapes_pairs(2048, split="train", seed=0, image_size=model_config.image_size)
    tokenizer = CaptionTokenizer.from_captions(pairs.captions)
    results = {}
    for tower in ("vit", "resnet"):
        config = dataclasses.replace(
            model_config,
            image_tower=tower,
            vocab_size=tokenizer.vocab_size,
            context_length=tokenizer.context_length,
        )
        torch.manual_seed(0)
        task = CLIPTask(CLIP(config), tokenizer, pairs, pairs)
        times = time_steps(task, train_config, args.steps, args.warmup)
        median = statistics.median(times)
        results[tower] = {
            "params_M": round(task.model.num_params() / 1e6, 3),
            "median_step_s": round(median, 4),
            "pairs_per_s": round(train_config.batch_size / median, 1),
        }
    results["resnet_over_vit"] = round(
        results["resnet"]["pairs_per_s"] / results["vit"]["pairs_per_s"], 2
    )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "batch_size": train_config.batch_size,
                "threads": torch.get_num_threads(),
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
