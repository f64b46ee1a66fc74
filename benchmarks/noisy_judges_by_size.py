"""Where noisy judges fail: colour, shape and (colour, shape) accuracy by noise level and by
object size, for a noisy classifier (classifier guidance) and a noised CLIP (CLIP guidance).

Both guides of issue 12 stall near 60 % at t = 500 of the cosine schedule; this says whether
colour or shape is what they lose, and whether it is the small objects (radius ~4 px) or all
of them. Images of one split of the shapes world, the same noise for both judges: `val` (the
training distribution) for a classifier, which has no class for the held-out pairs that
`test` also shows; `test` for a noised CLIP, as its logged zero-shot figures.

    python benchmarks/noisy_judges_by_size.py --classifier runs/classifier-warm --split val
    python benchmarks/noisy_judges_by_size.py --clip runs/clip-noised-ft --split test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tinygen.data.shapes import COLORS, SHAPES, SIZES, generate_shapes
from tinygen.diffusion.schedule import NoiseSchedule


def classifier_predict(run: Path):
    from tinygen.models.runs import load_model

    model, _ = load_model(run, expect="noisy-classifier")

    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t, t).argmax(-1)

    return predict, model.schedule


def clip_predict(run: Path):
    from tinygen.data.caption_tokenizer import load_caption_tokenizer
    from tinygen.eval.zero_shot import zero_shot_classifier, zero_shot_predict
    from tinygen.models.runs import load_model
    from tinygen.recipes.clip import shapes_zero_shot_templates
    from tinygen.recipes.clip_noised import noise_of_run

    model, config = load_model(run, expect="clip")
    noise = noise_of_run(config, run)
    classnames = [f"{c} {s}" for c in COLORS for s in SHAPES]
    texts = zero_shot_classifier(
        model, classnames, shapes_zero_shot_templates(), tokenizer=load_caption_tokenizer(run)
    )

    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return zero_shot_predict(model.encode_image(x_t, t), texts)

    return predict, NoiseSchedule(noise["beta_schedule"], noise["num_train_timesteps"])


@torch.no_grad()
def accuracies(predict, schedule: NoiseSchedule, n: int, seed: int, split: str) -> dict:
    test = generate_shapes(n, split=split, seed=seed, image_size=32)
    color, shape, size = (test.labels[k] for k in ("color", "shape", "size"))
    noise = torch.randn(test.images.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    for t_value in (0, 250, 500, 750):
        t = torch.full((n,), t_value, dtype=torch.long)
        x_t = schedule.add_noise(test.images, noise, t)
        pred = torch.cat([predict(a, b) for a, b in zip(x_t.split(256), t.split(256))])
        pred_color, pred_shape = pred // len(SHAPES), pred % len(SHAPES)
        row = {}
        for name, mask in [("all", torch.ones(n, dtype=torch.bool))] + [
            (s, size == i) for i, s in enumerate(SIZES)
        ]:
            c = (pred_color == color)[mask].float()
            s = (pred_shape == shape)[mask].float()
            both = c * s
            row[name] = {
                "n": int(mask.sum()),
                "colour": c.mean().item(),
                "shape": s.mean().item(),
                "colour_and_shape": both.mean().item(),
                "se": (both.var(unbiased=False) / mask.sum()).sqrt().item(),
            }
        out[f"t{t_value}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, help="a noisy-classifier run")
    parser.add_argument("--clip", type=Path, help="a noised CLIP run")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("val", "test"), default="val")
    args = parser.parse_args()
    judges = {}
    if args.classifier:
        judges[f"classifier {args.classifier}"] = classifier_predict(args.classifier)
    if args.clip:
        judges[f"clip {args.clip}"] = clip_predict(args.clip)
    if not judges:
        parser.error("give --classifier and/or --clip")
    results = {}
    print("| judge | t | size | n | colour | shape | colour and shape |")
    print("|---|---|---|---|---|---|---|")
    for name, (predict, schedule) in judges.items():
        results[name] = accuracies(predict, schedule, args.n, args.seed, args.split)
        for t_key, row in results[name].items():
            for size, r in row.items():
                print(
                    f"| {name} | {t_key[1:]} | {size} | {r['n']} | {100 * r['colour']:.1f} | "
                    f"{100 * r['shape']:.1f} | {100 * r['colour_and_shape']:.1f} ± "
                    f"{100 * r['se']:.1f} |"
                )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
