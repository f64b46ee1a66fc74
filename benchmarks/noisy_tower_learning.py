"""How fast does an image tower learn to read (colour, shape) from noisy images x_t?

The noised CLIP stalls near 60 % at t = 500 of the cosine schedule while a matched filter
gets 92 % (`noisy_shape_bounds.py`). This isolates the image tower: the ViT of the shapes
CLIP preset, warm-started from a clean CLIP run as `train clip --noised --init-from` does
(its timestep layer and any stem columns at zero), with a linear head over the 48
(colour, shape) pairs, trained with cross-entropy on x_t at uniform t -- a quicker stand-in
for the contrastive loss, the same for every arm. Arms differ by `--stem-channels`: 0 is
the tower of `runs/clip-noised-ft`; > 0 adds the full-resolution conv stem whose features
join the pixels (`VisionTransformer(stem_channels=...)`). Accuracy on 1,000 `val` images
(the tuning split; the noised CLIP's figures are reported on `test`) at four noise levels,
the same noise for every arm.

    python benchmarks/noisy_tower_learning.py --init runs/clip --stem-channels 0
    python benchmarks/noisy_tower_learning.py --init runs/clip --stem-channels 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from tinygen.data.shapes import combo_labels, generate_shapes
from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.models.clip import CLIP, CLIPConfig
from tinygen.models.runs import load_run_config
from tinygen.recipes.clip_noised import noised_config, warm_start

LEVELS = (0, 250, 500, 750)


def build_tower(init: str, stem_channels: int, stem_kernel: int) -> nn.Module:
    """The noised ViT of `init`'s config, warm-started from that clean run."""
    model = CLIPConfig(**load_run_config(init)["model"])
    model = dataclasses.replace(
        model, vision_stem_channels=stem_channels, vision_stem_kernel=stem_kernel
    )
    config = noised_config(model, 1000)
    _, load = warm_start(init, config)
    clip = CLIP(config)
    load(clip)
    return clip.visual


@torch.no_grad()
def accuracy(tower, head, schedule, images, labels, noise) -> dict[int, float]:
    tower.eval()
    out = {}
    for level in LEVELS:
        t = torch.full((len(images),), level)
        x_t = schedule.add_noise(images, noise, t)
        logits = torch.cat([head(tower(a, b)) for a, b in zip(x_t.split(250), t.split(250))])
        out[level] = (logits.argmax(-1) == labels).float().mean().item()
    tower.train()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="a clean CLIP run (the shapes preset)")
    parser.add_argument("--stem-channels", type=int, default=0)
    parser.add_argument("--stem-kernel", type=int, default=9)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    schedule = NoiseSchedule("cosine", 1000)
    train = generate_shapes(20000, split="train", seed=0, image_size=32)
    train_labels = combo_labels(train.labels["color"], train.labels["shape"])
    val = generate_shapes(1000, split="val", seed=5, image_size=32)
    val_labels = combo_labels(val.labels["color"], val.labels["shape"])
    val_noise = torch.randn(val.images.shape, generator=torch.Generator().manual_seed(3))

    tower = build_tower(args.init, args.stem_channels, args.stem_kernel)
    head = nn.Linear(tower.out_dim, 48)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(
        params, lr=args.learning_rate, weight_decay=0.1, betas=(0.9, 0.99)
    )
    generator = torch.Generator().manual_seed(1)
    warmup = 100
    rows = []
    start = time.time()
    for step in range(1, args.steps + 1):
        decay = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))
        factor = step / warmup if step < warmup else max(decay, 0.05)
        for group in optimizer.param_groups:
            group["lr"] = args.learning_rate * factor
        index = torch.randint(len(train_labels), (args.batch_size,), generator=generator)
        t = torch.randint(1000, (args.batch_size,), generator=generator)
        noise = torch.randn(args.batch_size, 3, 32, 32, generator=generator)
        x_t = schedule.add_noise(train.images[index], noise, t)
        loss = F.cross_entropy(head(tower(x_t, t)), train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % args.eval_interval == 0 or step == args.steps:
            acc = accuracy(tower, head, schedule, val.images, val_labels, val_noise)
            rows.append({"step": step, **{f"t{k}": v for k, v in acc.items()}})
            cells = "  ".join(f"t={k}: {100 * v:5.1f} %" for k, v in acc.items())
            print(f"step {step:5d}  {cells}  ({time.time() - start:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
