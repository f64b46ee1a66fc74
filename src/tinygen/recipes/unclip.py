"""unCLIP on the shapes world: training the prior and the decoder on a frozen CLIP, and
loading the three runs as one pipeline.

Both stages read the same fixed training set and its cached CLIP embeddings
(`recipes/unclip_data.py`); the last tenth of it (at most 1,000 items) is held out as the
validation split. The prior learns caption -> CLIP image embedding (`models/prior.py`); the
decoder is the one `DiffusionModel` with `conditioning="clip_image"`, its `shapes` preset
the U-Net, schedule, objective and optimiser of GLIDE's `shapes` preset, so that the two
text-to-image systems differ in how the caption reaches the image and in nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.diffusion.objective import draw_timesteps_and_noise
from tinygen.errors import TinygenError
from tinygen.models.clip_image_conditioner import ClipImageConditionerConfig
from tinygen.models.conditioning import drop_condition
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.models.prior import DiffusionPrior, PriorConfig, to_prior_space
from tinygen.models.unclip import (
    COMPONENTS_FILE,
    DECODER_TYPE,
    PRIOR_TYPE,
    UnCLIP,
    clip_fingerprint,
    read_components,
)
from tinygen.recipes.common import Preset, fit
from tinygen.recipes.glide import PRESETS as GLIDE_PRESETS
from tinygen.recipes.glide import world_tokenizer
from tinygen.recipes.unclip_data import EmbeddingSet, UnclipData, clip_embeddings, training_images
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult


def split_rows(n: int, split: str) -> Tensor:
    """Row indices of the train / val part of an n-item training set."""
    n_val = min(1000, max(1, n // 10))
    return torch.arange(n - n_val) if split == "train" else torch.arange(n - n_val, n)


class PriorTask:
    """Captions -> CLIP image embeddings: the diffusion loss on (B, D), text dropped 10%."""

    items_name = "captions"

    def __init__(self, model: DiffusionPrior, embeddings: EmbeddingSet) -> None:
        self.model, self.embeddings = model, embeddings
        self.rows = {s: split_rows(len(embeddings), s) for s in ("train", "val")}

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        rows = self.rows["train" if split == "train" else "val"]
        index = rows[torch.randint(len(rows), (batch_size,), generator=generator)]
        e = self.embeddings
        z_0 = to_prior_space(e.image_emb[index])
        t, noise = draw_timesteps_and_noise(
            z_0.shape, self.model.config.num_train_timesteps, generator
        )
        drop = torch.rand(batch_size, generator=generator) < self.model.config.cond_drop_prob
        text = to_prior_space(e.text_emb[index])
        return {
            "z_0": z_0,
            "t": t,
            "noise": noise,
            "drop": drop,
            "tokens": e.tokens[index],
            "text": text,
        }

    def loss(self, model: nn.Module, batch: dict) -> Tensor:
        cond = {"tokens": batch["tokens"], "embedding": batch["text"]}
        return self.model.training_loss(
            batch["z_0"], batch["noise"], batch["t"], cond, batch["drop"], forward=model
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Mean cosine to the true image embedding on 256 validation captions: the prior's
        sample (guidance 1, one candidate) and the raw text embedding (the baseline)."""
        rows = self.rows["val"][:256]
        e = self.embeddings
        gen = torch.Generator().manual_seed(0)
        z = model.generate(e.tokens[rows], e.text_emb[rows], rerank=1, generator=gen).cpu()
        true = e.image_emb[rows]
        return {
            "val_cosine_prior": float((z * true).sum(-1).mean()),
            "val_cosine_text": float((e.text_emb[rows] * true).sum(-1).mean()),
        }


class DecoderTask:
    """Images from their CLIP image embeddings (zeroed 10%; captions, if read, dropped 50%)."""

    items_name = "images"

    def __init__(self, model: DiffusionModel, embeddings: EmbeddingSet, images: Tensor) -> None:
        self.model, self.embeddings, self.images = model, embeddings, images  # uint8 images
        self.rows = {s: split_rows(len(embeddings), s) for s in ("train", "val")}

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        rows = self.rows["train" if split == "train" else "val"]
        index = rows[torch.randint(len(rows), (batch_size,), generator=generator)]
        x0 = self.images[index].float() / 127.5 - 1
        t, noise = draw_timesteps_and_noise(
            x0.shape, self.model.config.num_train_timesteps, generator
        )
        batch = {"x0": x0, "t": t, "noise": noise, "embedding": self.embeddings.image_emb[index]}
        if self.model.config.clip_image.captions:
            batch["tokens"] = self.embeddings.tokens[index]
        drops = self.model.conditioner.drop_masks(batch_size, generator)
        batch.update({f"drop_{k}": v for k, v in drops.items()})
        return batch

    def loss(self, model: nn.Module, batch: dict) -> Tensor:
        cond = {k: batch[k] for k in ("embedding", "tokens") if k in batch}
        null = self.model.null_condition(1, batch["x0"].device)
        for key in list(cond):
            cond = drop_condition(cond, {key: null[key]}, batch[f"drop_{key}"])
        return self.model.training_loss(
            batch["x0"], batch["noise"], batch["t"], cond, None, forward=model
        )

    def on_end(self, model: nn.Module, run_dir: str | Path) -> None:
        """Eight validation images (top) and their decodings (DDIM-25, guidance 3)."""
        from tinygen.data.image_folder import save_image_grid

        rows = self.rows["val"][:8]
        gen = torch.Generator().manual_seed(0)
        cond = {"embedding": self.embeddings.image_emb[rows]}
        if self.model.config.clip_image.captions:
            cond["tokens"] = self.embeddings.tokens[rows]
        device = next(model.parameters()).device
        cond = {k: v.to(device) for k, v in cond.items()}
        out = model.generate(len(rows), cond=cond, guidance=3.0, steps=25, generator=gen).cpu()
        real = self.images[rows].float() / 127.5 - 1
        save_image_grid(torch.cat([real, out]), Path(run_dir) / "samples.png", nrow=8, scale=4)


_GLIDE = GLIDE_PRESETS["shapes"]
_SHAPES_UNET = _GLIDE.model.unet  # GLIDE's shapes U-Net (32 px, concat-kv): a fair comparison
# GLIDE's tiny U-Net with a third level, so that 8 px (attention) exists at 16 and 32 px
_TINY_UNET = dataclasses.replace(GLIDE_PRESETS["tiny"].model.unet, channel_mult=(1, 2, 2))

PRIOR_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        PriorConfig(width=32, layers=1, heads=2),
        TrainConfig(
            max_iters=30,
            batch_size=32,
            learning_rate=1e-3,
            warmup_iters=5,
            eval_interval=30,
            eval_iters=1,
            log_interval=10,
            weight_decay=0.0,
        ),
        description="seconds-long smoke test",
        extras={"data": UnclipData(train_images=256)},
    ),  # fmt: skip
    "shapes": Preset(
        PriorConfig(width=128, layers=4, heads=4),
        TrainConfig(
            max_iters=2500,
            batch_size=128,
            learning_rate=1e-3,
            min_lr=1e-4,
            warmup_iters=100,
            eval_interval=500,
            eval_iters=4,
            log_interval=20,
            weight_decay=0.01,
            ema_decay=0.999,
        ),
        description="the CPU recipe of docs/benchmarks.md (unclip): 4 layers, width 128",
        extras={"data": UnclipData()},
    ),  # fmt: skip
}
DECODER_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        DiffusionConfig(
            unet=_TINY_UNET,
            conditioning="clip_image",
            clip_image=ClipImageConditionerConfig(width=32),
        ),
        TrainConfig(
            max_iters=20,
            batch_size=8,
            learning_rate=1e-3,
            warmup_iters=5,
            eval_interval=20,
            eval_iters=1,
            log_interval=10,
            weight_decay=0.0,
        ),
        description="seconds-long smoke test: GLIDE's tiny U-Net at CLIP's image size",
        extras={"data": UnclipData(train_images=256)},
    ),  # fmt: skip
    "shapes": Preset(
        dataclasses.replace(
            _GLIDE.model,
            conditioning="clip_image",
            clip_image=ClipImageConditionerConfig(width=128),
        ),
        dataclasses.replace(_GLIDE.train, max_iters=4000),
        description="GLIDE's shapes recipe (U-Net, cosine, v-prediction, batch 48, EMA), "
        "conditioned on CLIP image embeddings instead of the caption",
        extras={"data": UnclipData()},
    ),  # fmt: skip
}


def preset(kind: str, name: str) -> Preset:
    presets = PRIOR_PRESETS if kind == PRIOR_TYPE else DECODER_PRESETS
    if name not in presets:
        raise TinygenError(f"unknown --preset {name!r}; choose one of {', '.join(presets)}")
    return presets[name]


def _clip_record(clip_run: str | Path) -> tuple[dict, object]:
    from tinygen.recipes.clip import load_clip

    if not Path(clip_run).is_dir():
        raise TinygenError(f"--clip {clip_run} does not exist; train one with `tinygen train clip`")
    clip, _, _ = load_clip(clip_run)
    record = {
        "run": str(clip_run),
        "fingerprint": clip_fingerprint(clip_run),
        "embed_dim": clip.config.embed_dim,
    }
    return record, clip


def train_prior(
    clip_run: str | Path,
    config: PriorConfig,
    train_config: TrainConfig,
    data: UnclipData,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the diffusion prior of `clip_run` into `out` (tokenizer and cache beside it)."""
    record, _ = _clip_record(clip_run)
    tokenizer = world_tokenizer()
    embeddings, _ = clip_embeddings(clip_run, out, tokenizer, data, progress=progress)
    config = dataclasses.replace(
        config, embed_dim=record["embed_dim"], vocab_size=tokenizer.vocab_size,
        context_length=tokenizer.context_length,
    )  # fmt: skip
    torch.manual_seed(train_config.seed)
    model = DiffusionPrior(config)
    run_config = {
        "model_type": PRIOR_TYPE,
        "model": dataclasses.asdict(config),
        "data": {"world": "shapes", **dataclasses.asdict(data)},
        "clip": record,
    }
    return fit(
        PriorTask(model, embeddings), train_config, out, run_config,
        resume=resume, progress=progress, on_start=tokenizer.save,
    )  # fmt: skip


def train_decoder(
    clip_run: str | Path,
    config: DiffusionConfig,
    train_config: TrainConfig,
    data: UnclipData,
    out: str | Path,
    *,
    prior: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the decoder of `clip_run` into `out`; components.json names the CLIP run and
    (if given, trained or not yet) the prior run that go with it."""
    record, clip = _clip_record(clip_run)
    tokenizer = world_tokenizer()
    embeddings, _ = clip_embeddings(clip_run, out, tokenizer, data, progress=progress)
    size = clip.config.image_size
    clip_image = dataclasses.replace(config.clip_image, embed_dim=record["embed_dim"])
    if clip_image.captions:
        text = dataclasses.replace(
            clip_image.text, vocab_size=tokenizer.vocab_size,
            context_length=tokenizer.context_length,
        )  # fmt: skip
        clip_image = dataclasses.replace(clip_image, text=text)
    unet = dataclasses.replace(config.unet, image_size=size)
    config = dataclasses.replace(
        config, unet=unet, conditioning="clip_image", clip_image=clip_image
    )
    torch.manual_seed(train_config.seed)
    model = DiffusionModel(config)
    images = training_images(data, size)
    run_config = {
        "model_type": DECODER_TYPE,
        "model": dataclasses.asdict(config),
        "data": {"world": "shapes", **dataclasses.asdict(data)},
        "clip": record,
    }
    out = Path(out)

    def on_start(run_dir: Path) -> None:
        tokenizer.save(run_dir)
        write_components(run_dir, clip=clip_run, prior=prior)

    return fit(
        DecoderTask(model, embeddings, images), train_config, out, run_config,
        resume=resume, progress=progress, on_start=on_start,
    )  # fmt: skip


def write_components(
    decoder_run: str | Path, *, clip: str | Path, prior: str | Path | None
) -> None:
    """components.json: the CLIP and prior runs, as paths relative to the decoder run."""
    from tinygen.io import write_json

    def rel(path: str | Path | None) -> str | None:
        return (
            None
            if path is None
            else os.path.relpath(Path(path).resolve(), Path(decoder_run).resolve())
        )

    write_json(Path(decoder_run) / COMPONENTS_FILE, {"clip": rel(clip), "prior": rel(prior)})


def load_unclip(
    run: str | Path,
    *,
    which: str = "ema",
    device: str | torch.device = "cpu",
    prior: str | Path | None = None,
    clip: str | Path | None = None,
    **options,
) -> UnCLIP:
    """The unCLIP pipeline of a decoder run: its components.json names the CLIP and prior
    runs; `prior` / `clip` override them."""
    from tinygen.models.runs import load_run_config

    kind = load_run_config(run).get("model_type")
    if kind == PRIOR_TYPE:
        raise TinygenError(
            f"{run} is an unCLIP prior, which paints nothing alone; pass the decoder run "
            "(its components.json names the prior) or `--prior` with it"
        )
    if kind != DECODER_TYPE:
        raise TinygenError(f"{run} holds a {kind} run, not an unCLIP decoder")
    named = read_components(run)
    clip = clip or named["clip"]
    prior = prior or named["prior"]
    if clip is None:
        raise TinygenError(f"decoder {run} names no CLIP run ({COMPONENTS_FILE}); pass --clip RUN")
    for what, path in (("CLIP", clip), ("prior", prior)):
        if path is not None and not Path(path).is_dir():
            raise TinygenError(
                f"decoder {run} goes with {what} run {path}, which does not exist; pass "
                f"--{what.lower()} RUN (or train it)"
            )
    return UnCLIP.from_runs(
        clip=clip, decoder=run, prior=prior, which=which, device=device, **options
    )
