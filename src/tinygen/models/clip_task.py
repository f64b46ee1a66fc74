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
    """N images (N, C, H, W) in [-1, 1] with their captions."""

    images: Tensor
    captions: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise TinygenError(f"{len(self.images)} images but {len(self.captions)} captions")
        if len(self.images) == 0:
            raise TinygenError("the dataset has no image–caption pairs; check --data")


def shapes_pairs(n: int, *, split: str, seed: int, image_size: int = 32) -> PairSet:
    """`n` single-object shapes images with their (random-template) captions."""
    from tinygen.data.shapes import generate_shapes

    batch = generate_shapes(n, split=split, seed=seed, image_size=image_size)
    return PairSet(batch.images, batch.captions)


def shapes_zero_shot_templates() -> list[str]:
    """Prompt ensemble for a "colour shape" class: the canonical prompt with every size and
    position (CLIP sec. 3.1.4), so no single unseen size/position wording is favoured."""
    from tinygen.data.shapes import POSITIONS, SIZES, canonical_prompt

    return [
        canonical_prompt("red", "circle", size, position).replace("red circle", "{}")
        for size in SIZES
        for position in POSITIONS
    ]


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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sets = {"train": train, "val": val}
        # Captions are tokenised once; a batch is then two index_selects.
        self.tokens = {k: tokenizer.encode_batch(v.captions) for k, v in self.sets.items()}
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
        return pairs.images[index], self.tokens[split][index]  # (B, C, H, W), (B, T)

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
