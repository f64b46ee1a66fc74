"""GLIDE on the shapes world (Nichol et al. 2021): a text-conditional diffusion model, trained
from scratch with its text encoder, guided at sampling time by classifier-free guidance on
the empty caption or by a noised CLIP; and its inpainting variant.

The model is the one `DiffusionModel` with `conditioning="text"` (a `TextConditioner`: its
pooled feature joins the time embedding, its tokens every attention block -- `concat_kv`,
GLIDE's way, or `cross_attention`, latent diffusion's), so sampling, guidance and
img2img are the ones every diffusion model uses. This file holds the data (fresh captioned
shapes batches: one- and two-object scenes, some captions naming only part of what they
show, so that prompts may leave attributes open), the Trainer task and the presets.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.data.caption_tokenizer import CaptionTokenizer
from tinygen.data.inpainting_masks import training_masks
from tinygen.data.shapes import ATTRIBUTES_ALL, ShapesBatch, generate_shapes, slot_labels
from tinygen.data.shapes_prompts import canonical_pair_prompt, canonical_prompt
from tinygen.diffusion.objective import draw_timesteps_and_noise
from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.models.caption_layout import layout_loss
from tinygen.models.conditioning import TextConditionerConfig
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.recipes.common import Preset, fit
from tinygen.recipes.diffusion import PRESETS as DIFFUSION_PRESETS
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult

MODEL_TYPE = "glide"


@dataclass
class CaptionData:
    """What the text-to-image models of the shapes world train on."""

    image_size: int = field(default=32, metadata={"help": "image size (pixels)", "min": 16})
    pair_fraction: float = field(
        default=0.4,
        metadata={"help": "share of two-object scenes in each batch", "min": 0, "max": 1},
    )
    partial_prob: float = field(
        default=0.2,
        metadata={
            "help": "chance that a caption leaves size and/or position unsaid",
            "min": 0,
            "max": 1,
        },
    )

    def validate(self) -> None:
        check_fields(self)


def world_tokenizer() -> CaptionTokenizer:
    """The word-level tokenizer of every caption the shapes world writes (both kinds), from
    a fixed sample that holds every template and every attribute word."""
    captions = []
    for two_objects in (False, True):
        batch = generate_shapes(600, split="test", seed=0, two_objects=two_objects)
        captions += batch.captions + batch.prompts
    return CaptionTokenizer.from_captions(captions)


def partial_caption(batch: ShapesBatch, i: int, generator: torch.Generator) -> str:
    """The canonical prompt of image i with its size and/or position left out (each with
    chance 1/2, at least one of them): "a red circle", "a large red circle"."""
    names = {k: ATTRIBUTES_ALL[k][int(v[i])] for k, v in batch.labels.items()}
    keep_size, keep_where = torch.rand(2, generator=generator) < 0.5
    if keep_size and keep_where:
        keep_size = torch.tensor(False)
    size = names["size"] if keep_size else None
    if "relation" in names:
        first = {"color": names["color"], "shape": names["shape"], "size": size}
        second = {"color": names["color2"], "shape": names["shape2"]}
        second["size"] = names["size2"] if keep_size else None
        return canonical_pair_prompt(first, names["relation"], second)
    return canonical_prompt(
        names["color"], names["shape"], size, names["position"] if keep_where else None
    )


def captioned_batch(data: CaptionData, split: str, batch_size: int, seed: int) -> ShapesBatch:
    """Fresh images of `split` ("train" or "val": neither shows the held-out pairs), the
    two-object scenes after the one-object ones, each with its training caption. labels:
    the layout per place (`slot_labels`: "occupied", "color", "shape", "size", each (N, 5))
    and "known" (N,), False where the caption leaves size or position unsaid."""
    n_pairs = round(batch_size * data.pair_fraction)
    parts = []
    if batch_size - n_pairs:
        parts.append(
            generate_shapes(
                batch_size - n_pairs, split=split, seed=seed, image_size=data.image_size
            )
        )
    if n_pairs:
        parts.append(
            generate_shapes(
                n_pairs, split=split, seed=seed, image_size=data.image_size, two_objects=True
            )
        )
    gen = torch.Generator().manual_seed(seed)
    captions, known = [], []
    for part in parts:
        for i in range(len(part)):
            partial = float(torch.rand(1, generator=gen)) < data.partial_prob
            captions.append(partial_caption(part, i, gen) if partial else part.captions[i])
            known.append(not partial)
    slots = [slot_labels(p.labels) for p in parts]
    labels = {k: torch.cat([s[k] for s in slots]) for k in slots[0]}
    labels["known"] = torch.tensor(known)
    # object masks as (N, 2, H, W): a one-object image repeats its one object
    masks = [p.masks if p.masks.shape[1] == 2 else p.masks.repeat(1, 2, 1, 1) for p in parts]
    images = torch.cat([p.images for p in parts])
    prompts = sum((p.prompts for p in parts), [])
    return ShapesBatch(images, captions, prompts, labels, torch.cat(masks))


class GlideTask:
    """The Trainer task of GLIDE (see tinygen.train.trainer.Task): fresh captioned batches,
    the caption replaced by the empty one `text.drop_prob` of the time, the shared diffusion
    loss; an inpainting model also gets a random mask and the masked image."""

    items_name = "images"

    def __init__(self, model: DiffusionModel, tokenizer: CaptionTokenizer, data: CaptionData):
        self.model, self.tokenizer, self.data = model, tokenizer, data

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        seed = int(torch.randint(2**58, (1,), generator=generator))
        batch = captioned_batch(self.data, "train" if split == "train" else "val", batch_size, seed)
        config = self.model.config
        t, noise = draw_timesteps_and_noise(
            batch.images.shape, config.num_train_timesteps, generator
        )
        drop = torch.rand(batch_size, generator=generator) < config.text.drop_prob
        out = {
            "x0": batch.images,
            "t": t,
            "noise": noise,
            "drop": drop,
            "tokens": self.tokenizer.encode_batch(batch.captions),
        }
        if config.inpainting:
            mask = training_masks(batch.masks, generator)
            out.update(mask=mask, masked_image=batch.images * (1 - mask))
        if config.text.layout_weight > 0:
            out["layout"] = batch.labels
        return out

    def loss(self, model: nn.Module, batch: dict) -> Tensor:
        cond = {k: batch[k] for k in ("tokens", "masked_image", "mask") if k in batch}
        loss = self.model.training_loss(
            batch["x0"], batch["noise"], batch["t"], cond, batch["drop"], forward=model
        )
        if "layout" in batch:
            # the text encoder again, on every caption (dropped ones too: the drop is the
            # U-Net's lesson); it is small next to the U-Net. (Measured single-process only,
            # not under torchrun.)
            text = self.model.conditioner
            logits = text.layout_head(text(batch["tokens"])[0])
            aux = layout_loss(logits, batch["layout"], batch["layout"]["known"])
            loss = loss + self.model.config.text.layout_weight * aux
        return loss

    def on_end(self, model: nn.Module, run_dir: str | Path) -> None:
        """A grid of DDIM-25 samples at guidance 3 for a few canonical prompts."""
        if self.model.config.inpainting:
            return
        from tinygen.data.image_folder import save_image_grid

        prompts = SAMPLE_PROMPTS
        tokens = self.tokenizer.encode_batch(prompts)
        gen = torch.Generator().manual_seed(0)
        images = model.generate(
            len(prompts), cond={"tokens": tokens}, guidance=3.0, steps=25, generator=gen
        )
        save_image_grid(images, Path(run_dir) / "samples.png", nrow=4, scale=4)


SAMPLE_PROMPTS = [
    "a large red circle on the left",
    "a small blue square at the top",
    "a large green star in the centre",
    "a small yellow triangle at the bottom",
    "a large white cross on the right",
    "a small purple diamond on the left",
    "a large orange star at the top",
    "a small cyan circle in the centre",
    "a red circle to the left of a blue square",
    "a green star above a yellow diamond",
    "a white cross below a purple circle",
    "a cyan triangle to the right of a white square",
]

# the U-Nets of the diffusion recipes (the same family), text joining their attention
_TINY_UNET = DIFFUSION_PRESETS["tiny"].model.unet
_SHAPES_UNET = dataclasses.replace(DIFFUSION_PRESETS["shapes"].model.unet, context_mode="concat_kv")
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        DiffusionConfig(
            unet=_TINY_UNET,
            conditioning="text",
            text=TextConditionerConfig(width=32, layers=1, heads=2),
        ),
        TrainConfig(
            max_iters=60,
            batch_size=16,
            learning_rate=1e-3,
            warmup_iters=10,
            eval_interval=60,
            eval_iters=2,
            log_interval=10,
            weight_decay=0.0,
        ),
        description="seconds-long smoke test: 16 px, a one-layer text encoder",
        extras={"data": CaptionData(image_size=16)},
    ),
    "shapes": Preset(
        DiffusionConfig(
            unet=_SHAPES_UNET,
            beta_schedule="cosine",
            prediction_type="v_prediction",
            conditioning="text",
            text=TextConditionerConfig(width=128, layers=2, heads=4, pooling="mean"),
        ),
        TrainConfig(
            max_iters=4000,  # runs/glide: 26.1 min on the 2-core CPU
            batch_size=48,
            learning_rate=2e-3,
            warmup_iters=100,
            eval_interval=1000,
            eval_iters=5,
            log_interval=20,
            weight_decay=0.0,
            ema_decay=0.998,
        ),
        description="the CPU recipe of docs/benchmarks.md: 32 px, concat-kv text conditioning",
        extras={"data": CaptionData()},
    ),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise TinygenError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _flat(model_config: dict, prefix: str = "") -> dict:
    """A nested model config as {"unet.base_channels": 32, ...}."""
    out = {}
    for key, value in model_config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# fields that change how a fresh model starts or trains, not its network
INIT_ONLY = ("text.layout_weight", "text.position_std")


def warm_start(source_run: str | Path, config: DiffusionConfig):
    """load(model) that copies the weights of the GLIDE run `source_run` (the ones
    `generate` loads) into a fresh model of the same network; only the layout head
    (`text.layout_weight`, caption_layout.py) may differ, and starts as initialised. One
    clear error for a run of another kind or another network."""
    from tinygen.models.runs import load_model

    source, run_config = load_model(source_run, expect=MODEL_TYPE)
    # both through JSON, so tuples and lists compare; fields newer than the source run
    # read as their defaults, as when the run is loaded
    here, there = (
        _flat(json.loads(json.dumps(dataclasses.asdict(c)))) for c in (config, source.config)
    )
    differ = [
        f"{key}: {there.get(key)!r} there, {value!r} here"
        for key, value in here.items()
        if key not in INIT_ONLY and there.get(key) != value
    ]
    if differ:
        raise TinygenError(
            f"--init-from {source_run}: its network differs from the one asked for ("
            + "; ".join(differ)
            + "); drop the model flags, or give the values of that run"
        )
    state = {k: v for k, v in source.state_dict().items() if ".layout_head." not in k}

    def load(model: DiffusionModel) -> None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        new = [k for k in missing if ".layout_head." not in k]
        if new or unexpected:  # pragma: no cover - the configs above are equal
            raise TinygenError(f"--init-from {source_run}: weights do not fit ({new + unexpected})")

    return load


def train_glide(
    config: DiffusionConfig,
    train_config: TrainConfig,
    data: CaptionData,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train a GLIDE model into the run directory `out` (its tokenizer saved beside it).

    init_from: a GLIDE run of the same network to start from (its weights; the optimizer,
    the step count and the schedule start afresh), e.g. to fine-tune it with
    `layout_weight`. A resumed run keeps the record in config.json and reads only `out`."""
    data.validate()
    if config.unet.image_size != data.image_size:
        raise TinygenError(
            f"the U-Net draws {config.unet.image_size} px but the data is {data.image_size} px"
        )
    tokenizer = world_tokenizer()
    text = dataclasses.replace(
        config.text, vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length
    )
    config = dataclasses.replace(config, conditioning="text", text=text)
    torch.manual_seed(train_config.seed)
    model = DiffusionModel(config)
    run_config = {
        "model_type": MODEL_TYPE,
        "model": dataclasses.asdict(config),
        "data": {"world": "shapes", **dataclasses.asdict(data)},
    }
    if init_from is not None and not resume:
        from tinygen.io import weights_fingerprint

        warm_start(init_from, config)(model)
        run_config["init_from"] = {"run": str(init_from), "weights": weights_fingerprint(init_from)}
    return fit(
        GlideTask(model, tokenizer, data),
        train_config,
        out,
        run_config,
        resume=resume,
        progress=progress,
        on_start=tokenizer.save,
    )
