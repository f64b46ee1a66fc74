"""The first stage of latent diffusion: presets, the Trainer task and `tinygen train autoencoder`,
the latent scale factor, and `load_autoencoder` for everything that runs on latents.

A run is a normal tinygen run (`model_type: "autoencoder"`, an `AutoencoderConfig`, weights in
model.safetensors) whose config.json also holds the loss (`loss`) and, once training has
finished, the latent scale factor: `scale_factor` = 1 / std of the unscaled latents of
`scale_images` training images (posterior samples for kl, the pre-quantisation latents for
vq), measured as Stable Diffusion's 0.18215 was (LDM's `scale_by_std`). Diffusion then works
on `scale_factor * z`, which has unit variance over the training data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen import io
from tinygen.data.image_data import ImageData
from tinygen.errors import TinygenError
from tinygen.eval.autoencoder_eval import psnr
from tinygen.models.autoencoder import Autoencoder, AutoencoderConfig
from tinygen.models.autoencoder_loss import AutoencoderLoss, AutoencoderLossConfig
from tinygen.models.runs import load_model
from tinygen.recipes.common import fit
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult

PRESET_NAMES = ("tiny", "shapes")


@dataclass
class AutoencoderData:
    """The shapes world at `image_size`: `n_train` training and `n_val` validation images."""

    image_size: int = field(default=64, metadata={"help": "image side in pixels", "min": 8})
    n_train: int = field(default=6000, metadata={"help": "training images", "min": 2})
    n_val: int = field(default=256, metadata={"help": "validation images", "min": 1})
    data_seed: int = field(default=0, metadata={"help": "seed of the drawn images", "min": 0})
    scale_images: int = field(
        default=2048,
        metadata={"help": "training images the latent scale factor is measured on", "min": 2},
    )


@dataclass(frozen=True)
class AutoencoderPreset:
    """A named recipe; the model is `model(kind, factor)` (the preset fixes the widths)."""

    widths: dict
    train: TrainConfig
    data: AutoencoderData
    loss: AutoencoderLossConfig
    description: str = ""

    def model(self, kind: str, factor: int) -> AutoencoderConfig:
        return AutoencoderConfig.shapes(kind, factor, **self.widths)


PRESETS: dict[str, AutoencoderPreset] = {
    "tiny": AutoencoderPreset(
        widths={"base_channels": 8, "norm_groups": 8, "num_embeddings": 64},
        train=TrainConfig(
            max_iters=30,
            batch_size=8,
            learning_rate=2e-3,
            warmup_iters=5,
            eval_interval=15,
            eval_iters=2,
            log_interval=5,
            weight_decay=0.0,
        ),
        data=AutoencoderData(image_size=32, n_train=128, n_val=32, scale_images=64),
        loss=AutoencoderLossConfig(gan_start=10),
        description="seconds-long smoke test: 32 px, width 8",
    ),
    "shapes": AutoencoderPreset(
        # width 16 at full resolution: at equal CPU time it reconstructed better than width 32
        # (400 steps in 50 s: 20.6 dB vs 19.6 dB after 170 steps), so the recipe buys steps.
        # 4 GroupNorm groups of 4 channels: with 16 groups of one channel each, every norm --
        # the decoder's last one included -- removes each channel's spatial mean, which is a
        # flat background's colour. Measured (kl, f = 4, 4,000 steps, loaded 2-core machine):
        # 16 groups 29.4 dB, judge agreement 94.3% (grey-shifted backgrounds, the thin arms
        # of small stars and crosses); 4 groups 31.4 dB, 99.4% (docs/benchmarks.md).
        widths={"base_channels": 16, "norm_groups": 4},
        train=TrainConfig(
            max_iters=4000,
            batch_size=16,
            learning_rate=1e-3,
            warmup_iters=100,
            eval_interval=1000,
            eval_iters=4,
            log_interval=50,
            weight_decay=0.0,
            beta1=0.5,  # taming's Adam betas (0.5, 0.9), usual for a GAN-trained first stage
            beta2=0.9,
        ),
        data=AutoencoderData(),
        loss=AutoencoderLossConfig(gan_start=2000),
        description="the CPU recipe: 64 px shapes, width 16 in 4 norm groups, 4,000 steps of 16",
    ),
}

DISCRIMINATOR_CHANNELS = 32  # the --gan discriminator's width (pix2pix's 64, halved for a CPU)
GAN_WEIGHT = 0.5  # LDM's disc_weight for its KL autoencoders


def preset(name: str) -> AutoencoderPreset:
    if name not in PRESETS:
        raise TinygenError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


class AutoencoderTask:
    """The Trainer task of a first stage (see tinygen.train.trainer.Task)."""

    items_name = "images"

    def __init__(
        self,
        model: Autoencoder,
        data: ImageData,
        loss: AutoencoderLossConfig,
        *,
        scale_images: int = 2048,
    ) -> None:
        self.model, self.data = model, data
        self.loss_fn = AutoencoderLoss(loss, model)
        self.scale_images = scale_images

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> Tensor:
        images, _ = self.data.draw(split, batch_size, generator)
        return images

    def loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        return self.loss_fn(model, batch)[0]

    def after_step(self, model: nn.Module) -> None:
        if getattr(model, "discriminator", None) is not None:
            model.discriminator.steps += 1

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Validation PSNR (dB), the latents' std, and for vq the codebook's perplexity and
        dead codes over the validation images."""
        device = next(model.parameters()).device
        images = self.data.images["val"][:256].to(device)
        stats = reconstruction_stats(model, images)
        return {k: v for k, v in stats.items() if k != "psnr_per_image"}

    def on_end(self, model: nn.Module, run_dir: str | Path) -> None:
        """Measure and store the latent scale factor and the training time; draw
        reconstructions.png (originals above, reconstructions below)."""
        from tinygen.data.image_folder import save_image_grid

        run_dir = Path(run_dir)
        train_images = self.data.images["train"][: self.scale_images]
        scale = measure_scale_factor(model, train_images)
        record_run_facts(run_dir, scale, len(train_images))
        images = self.data.images["val"][:8]
        with torch.no_grad():
            device = next(model.parameters()).device
            recon = model(images.to(device), sample_posterior=False)[0].cpu().clamp(-1, 1)
        save_image_grid(torch.cat([images, recon]), run_dir / "reconstructions.png", nrow=8)


@torch.no_grad()
def reconstruction_stats(model: Autoencoder, images: Tensor, batch_size: int = 64) -> dict:
    """PSNR (mean, s.e., per image), latent std, and for vq the codebook perplexity and dead
    codes, over `images` reconstructed from the posterior mean (kl) or the codes (vq)."""
    values, latents, codes = [], [], []
    for chunk in images.split(batch_size):
        recon, reg = model(chunk, sample_posterior=False)
        values.append(psnr(chunk, recon.clamp(-1, 1)))
        if model.quantizer is not None:
            codes.append(reg.indices.flatten())
        latents.append(model.encode_latents(chunk).flatten())
    per_image = torch.cat(values)
    out = {
        "psnr": per_image.mean().item(),
        "psnr_se": (per_image.std() / math.sqrt(len(per_image))).item()
        if len(per_image) > 1
        else 0.0,
        "latent_std": torch.cat(latents).std().item(),
        "psnr_per_image": per_image,
    }
    if codes:
        from tinygen.nn.quantize import code_perplexity

        every = torch.cat(codes)
        k = model.config.num_embeddings
        out["perplexity"] = code_perplexity(every, k).item()
        out["dead_codes"] = int((torch.bincount(every, minlength=k) == 0).sum())
    return out


@torch.no_grad()
def measure_scale_factor(
    model: Autoencoder, images: Tensor, *, seed: int = 0, batch_size: int = 128
) -> float:
    """1 / std of the unscaled latents of `images` (all entries together, as LDM's
    `z.flatten().std()`): posterior samples (seeded) for kl, pre-quantisation latents for vq."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    latents = [
        model.encode_latents(chunk.to(device), generator=gen).flatten().cpu()
        for chunk in images.split(batch_size)
    ]
    model.train(was_training)
    std = torch.cat(latents).std().item()
    if not math.isfinite(std) or std <= 0:
        raise TinygenError(f"the latents' std is {std}; the autoencoder did not train")
    return 1.0 / std


def training_seconds(run_dir: str | Path) -> float:
    """The run's training time from metrics.jsonl: each train-loss row covers the steps since
    the previous one at its logged throughput (evaluations left out; resumes add up)."""
    config = io.read_json(Path(run_dir) / io.CONFIG_FILE)
    train = config.get("train", {})
    per_step = train.get("batch_size", 1) * train.get("grad_accum", 1) * config.get("world_size", 1)
    seconds, previous = 0.0, 0
    path = Path(run_dir) / io.METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    for row in rows:
        if "images_per_s" in row and row["images_per_s"] > 0:
            seconds += (row["step"] - previous) * per_step / row["images_per_s"]
            previous = row["step"]
    return seconds


def record_run_facts(run_dir: Path, scale: float, n_images: int) -> None:
    """Write the scale factor and the training time into the run's config.json."""
    config = io.read_json(run_dir / io.CONFIG_FILE)
    config["scale_factor"] = scale
    config["scale_factor_images"] = n_images
    config["train_seconds"] = training_seconds(run_dir)
    io.write_json(run_dir / io.CONFIG_FILE, config)


def check_same_loss(out: Path, loss: AutoencoderLossConfig) -> None:
    """A resumed run keeps its loss (the trainer checks the model config, not this)."""
    path = out / io.CONFIG_FILE
    if not path.is_file():
        return
    saved = io.read_json(path).get("loss")
    now = json.loads(json.dumps(dataclasses.asdict(loss)))
    if saved is not None and saved != now:
        changed = [
            f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in now.items() if saved.get(k) != v
        ]
        raise TinygenError(
            f"cannot resume: {out} was trained with another loss ({'; '.join(changed)}); "
            "repeat the original command's flags with --resume"
        )


def train_autoencoder(
    config: AutoencoderConfig,
    train_config: TrainConfig,
    data: AutoencoderData,
    loss: AutoencoderLossConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a first stage on the shapes world into the run directory `out`; at the end the
    run holds its latent scale factor (`load_autoencoder` reads it)."""
    out = Path(out)
    if loss.gan_weight > 0 and config.discriminator_channels == 0:
        config = dataclasses.replace(config, discriminator_channels=DISCRIMINATOR_CHANNELS)
    if resume:
        check_same_loss(out, loss)
    images = ImageData(
        "shapes",
        image_size=data.image_size,
        n_train=max(data.n_train, data.scale_images),
        n_val=data.n_val,
        seed=data.data_seed,
    )
    torch.manual_seed(train_config.seed)
    model = Autoencoder(config)
    run_config = {
        "model_type": "autoencoder",
        "model": dataclasses.asdict(config),
        "loss": dataclasses.asdict(loss),
        "data": {"source": "shapes", **dataclasses.asdict(data)},
    }
    task = AutoencoderTask(model, images, loss, scale_images=data.scale_images)
    return fit(task, train_config, out, run_config, resume=resume, progress=progress)


def load_autoencoder(
    run: str | Path, device: str | torch.device = "cpu"
) -> tuple[Autoencoder, float]:
    """(model, scale_factor) of a finished autoencoder run, in eval mode, the discriminator
    dropped; `model.config.scaling_factor` is set to the run's scale factor too. Latent
    diffusion works on `scale_factor * model.encode_latents(images)`."""
    model, config = load_model(run, which="ema", device=device, expect="autoencoder")
    scale = config.get("scale_factor")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise TinygenError(
            f"{run} has no latent scale factor (it is measured when training finishes); "
            f"finish the run with `tinygen train autoencoder --out {run} --resume` and the "
            "flags it was started with"
        )
    model = model.without_discriminator()
    model.config = dataclasses.replace(model.config, scaling_factor=float(scale))
    return model, float(scale)


def announce(result: TrainResult, out: Path) -> None:
    config = io.read_json(out / io.CONFIG_FILE)
    if "scale_factor" in config:
        print(f"latent scale factor {config['scale_factor']:.5f}", file=sys.stderr)
