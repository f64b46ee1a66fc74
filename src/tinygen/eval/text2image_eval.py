"""Measuring a text-to-image pipeline on the shapes world: fidelity, diversity, guidance.

Prompt sets (fixed seeds, so every setting and every model sees the same prompts):
  - `single`: test images whose (colour, shape) pair was in training, prompted with all four
    attributes ("a small green star at the bottom");
  - `heldout`: the same for the six held-out pairs (compositional generalisation);
  - `pairs`: two-object test scenes with seen pairs ("a large red circle to the left of a
    small blue square"), judged by the evaluator's slot heads (all, relation, binding_swap);
  - `partial`: seen pairs prompted with colour and shape only ("a red circle"), which leave
    size and position open. Beside fidelity they report **exact diversity on what a prompt
    leaves open**: the entropy of the judged size (position) among the images of each prompt,
    averaged over prompts, as a fraction of the world's own entropy for it (log 2, log 5: the
    generator draws them uniformly). 1 = as varied as the world, 0 = always the same. (The
    plug-in entropy of k samples is biased low by about (K - 1) / 2k nats.)
For each setting -- classifier-free guidance scale, CLIP-guidance scale -- the report holds
the fidelities with standard errors sqrt(p (1 - p) / n), the feature distance to the real
images of the prompts, CLIP's own score of the samples when a CLIP guides, and the seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from tinygen.data.shapes import (
    ATTRIBUTES,
    HELDOUT_COMBOS,
    canonical_prompt,
    combo_index,
    generate_shapes,
)
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.eval.fidelity import evaluator_features, frechet_distance, prompt_fidelity

PROMPT_SETS = ("single", "heldout", "pairs", "partial")


@dataclass
class Text2ImageSetting:
    guidance: float = 3.0
    clip_scale: float = 0.0
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0

    @property
    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(sampler=self.sampler, steps=self.steps, eta=self.eta)

    @property
    def name(self) -> str:
        text = f"{self.sampler_config.name}, guidance {self.guidance:g}"
        return text + (f", CLIP scale {self.clip_scale:g}" if self.clip_scale else "")


def _names(batch, i: int, suffix: str = "") -> dict[str, str]:
    return {
        k: ATTRIBUTES[k][int(batch.labels[k + suffix][i])]
        for k in ATTRIBUTES
        if k + suffix in batch.labels
    }


def prompt_set(name: str, n: int, *, image_size: int = 32, seed: int = 0):
    """(real images (n, 3, H, W), prompts) of prompt set `name` (see the module doc)."""
    if name not in PROMPT_SETS:
        raise TinygenError(f"unknown prompt set {name!r}; choose one of {', '.join(PROMPT_SETS)}")
    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    if name == "heldout":
        batch = generate_shapes(n, split="heldout", seed=seed, image_size=image_size)
        return batch.images, list(batch.prompts)
    two = name == "pairs"
    batch = generate_shapes(2 * n, split="test", seed=seed, image_size=image_size, two_objects=two)
    keep = []
    for i in range(len(batch)):
        combos = [combo_index(_names(batch, i)["color"], _names(batch, i)["shape"])]
        if two:
            combos.append(
                combo_index(_names(batch, i, "2")["color"], _names(batch, i, "2")["shape"])
            )
        if not heldout.intersection(combos):
            keep.append(i)
    batch = batch.select(keep[:n])
    if name == "partial":
        prompts = [
            canonical_prompt(
                **{k: v for k, v in _names(batch, i).items() if k in ("color", "shape")}
            )
            for i in range(len(batch))
        ]
        return batch.images, prompts
    return batch.images, list(batch.prompts)


def open_attribute_diversity(images: Tensor, prompts: list[str], evaluator) -> dict[str, float]:
    """For prompts naming no size / position: the judged attribute's entropy among each
    prompt's images, averaged over prompts, over the world's entropy (uniform: log K)."""
    from tinygen.data.shapes import parse_prompt

    predicted = evaluator.predict(images)
    out = {}
    for attribute in ("size", "position"):
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            if attribute not in parse_prompt(prompt):
                groups.setdefault(prompt, []).append(i)
        if not groups:
            continue
        k = len(ATTRIBUTES[attribute])
        entropies = []
        for rows in groups.values():
            counts = torch.bincount(predicted[attribute][rows], minlength=k).double()
            p = counts / counts.sum()
            entropies.append(float(-(p[p > 0] * p[p > 0].log()).sum()))
        out[f"diversity_{attribute}"] = sum(entropies) / len(entropies) / math.log(k)
    return out


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


@torch.no_grad()
def evaluate_text2image(
    pipeline,
    settings: list[Text2ImageSetting],
    *,
    prompts_name: str = "single",
    n: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    clip=None,
    evaluator=None,
    log=print,
) -> list[dict]:
    """One row per setting (see the module doc); every setting uses the same seeds."""
    from tinygen.eval.fidelity import load_evaluator

    evaluator = evaluator if evaluator is not None else load_evaluator()
    real, prompts = prompt_set(prompts_name, n, image_size=pipeline.image_size, seed=seed)
    pipeline.check_prompts(prompts)
    if any(s.clip_scale for s in settings) and clip is None:
        raise TinygenError("CLIP-guidance scales need a noised CLIP run (--clip RUN)")
    real_features = evaluator_features(real, evaluator)
    rows = []
    for setting in settings:
        start = time.perf_counter()
        parts = []
        for i in range(0, len(prompts), batch_size):
            gen = torch.Generator().manual_seed(seed + i)
            parts.append(
                pipeline.generate(
                    prompts[i : i + batch_size],
                    guidance=setting.guidance,
                    sampler=setting.sampler_config,
                    generator=gen,
                    clip=clip,
                    clip_scale=setting.clip_scale,
                ).cpu()
            )
        images = torch.cat(parts)
        seconds = time.perf_counter() - start
        fidelity = prompt_fidelity(images, prompts, evaluator=evaluator)
        row = {**asdict(setting), "prompts": prompts_name, "n": len(prompts), **fidelity}
        if prompts_name != "pairs":
            row["color_shape"] = _color_shape(images, prompts, evaluator)
        key = "all" if prompts_name == "pairs" else "color_shape"
        row["stderr"] = stderr(row[key], len(prompts))
        row["stderr_all"] = stderr(row["all"], len(prompts))
        row["feature_distance"] = frechet_distance(
            evaluator_features(images, evaluator), real_features
        )
        if prompts_name == "partial":
            row.update(open_attribute_diversity(images, prompts, evaluator))
        if clip is not None:
            row["clip_score"] = float(clip.score(images, prompts).mean())
        row["seconds"] = seconds
        rows.append(row)
        log(
            f"{setting.name}: "
            + ", ".join(
                f"{k} {row[k]:.3f}"
                for k in (
                    "all",
                    "color_shape",
                    "relation",
                    "binding_swap",
                    "diversity_size",
                    "diversity_position",
                    "clip_score",
                    "feature_distance",
                )
                if k in row
            )
            + f", n {len(prompts)}, {seconds:.0f} s"
        )
    return rows


def _color_shape(images: Tensor, prompts: list[str], evaluator) -> float:
    """Fraction of images whose colour and shape are both the prompt's."""
    from tinygen.data.shapes import parse_prompt

    short = [canonical_prompt(parse_prompt(p)["color"], parse_prompt(p)["shape"]) for p in prompts]
    return prompt_fidelity(images, short, evaluator=evaluator)["all"]
