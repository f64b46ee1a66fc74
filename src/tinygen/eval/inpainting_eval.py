"""Measuring inpainting: replace one object by another, at the same place.

Each test image (a seen (colour, shape) pair) gets a box mask around its object and a prompt
naming a *different* colour and a *different* shape, with the object's own size and
position ("a small blue star on the left" where a red circle was). The shapes evaluator
then says whether the result shows the new object (colour and shape; all four attributes),
and the pixels outside the mask are compared with the input (the sampler replaces them at
every step, so the error should be exactly 0 for a pixel model; a latent-diffusion run
inpaints by latent blending and decodes the whole image, so there the error outside is the
autoencoder's reconstruction error plus what leaks across the mask's edge -- reported as the
mean absolute error and the PSNR outside).
"""

from __future__ import annotations

import math
import time

import torch

from tinygen.data.inpainting_masks import box_masks
from tinygen.data.shapes import (
    ATTRIBUTES,
    COLORS,
    HELDOUT_COMBOS,
    SHAPES,
    canonical_prompt,
    combo_index,
    generate_shapes,
)
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.eval.fidelity import prompt_fidelity


def replacement_objects(batch, seed: int = 0) -> list[dict[str, str]]:
    """Per image, the object to paint: another colour and another shape (a seen pair), the
    image's own size and position."""
    gen = torch.Generator().manual_seed(seed)
    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    objects = []
    for i in range(len(batch)):
        old = {k: ATTRIBUTES[k][int(batch.labels[k][i])] for k in ATTRIBUTES}
        while True:
            color = COLORS[int(torch.randint(len(COLORS), (1,), generator=gen))]
            shape = SHAPES[int(torch.randint(len(SHAPES), (1,), generator=gen))]
            fresh = color != old["color"] and shape != old["shape"]
            if fresh and combo_index(color, shape) not in heldout:
                break
        objects.append(
            {"color": color, "shape": shape, "size": old["size"], "position": old["position"]}
        )
    return objects


@torch.no_grad()
def evaluate_inpainting(
    pipeline,
    *,
    n: int = 256,
    guidance: float = 3.0,
    sampler: SamplerConfig | None = None,
    batch_size: int = 64,
    seed: int = 0,
    evaluator=None,
) -> dict:
    from tinygen.eval.fidelity import load_evaluator

    evaluator = evaluator if evaluator is not None else load_evaluator()
    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    pool = generate_shapes(2 * n, split="test", seed=seed, image_size=pipeline.image_size)
    keep = [
        i
        for i in range(len(pool))
        if combo_index(COLORS[int(pool.labels["color"][i])], SHAPES[int(pool.labels["shape"][i])])
        not in heldout
    ][:n]
    batch = pool.select(keep)
    masks = box_masks(batch.masks, margin=2)
    objects = replacement_objects(batch, seed)
    prompts = [canonical_prompt(**o) for o in objects]
    start = time.perf_counter()
    parts = []
    for i in range(0, n, batch_size):
        gen = torch.Generator().manual_seed(seed + i)
        parts.append(
            pipeline.inpaint(
                batch.images[i : i + batch_size],
                masks[i : i + batch_size],
                prompts[i : i + batch_size],
                guidance=guidance,
                sampler=sampler,
                generator=gen,
            ).cpu()
        )
    result = torch.cat(parts)
    seconds = time.perf_counter() - start
    fidelity = prompt_fidelity(result, prompts, evaluator=evaluator)
    short = [canonical_prompt(o["color"], o["shape"]) for o in objects]
    new_object = prompt_fidelity(result, short, evaluator=evaluator)["all"]
    outside = masks.expand_as(result) == 0
    error = (result - batch.images).abs()[outside]
    return {
        "n": n,
        "guidance": guidance,
        "new_object": new_object,
        "new_object_stderr": math.sqrt(max(new_object * (1 - new_object), 1e-12) / n),
        "all": fidelity["all"],
        **{k: fidelity[k] for k in ATTRIBUTES if k in fidelity},
        "outside_max_abs_error": float(error.max()),
        "outside_mean_abs_error": float(error.mean()),
        "outside_psnr": psnr(float(error.square().mean())),
        "mask_fraction": float(masks.mean()),
        "seconds": seconds,
    }


def psnr(mse: float) -> float | None:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE);
    None (infinite) when they are equal."""
    return None if mse == 0 else 10 * math.log10(4.0 / mse)
