"""Does a GLIDE run's text encoder know which object goes where? Linear probes of its features.

Two-object prompts fail on binding: each object's colour is right about half the time, a
coin flip between the two named colours (docs/benchmarks.md, section glide). A U-Net can
only put a colour at the right place if the caption's features say where it goes, and that
needs the relation as well as the word order ("a red circle to the right of a blue square"
puts red on the right). This script fits logistic-regression probes (L-BFGS, a little L2) on
the features of 4,000 training captions of two-object scenes and tests them on 2,000
validation captions:

* each colour word's token feature -> its own colour (a sanity check: should be ~100 %),
* the same feature -> which phrase it is in (first or second),
* the same feature -> its **role**: is its object at the left/top place? (chance 50 %),
* the pooled feature (what joins the time embedding) -> the colour at the left/top place.

    python benchmarks/text_binding_probe.py --run runs/glide-pairs
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from tinygen.data.caption_tokenizer import load_caption_tokenizer
from tinygen.data.shapes import generate_shapes
from tinygen.data.shapes_prompts import COLORS, POSITIONS
from tinygen.models.runs import load_model


@torch.no_grad()
def features(model, tokenizer, split: str, n: int, seed: int) -> dict[str, torch.Tensor]:
    batch = generate_shapes(n, split=split, seed=seed, two_objects=True, image_size=16)
    tokens = tokenizer.encode_batch(batch.captions)
    pooled, sequence = model.conditioner(tokens)
    labels = batch.labels
    first_at_left_top = torch.tensor(
        [POSITIONS[p] in ("left", "top") for p in labels["position"].tolist()]
    )
    word_ids = {tokenizer.encode(c)[1]: c for c in COLORS}  # encode: [<bos>, word, <eos>]
    rows = {"token": [], "own_colour": [], "phrase": [], "role": []}
    for i in range(n):
        ids = tokens[i].tolist()
        found = [(j, word_ids[t]) for j, t in enumerate(ids) if t in word_ids]
        if len(found) != 2:
            continue
        for k, (j, colour) in enumerate(found):
            rows["token"].append(sequence[i, j])
            rows["own_colour"].append(COLORS.index(colour))
            rows["phrase"].append(k)
            rows["role"].append(int(bool(first_at_left_top[i]) == (k == 0)))
    out = {k: torch.stack(v) if k == "token" else torch.tensor(v) for k, v in rows.items()}
    out["pooled"] = pooled
    out["left_top_colour"] = torch.where(first_at_left_top, labels["color"], labels["color2"])
    return out


def probe(x_train, y_train, x_test, y_test) -> float:
    """Test accuracy of a multinomial logistic regression fitted on standardised features."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    k = int(y_train.max()) + 1
    w = torch.zeros(x_train.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ w + b, y_train) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((x_test @ w + b).argmax(1) == y_test).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a GLIDE run directory")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=2000)
    args = parser.parse_args()
    model, _ = load_model(args.run, expect="glide")
    tokenizer = load_caption_tokenizer(args.run)
    train = features(model, tokenizer, "train", args.n_train, seed=5)
    test = features(model, tokenizer, "val", args.n_test, seed=6)
    results = {
        "colour word -> its colour": probe(
            train["token"], train["own_colour"], test["token"], test["own_colour"]
        ),
        "colour word -> its phrase": probe(
            train["token"], train["phrase"], test["token"], test["phrase"]
        ),
        "colour word -> its object at left/top": probe(
            train["token"], train["role"], test["token"], test["role"]
        ),
        "pooled -> colour at left/top": probe(
            train["pooled"], train["left_top_colour"], test["pooled"], test["left_top_colour"]
        ),
    }
    for name, acc in results.items():
        print(f"| {args.run} | {name} | {100 * acc:.1f} % |")
    print(json.dumps({"run": args.run, "n_test_captions": args.n_test, **results}))


if __name__ == "__main__":
    main()
