"""Training CLIP with the shared Trainer: image–caption pairs in memory, the contrastive
loss, the temperature clamp after each step, shapes-world evaluation and pictures.

`CLIPTask` is the trainer's view of CLIP (see tinygen.train.trainer.Task). The pairs are
held as tensors (images) and pre-tokenised captions, and each batch is drawn *without*
replacement so that no image appears twice in one batch (a duplicate would be scored as
its own negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.eval.zero_shot import (
    encode_images,
    retrieval_metrics,
    zero_shot_classifier,
    zero_shot_predict,
)
from tinygen.models.clip_loss import clip_loss


@dataclass
class PairSet:
    """N images (N, C, H, W) in [-1, 1] with their captions.

    variants: optional extra captions per image (N lists of V strings), drawn in training
    in place of the caption with probability `variant_prob` (see shapes_pairs).
    """

    images: Tensor
    captions: list[str]
    variants: list[list[str]] | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise TinygenError(f"{len(self.images)} images but {len(self.captions)} captions")
        if len(self.images) == 0:
            raise TinygenError("the dataset has no image–caption pairs; check --data")


def shapes_pairs(n: int, *, split: str, seed: int, image_size: int = 32) -> PairSet:
    """`n` single-object shapes images with their (random-template) captions, and three
    partial captions per image: "a red circle", "a large red circle", "a red circle on the
    left". Training on captions that leave attributes out teaches the text tower that a
    caption names what it names and no more -- so "a red star" is a sensible zero-shot
    prompt for every red star, whatever its size and position."""
    from tinygen.data.shapes import (
        COLORS,
        POSITIONS,
        SHAPES,
        SIZES,
        canonical_prompt,
        generate_shapes,
    )

    batch = generate_shapes(n, split=split, seed=seed, image_size=image_size)
    names = zip(
        *(
            [values[i] for i in batch.labels[key].tolist()]
            for key, values in (
                ("color", COLORS),
                ("shape", SHAPES),
                ("size", SIZES),
                ("position", POSITIONS),
            )
        )
    )
    variants = [
        [
            canonical_prompt(color, shape),
            canonical_prompt(color, shape, size),
            canonical_prompt(color, shape, position=position),
        ]
        for color, shape, size, position in names
    ]
    return PairSet(batch.images, batch.captions, variants)


def shapes_zero_shot_templates() -> list[str]:
    """Prompt ensemble for a "colour shape" class (CLIP sec. 3.1.4): the canonical prompt
    alone, with each size, and with each position -- the partial captions of training
    (shapes_pairs), so the average leans on no single size or position."""
    from tinygen.data.shapes import POSITIONS, SIZES, canonical_prompt

    prompts = [canonical_prompt("red", "circle")]
    prompts += [canonical_prompt("red", "circle", size) for size in SIZES]
    prompts += [canonical_prompt("red", "circle", position=p) for p in POSITIONS]
    return [prompt.replace("red circle", "{}") for prompt in prompts]


@torch.no_grad()
def evaluate_shapes(
    model: nn.Module,
    tokenizer,
    *,
    n_test: int = 1000,
    n_heldout: int = 480,
    seed: int = 0,
    image_size: int = 32,
) -> dict[str, float]:
    """The shapes-world figures of a CLIP model.

    zero_shot_seen / zero_shot_heldout: accuracy of classifying (colour, shape) among all
    48 pairs, on test images whose pair was in training / on the held-out pairs.
    t2i_recall@1 (and the rest of retrieval_metrics): `n_test` test images against their
    canonical prompts; a retrieved image counts when its canonical prompt is the query's.
    """
    from tinygen.data.shapes import COLORS, HELDOUT_COMBOS, SHAPES, generate_shapes

    was_training = model.training
    model.eval()
    classnames = [f"{c} {s}" for c in COLORS for s in SHAPES]  # index = combo_index
    classifier = zero_shot_classifier(
        model, classnames, shapes_zero_shot_templates(), tokenizer=tokenizer
    )
    heldout_ids = {COLORS.index(c) * len(SHAPES) + SHAPES.index(s) for c, s in HELDOUT_COMBOS}
    out: dict[str, float] = {}

    test = generate_shapes(n_test, split="test", seed=seed, image_size=image_size)
    combo = test.labels["color"] * len(SHAPES) + test.labels["shape"]
    image_emb = encode_images(model, test.images)
    pred = zero_shot_predict(image_emb, classifier.to(image_emb.device)).cpu()
    seen = torch.tensor([int(c) not in heldout_ids for c in combo])
    out["zero_shot_seen"] = (pred == combo)[seen].float().mean().item()

    held = generate_shapes(n_heldout, split="heldout", seed=seed, image_size=image_size)
    held_combo = held.labels["color"] * len(SHAPES) + held.labels["shape"]
    held_pred = zero_shot_predict(
        encode_images(model, held.images), classifier.to(image_emb.device)
    ).cpu()
    out["zero_shot_heldout"] = (held_pred == held_combo).float().mean().item()

    device = image_emb.device
    text_emb = torch.cat(
        [
            model.encode_text(tokenizer.encode_batch(test.prompts[i : i + 256]).to(device))
            for i in range(0, n_test, 256)
        ]
    )
    prompt_ids = {p: i for i, p in enumerate(sorted(set(test.prompts)))}
    groups = torch.tensor([prompt_ids[p] for p in test.prompts])
    metrics = retrieval_metrics(image_emb, text_emb, groups=groups)
    out["t2i_recall@1"] = metrics["text_to_image_recall@1"]
    out["i2t_recall@1"] = metrics["image_to_text_recall@1"]
    out["t2i_recall@5"] = metrics["text_to_image_recall@5"]
    strict = retrieval_metrics(image_emb, text_emb)
    out["t2i_recall@1_instance"] = strict["text_to_image_recall@1"]
    model.train(was_training)
    return out


class CLIPTask:
    """The trainer's interface to CLIP (tinygen.train.trainer.Task)."""

    items_name = "pairs"

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        train: PairSet,
        val: PairSet,
        *,
        shapes_eval: dict | None = None,
        variant_prob: float = 0.5,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sets = {"train": train, "val": val}
        # Captions are tokenised once; a batch is then index_selects.
        self.tokens = {k: tokenizer.encode_batch(v.captions) for k, v in self.sets.items()}
        self.variant_tokens = None  # (N, V, T): training captions that name fewer attributes
        if train.variants is not None and variant_prob > 0:
            flat = [text for texts in train.variants for text in texts]
            n, v = len(train.variants), len(train.variants[0])
            self.variant_tokens = tokenizer.encode_batch(flat).view(n, v, -1)
        self.variant_prob = variant_prob
        self.shapes_eval = shapes_eval  # kwargs of evaluate_shapes, None off the shapes world

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        pairs = self.sets[split]
        n = len(pairs.images)
        if split != "train":
            batch_size = min(batch_size, n)  # a small validation split is scored whole
        if batch_size > n:
            raise TinygenError(
                f"--batch-size {batch_size} exceeds the {n} {split} pairs; "
                "lower --batch-size or add data"
            )
        index = torch.randperm(n, generator=generator)[:batch_size]
        tokens = self.tokens[split][index]  # (B, T)
        if split == "train" and self.variant_tokens is not None:
            use = torch.rand(batch_size, generator=generator) < self.variant_prob  # (B,)
            which = torch.randint(self.variant_tokens.shape[1], (batch_size,), generator=generator)
            tokens = torch.where(use[:, None], self.variant_tokens[index, which], tokens)
        return pairs.images[index], tokens  # (B, C, H, W), (B, T)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        image_features, text_features, logit_scale = model(*batch)
        return clip_loss(image_features, text_features, logit_scale)

    def after_step(self, model: nn.Module) -> None:
        model.clamp_logit_scale()

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        row = {"logit_scale": model.logit_scale.exp().item()}
        if self.shapes_eval is not None:
            row.update(evaluate_shapes(model, self.tokenizer, **self.shapes_eval))
        return row

    def on_end(self, model: nn.Module, run_dir: str | Path) -> None:
        from tinygen.models.clip_pictures import plot_retrieval_grid, plot_similarity_matrix

        val = self.sets["val"]
        n = min(16, len(val.images))
        plot_similarity_matrix(
            model,
            self.tokenizer,
            val.images[:n],
            val.captions[:n],
            Path(run_dir) / "similarity.png",
        )
        plot_retrieval_grid(
            model, self.tokenizer, val.images, val.captions[:6], Path(run_dir) / "retrieval.png"
        )
