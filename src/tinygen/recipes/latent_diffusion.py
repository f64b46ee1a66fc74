"""Latent diffusion on the shapes world at 64 px: the data, the Trainer task, the presets, the
one self-contained run, and loading it back.

`train_latent_diffusion` freezes a trained autoencoder run (`tinygen train autoencoder`),
encodes the captioned shapes images with it and trains a `LatentDiffusionModel` on the scaled
latents, with the joint text encoder (LDM) or a CLIP run's frozen text tower (SD).

Encoding: a fixed pool of training images is encoded once, at the start (its posterior
mean and standard deviation), and every batch draws from the pool a fresh posterior sample.
Measured on one CPU thread (benchmarks/latent_vs_pixel.py) with the shapes f = 4 autoencoder
(`AutoencoderConfig.shapes("kl", 4)`): encoding a batch of 48 images at 64 px takes 0.25 s,
a training step of the shapes preset's U-Net 0.32 s -- encoding every batch would make
training 1.8x slower; the 32,768-image pool costs ~3 minutes once. `--cache-size 0` encodes
every batch instead (fresh images, no pool).

A run directory holds the whole model (reloading needs nothing else):

    config.json           model_type "latent-diffusion", the LatentDiffusionConfig, the data
    model.safetensors     the denoiser (U-Net + text encoder; CLIP's frozen tower included),
    ema.safetensors       ... and its EMA (the trainer's usual files)
    tokenizer.json        the caption tokenizer (the world's, or the CLIP run's)
    autoencoder/          the frozen first stage as a run of its own: config.json + weights
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen import io
from tinygen.data.caption_tokenizer import split_words
from tinygen.data.tokenizer import load_tokenizer
from tinygen.diffusion.objective import draw_timesteps_and_noise
from tinygen.errors import TinygenError
from tinygen.models.conditioning import TextConditionerConfig
from tinygen.models.diffusion import DiffusionConfig
from tinygen.models.latent_diffusion import (
    LatentDiffusion,
    LatentDiffusionConfig,
    LatentDiffusionModel,
    encode_unscaled,
    first_stage_channels,
    first_stage_factor,
    latent_unet_config,
)
from tinygen.models.runs import load_model
from tinygen.recipes.autoencoder import load_autoencoder
from tinygen.recipes.common import Preset, fit
from tinygen.recipes.diffusion import PRESETS as DIFFUSION_PRESETS
from tinygen.recipes.glide import PRESETS as GLIDE_PRESETS
from tinygen.recipes.glide import SAMPLE_PROMPTS, CaptionData, captioned_batch, world_tokenizer
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult

MODEL_TYPE = "latent-diffusion"
AUTOENCODER_DIR = "autoencoder"  # the first stage's own run, inside the latent-diffusion run


@dataclass
class LatentCaptionData(CaptionData):
    """GLIDE's captioned shapes data at 64 px, encoded through a pool (see the module doc)."""

    image_size: int = field(default=64, metadata={"help": "image size (pixels)", "min": 16})
    cache_size: int = field(
        default=32768,
        metadata={"help": "training images encoded once at the start; 0: encode every batch",
                  "min": 0},
    )  # fmt: skip


class LatentPool:
    """A fixed set of captioned images of one split, encoded once: the posterior's mean
    and standard deviation (B, c, h, w) each (the standard deviation is 0 for a VQ first
    stage), and the captions."""

    def __init__(
        self, first_stage: nn.Module, data: LatentCaptionData, split: str, n: int,
        progress: bool = True,
    ) -> None:  # fmt: skip
        from tqdm.auto import tqdm

        means, stds, self.captions = [], [], []
        chunk = 256
        bar = tqdm(range(0, n, chunk), desc=f"encoding {n} {split} images", leave=False,
                   disable=not progress)  # fmt: skip
        device = next(first_stage.parameters()).device
        with torch.no_grad():
            for start in bar:
                batch = captioned_batch(data, split, min(chunk, n - start), seed=start // chunk)
                encoded = first_stage.encode(batch.images.to(device))
                if hasattr(encoded, "std"):  # a KL posterior
                    means.append(encoded.mean.cpu())
                    stds.append(encoded.std.cpu())
                else:
                    means.append(encode_unscaled(first_stage, batch.images.to(device)).cpu())
                    stds.append(torch.zeros_like(means[-1]))
                self.captions += batch.captions
        self.mean, self.std = torch.cat(means), torch.cat(stds)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, list[str]]:
        """Unscaled latents (a posterior sample) and captions of `batch_size` pool items."""
        index = torch.randint(len(self.captions), (batch_size,), generator=generator)
        eps = torch.randn(self.mean[index].shape, generator=generator)
        z = self.mean[index] + self.std[index] * eps
        return z, [self.captions[i] for i in index.tolist()]


class LatentDiffusionTask:
    """The Trainer task (see tinygen.train.trainer.Task): scaled latents of captioned images,
    the caption replaced by the empty one `drop_prob` of the time, the shared diffusion loss."""

    items_name = "images"

    def __init__(
        self,
        model: LatentDiffusionModel,
        first_stage: nn.Module,
        tokenizer,
        data: LatentCaptionData,
        *,
        progress: bool = True,
    ) -> None:
        self.model, self.tokenizer, self.data = model, tokenizer, data
        self.progress = progress
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.scale_factor = model.latent_config.scale_factor
        self.pools: dict[str, LatentPool] = {}

    def _latents(self, split: str, batch_size: int, generator: torch.Generator):
        if self.data.cache_size:
            if split not in self.pools:
                n = self.data.cache_size if split == "train" else min(1024, self.data.cache_size)
                self.pools[split] = LatentPool(self.first_stage, self.data, split, n,
                                               progress=self.progress)  # fmt: skip
            return self.pools[split].draw(batch_size, generator)
        seed = int(torch.randint(2**58, (1,), generator=generator))
        batch = captioned_batch(self.data, split, batch_size, seed)
        device = next(self.first_stage.parameters()).device
        with torch.no_grad():
            z = encode_unscaled(self.first_stage, batch.images.to(device), generator)
        return z.cpu(), batch.captions

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        z, captions = self._latents("train" if split == "train" else "val", batch_size, generator)
        x0 = z.float() * self.scale_factor
        t, noise = draw_timesteps_and_noise(x0.shape, self.model.config.num_train_timesteps,
                                            generator)  # fmt: skip
        drop = torch.rand(batch_size, generator=generator) < self.model.latent_config.drop_prob
        return {"x0": x0, "t": t, "noise": noise, "drop": drop,
                "tokens": self.tokenizer.encode_batch(captions)}  # fmt: skip

    def loss(self, model: nn.Module, batch: dict) -> Tensor:
        return self.model.training_loss(
            batch["x0"], batch["noise"], batch["t"], {"tokens": batch["tokens"]}, batch["drop"],
            forward=model,
        )  # fmt: skip

    def on_end(self, model: nn.Module, run_dir: str | Path) -> None:
        """A grid of DDIM-25 samples at guidance 3 for a few canonical prompts."""
        from tinygen.data.image_folder import save_image_grid
        from tinygen.diffusion.sampling import SamplerConfig

        device = next(model.parameters()).device
        ldm = LatentDiffusion(self.first_stage.to(device), model, self.scale_factor)
        known = set(self.tokenizer.words)  # (a one-object CLIP vocabulary has no relations)
        prompts = [p for p in SAMPLE_PROMPTS if set(split_words(p)) <= known]
        tokens = self.tokenizer.encode_batch(prompts).to(device)
        gen = torch.Generator().manual_seed(0)
        images = ldm.generate(tokens, guidance=3.0, sampler=SamplerConfig(steps=25), generator=gen)
        save_image_grid(images, Path(run_dir) / "samples.png", nrow=4, scale=2)


# -- presets -------------------------------------------------------------------------------

_TINY_UNET = DIFFUSION_PRESETS["tiny"].model.unet  # 16 px (the latents of 64 px at f = 4)
_GLIDE = GLIDE_PRESETS["shapes"]  # its 32 px U-Net family, text encoder and training
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        DiffusionConfig(
            unet=dataclasses.replace(_TINY_UNET, attention_resolutions=(4,)),
            conditioning="text",
            text=TextConditionerConfig(width=32, layers=1, heads=2),
        ),
        TrainConfig(
            max_iters=30,
            batch_size=8,
            learning_rate=1e-3,
            warmup_iters=5,
            eval_interval=30,
            eval_iters=1,
            log_interval=10,
            weight_decay=0.0,
        ),  # fmt: skip
        description="seconds-long smoke test: 32 px images, a two-level U-Net",
        extras={"data": LatentCaptionData(image_size=32, cache_size=64)},
    ),
    "shapes": Preset(
        _GLIDE.model,  # GLIDE's shapes recipe; latent_unet_config moves its U-Net to latents
        # 0.32 s a step on one CPU thread (batch 48, 16x16x3 latents): 6,000 steps ~32 min,
        # plus ~3 min encoding the pool
        dataclasses.replace(_GLIDE.train, max_iters=6000, eval_interval=1500, ema_decay=0.999),
        description="the CPU recipe: 64 px images as f = 4 latents, the caption's keys and values "
        "concatenated to the attention's (train latent-diffusion --attention)",
        extras={"data": LatentCaptionData()},
    ),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise TinygenError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# -- the first stage and the text encoder ----------------------------------------------------


def load_first_stage(run: str | Path, device: str | torch.device = "cpu"):
    """(autoencoder, scale factor) of an autoencoder run, frozen and in eval mode."""
    model, scale = load_autoencoder(Path(run), device=device)  # (its discriminator dropped)
    return model.eval().requires_grad_(False), float(scale)


def save_first_stage(autoencoder: nn.Module, scale_factor: float, out: str | Path) -> Path:
    """Write the frozen first stage into out/autoencoder/ as a run of its own."""
    sub = Path(out) / AUTOENCODER_DIR
    sub.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(autoencoder.config, scaling_factor=scale_factor)
    io.save_weights(autoencoder, sub / io.MODEL_FILE)
    io.write_json(sub / io.CONFIG_FILE, {"model_type": "autoencoder", "scale_factor": scale_factor,
                                         "model": dataclasses.asdict(config)})  # fmt: skip
    return sub


def parse_text_encoder(value: str) -> tuple[str, Path | None]:
    """`joint` or `clip:RUN` -> (kind, CLIP run)."""
    if value == "joint":
        return "joint", None
    if value.startswith("clip:") and value[5:]:
        return "clip", Path(value[5:])
    raise TinygenError(
        f"--text-encoder {value!r}: use `joint` (trained with the U-Net) or `clip:RUN` (the "
        "frozen text tower of a CLIP run, e.g. clip:runs/clip)"
    )


def clip_text_encoder(run: Path):
    """(CLIP model config dict, text tower state dict, tokenizer) of a CLIP run."""
    from tinygen.data.caption_tokenizer import CaptionTokenizer
    from tinygen.recipes.clip import load_clip

    clip, tokenizer, config = load_clip(run)
    if config["model"].get("text_tower", "transformer") != "transformer" or not isinstance(
        tokenizer, CaptionTokenizer
    ):
        raise TinygenError(
            f"{run}: latent diffusion reads a CLIP run with its own text Transformer; this one "
            "uses --text-tower minilm. Train one with `tinygen train clip`"
        )
    return dataclasses.asdict(clip.config), clip.text.state_dict(), tokenizer


def one_object_data_if_needed(data: LatentCaptionData, tokenizer, clip_run: Path):
    """A CLIP run trained on one-object captions has no words for relations ("above", "to
    the left of"): then train on one-object scenes only, and say so."""
    missing = sorted(set(world_tokenizer().words) - set(tokenizer.words))
    if not missing or data.pair_fraction == 0:
        return data
    print(
        f"the CLIP run {clip_run} has no tokens for {', '.join(missing)} (it never saw "
        "two-object captions): training on one-object scenes only (--pair-fraction 0)",
        file=sys.stderr,
    )
    return dataclasses.replace(data, pair_fraction=0.0)


# -- training --------------------------------------------------------------------------------


def train_latent_diffusion(
    autoencoder: str | Path,
    diffusion: DiffusionConfig,
    train_config: TrainConfig,
    data: LatentCaptionData,
    out: str | Path,
    *,
    text_encoder: str = "joint",
    drop_prob: float = 0.1,
    attention: str = "concat_kv",
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train latent diffusion on the latents of the autoencoder run `autoencoder` into the
    run directory `out` (the autoencoder, tokenizer and text tower are copied in)."""
    data.validate()
    kind, clip_run = parse_text_encoder(text_encoder)
    first_stage, scale = load_first_stage(autoencoder)
    factor, channels = first_stage_factor(first_stage), first_stage_channels(first_stage)
    if data.image_size % (factor * diffusion.unet.downsample_factor):
        raise TinygenError(
            f"--image-size {data.image_size} must be a multiple of {factor} (the "
            f"autoencoder's factor) x {diffusion.unet.downsample_factor} (the U-Net's)"
        )
    unet = latent_unet_config(diffusion.unet, latent_size=data.image_size // factor,
                              latent_channels=channels, attention=attention)  # fmt: skip
    clip_config, clip_weights = {}, None
    if kind == "clip":
        clip_config, clip_weights, tokenizer = clip_text_encoder(clip_run)
        data = one_object_data_if_needed(data, tokenizer, clip_run)
        diffusion = dataclasses.replace(diffusion, conditioning="none", unet=unet)
    else:
        tokenizer = world_tokenizer()
        text = dataclasses.replace(diffusion.text, vocab_size=tokenizer.vocab_size,
                                   context_length=tokenizer.context_length)  # fmt: skip
        diffusion = dataclasses.replace(diffusion, conditioning="text", text=text, unet=unet)
    config = LatentDiffusionConfig(
        diffusion=diffusion, text_encoder=kind, clip_text=clip_config, drop_prob=drop_prob,
        image_size=data.image_size, downsample_factor=factor, latent_channels=channels,
        scale_factor=scale,
    )  # fmt: skip
    torch.manual_seed(train_config.seed)
    model = LatentDiffusionModel(config)
    if clip_weights is not None:
        model.conditioner.text.load_state_dict(clip_weights)
    run_config = {
        "model_type": MODEL_TYPE,
        "model": dataclasses.asdict(config),
        "data": {"world": "shapes", **dataclasses.asdict(data)},
        "autoencoder_run": str(autoencoder),
        "text_encoder_run": str(clip_run) if clip_run else None,
    }

    def on_start(run_dir: Path) -> None:
        tokenizer.save(run_dir)
        save_first_stage(first_stage, scale, run_dir)
        print(f"first stage: f = {factor}, {channels} latent channels, scale factor "
              f"{scale:.4g}, from {autoencoder}", file=sys.stderr)  # fmt: skip

    task = LatentDiffusionTask(model, first_stage, tokenizer, data, progress=progress)
    return fit(task, train_config, out, run_config, resume=resume, progress=progress,
               on_start=on_start)  # fmt: skip


# -- loading ---------------------------------------------------------------------------------


def load_latent_diffusion(
    run: str | Path, *, which: str = "ema", device: str | torch.device = "cpu"
) -> tuple[LatentDiffusion, object, dict]:
    """(LatentDiffusion, tokenizer, config.json) of a latent-diffusion run, from its own
    directory alone. A missing or damaged autoencoder inside it is one error."""
    run = Path(run)
    denoiser, config = load_model(run, which=which, device=device, expect=MODEL_TYPE)
    sub = run / AUTOENCODER_DIR
    missing = [p for p in (sub / io.CONFIG_FILE, sub / io.MODEL_FILE) if not p.is_file()]
    if missing:
        raise TinygenError(
            f"{run} is a latent-diffusion run but its autoencoder is missing "
            f"({', '.join(str(p) for p in missing)}); the run is incomplete: copy the whole "
            "run directory again, or retrain it with `tinygen train latent-diffusion`"
        )
    try:
        first_stage, _ = load_model(sub, which="last", device=device, expect="autoencoder")
    except TinygenError as e:
        raise TinygenError(
            f"{run}: the autoencoder inside the run cannot be loaded ({e}); copy the run "
            "again or retrain it"
        ) from e
    if hasattr(first_stage, "without_discriminator"):
        first_stage = first_stage.without_discriminator()
    ldm = LatentDiffusion(first_stage, denoiser, denoiser.latent_config.scale_factor)
    return ldm.to(device), load_tokenizer(run), config
