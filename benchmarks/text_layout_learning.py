"""Can GLIDE's text encoder learn which object each colour belongs to? Text alone, no U-Net.

Two-object prompts fail on binding, and the probes of `text_binding_probe.py` show why: no
trained run's text features say which place a colour goes to. This trains the text encoder
of the shapes recipe (width 128, 2 layers, mean pooling) with only the caption -> layout
loss (`models/caption_layout.py`) on two-object captions, and reports, on 1,000 validation
captions, how often the layout head names the right colour at each occupied place (a
bag-of-words reading that knows the two colours but not where they go scores about 55 %).
Run once per `--position-std`, the scale of the learned position embedding at init: 0.01
(every run before the fix) against 1.0 (the token embedding's scale, now the default).

    python benchmarks/text_layout_learning.py --position-std 0.01
    python benchmarks/text_layout_learning.py --position-std 1.0
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tinygen.data.shapes import IGNORE
from tinygen.models.caption_layout import layout_loss
from tinygen.models.conditioning import TextConditioner, TextConditionerConfig
from tinygen.recipes.glide import CaptionData, captioned_batch, world_tokenizer


def colour_per_place(text: TextConditioner, tokens: torch.Tensor, labels: dict) -> float:
    with torch.no_grad():
        predicted = text.layout_head(text(tokens)[0])["color"].argmax(-1)
    named = labels["color"] != IGNORE
    return (predicted[named] == labels["color"][named]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--position-std", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokenizer = world_tokenizer()
    data = CaptionData(image_size=16, pair_fraction=1.0, partial_prob=0.0)
    pool = captioned_batch(data, "train", 20000, seed=1)  # captions of 20,000 training scenes
    pool_tokens = tokenizer.encode_batch(pool.captions)
    val = captioned_batch(data, "val", 1000, seed=999)
    val_tokens = tokenizer.encode_batch(val.captions)
    torch.manual_seed(args.seed)
    config = TextConditionerConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=tokenizer.context_length,
        width=128,
        layers=2,
        heads=4,
        pooling="mean",
        position_std=args.position_std,
        layout_weight=1.0,
    )
    text = TextConditioner(config)
    opt = torch.optim.AdamW(text.parameters(), args.learning_rate, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    curve, start = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % 250 == 0:
            acc = colour_per_place(text, val_tokens, val.labels)
            curve.append({"step": step, "colour_per_place": acc})
            print(f"step {step}: colour right at its place {100 * acc:.1f} %", flush=True)
        if step == args.steps:
            break
        idx = torch.randint(len(pool_tokens), (args.batch_size,), generator=gen)
        labels = {k: v[idx] for k, v in pool.labels.items()}
        logits = text.layout_head(text(pool_tokens[idx])[0])
        loss = layout_loss(logits, labels, labels["known"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    print(json.dumps({"position_std": args.position_std, "seconds": seconds, "curve": curve}))


if __name__ == "__main__":
    main()
