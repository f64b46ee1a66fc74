"""The latent-diffusion paper's speed claim at 64 px, side by side in one process: training
images/s and sampling images/s of the latent-diffusion shapes preset (f = 4 latents, 16x16x3)
against pixel-space diffusion with the same U-Net family (GLIDE's shapes recipe moved to 64 px,
its attention at the lowest level as at 32 px), same batches, same thread count.

- training: `--train-steps` timed optimiser steps (after one warm-up) of batch `--batch-size`;
  the latent model's step draws its latents from the encoded pool (the recipe's default),
  and the cost of encoding a batch instead is timed on its own (`encode_s_per_batch`);
- sampling: DDIM-`--steps` with classifier-free guidance (both branches, one batched
  forward), `--sample-batch` images, one timed batch; the latent model's time includes
  decoding.

The issue asks sampling latent >= 3x pixel. The weights are random (speed does not depend
on them); `--autoencoder RUN` uses a trained first stage instead of the shapes config.

    OMP_NUM_THREADS=2 python benchmarks/latent_vs_pixel.py --threads 2         # the figure
    python benchmarks/latent_vs_pixel.py --quick                               # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from tinygen.diffusion.sampling import SamplerConfig
from tinygen.models.autoencoder import Autoencoder, AutoencoderConfig
from tinygen.models.diffusion import DiffusionModel
from tinygen.models.latent_diffusion import (
    LatentDiffusion,
    LatentDiffusionConfig,
    LatentDiffusionModel,
    latent_unet_config,
)
from tinygen.recipes import glide as glide_recipes
from tinygen.recipes import latent_diffusion as ldm_recipes
from tinygen.recipes.glide import CaptionData, captioned_batch, world_tokenizer
from tinygen.train.config import TrainConfig
from tinygen.train.optim import make_optimizer


def with_text(config, tokenizer):
    text = dataclasses.replace(
        config.text, vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length
    )
    return dataclasses.replace(config, text=text)


def build_models(autoencoder_run: str | None, tokenizer):
    if autoencoder_run:
        first_stage, scale = ldm_recipes.load_first_stage(autoencoder_run)
    else:
        first_stage, scale = Autoencoder(AutoencoderConfig.shapes("kl", 4)).eval(), 1.0
    f, c = first_stage.downsample_factor, first_stage.latent_channels
    ldm_preset = ldm_recipes.PRESETS["shapes"].model
    unet = latent_unet_config(ldm_preset.unet, latent_size=64 // f, latent_channels=c)
    latent_config = LatentDiffusionConfig(
        diffusion=with_text(dataclasses.replace(ldm_preset, unet=unet), tokenizer),
        image_size=64, downsample_factor=f, latent_channels=c, scale_factor=scale,
    )  # fmt: skip
    denoiser = LatentDiffusionModel(latent_config)
    glide = glide_recipes.PRESETS["shapes"].model
    lowest = 64 // glide.unet.downsample_factor  # GLIDE attends at its lowest level (8 of 32)
    pixel_unet = dataclasses.replace(glide.unet, image_size=64, attention_resolutions=(lowest,))
    pixel = DiffusionModel(with_text(dataclasses.replace(glide, unet=pixel_unet), tokenizer))
    return first_stage, denoiser, pixel


def time_training(model, x0_fn, tokens, batch_size: int, steps: int) -> float:
    """Seconds per optimiser step (median of `steps`, after one warm-up)."""
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-4), "cpu")
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        x0 = x0_fn()
        t = torch.randint(model.config.num_train_timesteps, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(batch_size, generator=gen) < 0.1
        loss = model.training_loss(x0, noise, t, {"tokens": tokens}, drop)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=48, help="training batch (48)")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (50)")
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--autoencoder", default=None, help="a trained autoencoder run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.train_steps, args.steps, args.sample_batch = 4, 1, 2, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = world_tokenizer()
    first_stage, denoiser, pixel = build_models(args.autoencoder, tokenizer)
    batch = captioned_batch(CaptionData(image_size=64), "train", args.batch_size, seed=0)
    tokens = tokenizer.encode_batch(batch.captions)
    with torch.no_grad():
        start = time.perf_counter()
        z = first_stage.encode_latents(batch.images, generator=torch.Generator().manual_seed(0))
        encode_s = time.perf_counter() - start
    latents = z * denoiser.latent_config.scale_factor
    results = {"threads": args.threads, "batch_size": args.batch_size}
    results["encode_s_per_batch"] = encode_s
    results["latent_train_s"] = time_training(
        denoiser, lambda: latents, tokens, args.batch_size, args.train_steps
    )
    results["pixel_train_s"] = time_training(
        pixel, lambda: batch.images, tokens, args.batch_size, args.train_steps
    )
    prompts = (glide_recipes.SAMPLE_PROMPTS * args.sample_batch)[: args.sample_batch]
    sample_tokens = tokenizer.encode_batch(prompts)
    sampler = SamplerConfig(steps=args.steps)
    ldm = LatentDiffusion(first_stage, denoiser.eval(), denoiser.latent_config.scale_factor)
    for name, run in (
        ("latent", lambda g: ldm.generate(sample_tokens, guidance=args.guidance,
                                          sampler=sampler, generator=g)),
        ("pixel", lambda g: pixel.eval().denoise(len(prompts), cond={"tokens": sample_tokens},
                                                 guidance=args.guidance, sampler=sampler,
                                                 generator=g)),
    ):  # fmt: skip
        start = time.perf_counter()
        with torch.no_grad():
            run(torch.Generator().manual_seed(0))
        results[f"{name}_sample_s"] = time.perf_counter() - start
    n, b = args.sample_batch, args.batch_size
    table = {
        "training images/s": (b / results["latent_train_s"], b / results["pixel_train_s"]),
        "sampling images/s": (n / results["latent_sample_s"], n / results["pixel_sample_s"]),
    }
    print(
        f"64 px, {args.threads} thread(s); DDIM-{args.steps} with CFG, batch {n}; training "
        f"batch {b} (encoding a batch instead of the pool: +{encode_s:.2f} s a step)"
    )
    print("| measure | latent (f = 4) | pixel | latent / pixel |")
    print("|---|---|---|---|")
    for key, (latent, pixel_rate) in table.items():
        print(f"| {key} | {latent:.2f} | {pixel_rate:.2f} | {latent / pixel_rate:.1f}x |")
        results[key.replace(" ", "_").replace("/", "_per_")] = [latent, pixel_rate]
    print(f"| parameters (M) | {denoiser.num_params() / 1e6:.2f} | "
          f"{pixel.num_params() / 1e6:.2f} | |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
