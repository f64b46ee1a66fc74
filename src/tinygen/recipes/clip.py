"""The CLIP recipe: image–caption pairs in memory, the contrastive task with its
temperature clamp, shapes-world evaluation, presets, and a training run from --data.

`CLIPTask` is the trainer's view of CLIP (see tinygen.train.trainer.Task). The pairs are
held as tensors (images) and pre-tokenised captions, and each batch is drawn *without*
replacement so that no image appears twice in one batch (a duplicate would be scored as
its own negative). Pictures and text-to-image search live in `recipes/clip_pictures.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.data.image_data import ImageCaptions, split_indices
from tinygen.errors import TinygenError
from tinygen.eval.zero_shot import (
    encode_images,
    retrieval_metrics,
    zero_shot_classifier,
    zero_shot_predict,
)
from tinygen.models.clip import CLIPConfig
from tinygen.models.clip_loss import clip_loss
from tinygen.recipes.common import Preset, fit
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult

PRESETS: dict[str, Preset] = {
    "shapes": Preset(
        CLIPConfig(
            embed_dim=64,
            vision_width=96,
            vision_layers=3,
            vision_heads=4,
            text_width=64,
            text_layers=2,
            text_heads=4,
        ),
        TrainConfig(
            max_iters=2000,
            batch_size=128,
            learning_rate=2e-3,
            min_lr=1e-4,
            warmup_iters=100,
            weight_decay=0.1,
            eval_interval=500,
            eval_iters=4,
            log_interval=10,
        ),
        "the shapes-world recipe of docs/benchmarks.md (section clip): a ViT, 4x4 patches",
    ),
    "tiny": Preset(
        CLIPConfig(
            embed_dim=32,
            vision_width=32,
            vision_layers=1,
            vision_heads=2,
            text_width=32,
            text_layers=1,
            text_heads=2,
            patch_size=8,
        ),
        TrainConfig(
            max_iters=100,
            batch_size=64,
            learning_rate=2e-3,
            warmup_iters=10,
            eval_interval=50,
            eval_iters=2,
            log_interval=10,
        ),
        "a quick look (about a minute on a laptop CPU)",
    ),
}


def PairSet(  # noqa: N802 - the old name of a CLIP training set
    images: Tensor, captions: list[str], variants: list[list[str]] | None = None
) -> ImageCaptions:
    """N images (N, C, H, W) in [-1, 1] with their captions (and optional caption variants):
    an `ImageCaptions` that must have captions."""
    return ImageCaptions(images, captions, variants=variants)


def shapes_pairs(n: int, *, split: str, seed: int, image_size: int = 32) -> ImageCaptions:
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
        combo_labels,
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
    labels = combo_labels(batch.labels["color"], batch.labels["shape"])
    return ImageCaptions(batch.images, list(batch.captions), labels, variants)


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
    from tinygen.data.shapes import (
        COLORS,
        HELDOUT_COMBOS,
        SHAPES,
        combo_index,
        combo_labels,
        generate_shapes,
    )

    was_training = model.training
    model.eval()
    classnames = [f"{c} {s}" for c in COLORS for s in SHAPES]  # index = combo_index
    classifier = zero_shot_classifier(
        model, classnames, shapes_zero_shot_templates(), tokenizer=tokenizer
    )
    heldout_ids = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    out: dict[str, float] = {}

    test = generate_shapes(n_test, split="test", seed=seed, image_size=image_size)
    combo = combo_labels(test.labels["color"], test.labels["shape"])
    image_emb = encode_images(model, test.images)
    pred = zero_shot_predict(image_emb, classifier.to(image_emb.device)).cpu()
    seen = torch.tensor([int(c) not in heldout_ids for c in combo])
    out["zero_shot_seen"] = (pred == combo)[seen].float().mean().item()

    held = generate_shapes(n_heldout, split="heldout", seed=seed, image_size=image_size)
    held_combo = combo_labels(held.labels["color"], held.labels["shape"])
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
        train: ImageCaptions,
        val: ImageCaptions,
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
        from tinygen.recipes.clip_pictures import plot_retrieval_grid, plot_similarity_matrix

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


def load_pairs(
    data: str = "shapes",
    *,
    image_size: int = 32,
    train_size: int = 20000,
    val_size: int = 1000,
    seed: int = 0,
) -> tuple[ImageCaptions, ImageCaptions, dict]:
    """(train pairs, validation pairs, what config.json records) for `data`: "shapes" (the
    built-in world: `train_size` + `val_size` images of `seed`) or a folder of captioned
    images, a seeded tenth of it held out for validation."""
    if data == "shapes":
        train = shapes_pairs(train_size, split="train", seed=seed, image_size=image_size)
        val = shapes_pairs(val_size, split="val", seed=seed, image_size=image_size)
        described = {"name": "shapes", "train_size": train_size, "val_size": val_size}
        return train, val, {**described, "seed": seed}
    from tinygen.data.image_folder import ImageFolderDataset

    folder = ImageFolderDataset(data, image_size=image_size)
    n = len(folder)
    if n < 2:
        raise TinygenError(
            f"{data} holds {n} captioned image; CLIP needs at least 2 "
            "pairs (a contrastive batch), ideally thousands"
        )
    everything = ImageCaptions(folder.images, list(folder.captions))
    train_idx, val_idx = split_indices(n, seed)
    train, val = everything.subset(train_idx), everything.subset(val_idx)
    return train, val, {"name": "folder", "path": str(data), "pairs": n, "val": len(val)}


def new_tokenizer(model_config: CLIPConfig, captions: list[str]):
    """The tokenizer of a fresh run: MiniLM's word pieces for the pretrained MiniLM text
    tower, else a word vocabulary of the training captions."""
    if model_config.text_tower == "minilm":
        from tinygen.data.minilm_tokenizer import MiniLMTokenizer

        return MiniLMTokenizer(context_length=32)
    from tinygen.data.caption_tokenizer import CaptionTokenizer

    return CaptionTokenizer.from_captions(captions)


def train_clip(
    model_config: CLIPConfig,
    train_config: TrainConfig,
    out: str | Path,
    *,
    data: str = "shapes",
    train_size: int = 20000,
    val_size: int = 1000,
    data_seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    make_task: Callable[..., CLIPTask] | None = None,
    run_extras: dict | None = None,
    init: Callable[[], tuple] | None = None,
) -> TrainResult:
    """Train CLIP on `data` (see load_pairs) into `out`: the tokenizer is saved beside the
    model, the shapes world is scored at every evaluation, pictures are drawn at the end.
    make_task(model, tokenizer, train, val) builds another task (the noised CLIP's,
    `recipes/clip_noised.py`); run_extras are added to config.json. init() -> (tokenizer,
    load(model)): start a fresh run from another run's weights and vocabulary (the noised
    CLIP's --init-from); ignored on resume, where the checkpoint holds the weights."""
    from tinygen.data.caption_tokenizer import load_caption_tokenizer
    from tinygen.models.clip import CLIP
    from tinygen.models.runs import load_resumable_config

    out = Path(out)
    train, val, described = load_pairs(
        data,
        image_size=model_config.image_size,
        train_size=train_size,
        val_size=val_size,
        seed=data_seed,
    )
    if resume:
        load_resumable_config(out, "clip")
    load_start = None
    if resume:
        tokenizer = load_caption_tokenizer(out)
    elif init is not None:
        tokenizer, load_start = init()
    else:
        tokenizer = new_tokenizer(model_config, train.captions)
    model_config = dataclasses.replace(
        model_config, vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length
    )
    torch.manual_seed(train_config.seed)
    model = CLIP(model_config)
    if load_start is not None:
        load_start(model)
    shapes_eval = {"n_test": 1000, "seed": 0, "image_size": model_config.image_size}
    if make_task is None:
        task = CLIPTask(
            model, tokenizer, train, val, shapes_eval=shapes_eval if data == "shapes" else None
        )
    else:
        task = make_task(model, tokenizer, train, val)
    run_config = {
        "model_type": "clip",
        "model": dataclasses.asdict(model_config),
        "data": described,
        **(run_extras or {}),
    }
    return fit(
        task,
        train_config,
        out,
        run_config,
        resume=resume,
        progress=progress,
        announce=f", {len(train.captions):,} training pairs, vocabulary {tokenizer.vocab_size}",
        on_start=tokenizer.save,
    )


def load_clip(run: str | Path, which: str = "best"):
    """(model, tokenizer, config.json) of a trained CLIP run, in eval mode."""
    from tinygen.data.caption_tokenizer import load_caption_tokenizer
    from tinygen.models.runs import load_model

    model, config = load_model(run, which=which, expect="clip")
    return model, load_caption_tokenizer(run), config


def run_templates(config: dict) -> list[str]:
    """The zero-shot prompt templates that suit a run: the shapes ensemble for a run trained
    on the shapes world, the bare label otherwise."""
    if config.get("data", {}).get("name") == "shapes":
        return shapes_zero_shot_templates()
    return ["{}"]
