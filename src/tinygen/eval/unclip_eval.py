"""The unCLIP figures on the shapes world (issue 13), each part on its own:

  - `prior`: does the prior land near the real images? For single-object test prompts, the
    mean cosine between the prior's embedding and the CLIP image embeddings of real test
    images of the same prompt, against the same for the raw CLIP text embedding (the
    paper's baseline, sec. 5.1); and zero-shot (colour, shape) accuracy among the 48 pairs of
    the prior's embeddings by the frozen CLIP's text classifier (with the real images' and
    the text embeddings' own accuracy beside it).
  - `ablation` (the paper's Table 1/Fig. 8 on our world): the decoder fed (a) the true CLIP
    image embedding of a matching real image, (b) the prior's, (c) the CLIP text embedding
    in place of an image embedding, and (d) a GLIDE run if given -- fidelity (colour and
    shape; all four attributes), feature distance to the real images, and within-prompt
    diversity: the mean pairwise distance of evaluator features among the images of one
    prompt (`per_prompt` images each), averaged over prompts (+- s.e. over prompts).
  - `pairs`: two-object prompts (`all`, `relation`, `binding_swap`), unCLIP beside GLIDE.
  - `rerank`: the prior's best-of-2 on and off, fidelity and diversity.
  - `variations`: of real test images; the share judged to keep the source's colour and
    shape, and the mean pixel distance (|a - b| in [0, 1] units, per pixel) to the source and
    among the variations of one source; from fresh noise and from the DDIM-inverted x_T.

Prompts come from the `test` split (`eval.text2image_eval.prompt_set`); every row of a part
uses the same prompts and the same decoder seeds. The evaluator only judges (no selection).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from tinygen.data.shapes import COLORS, SHAPES, canonical_prompt, combo_index, parse_prompt
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.eval.fidelity import evaluator_features, frechet_distance, prompt_fidelity
from tinygen.eval.text2image_eval import prompt_set, stderr

UNCLIP_PARTS = ("prior", "ablation", "pairs", "rerank", "variations")


@dataclass
class UnclipEvalSettings:
    n: int = 256  # images per row (prompts x per_prompt)
    per_prompt: int = 4  # images per prompt (diversity), variations per source
    guidance: float = 3.0  # the decoder's classifier-free scale
    steps: int = 50  # DDIM steps of the decoder
    batch_size: int = 64
    seed: int = 0
    eta: float = 1.0  # DDIM noise of the variations

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(steps=self.steps)

    def validate(self) -> None:
        if self.n < 2 * self.per_prompt or self.per_prompt < 2:
            raise TinygenError(
                f"need --per-prompt >= 2 and --n >= 2 x per-prompt (got n={self.n}, "
                f"per_prompt={self.per_prompt}): diversity compares images of one prompt"
            )


def mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error std / sqrt(n) of a 1-D tensor."""
    values = values.double().flatten()
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def within_prompt_diversity(features: Tensor, per_prompt: int) -> tuple[float, float]:
    """Mean pairwise Euclidean distance among consecutive groups of `per_prompt` feature
    rows (N, F) (one group = the images of one prompt), mean and s.e. over groups."""
    groups = features.double().view(-1, per_prompt, features.shape[-1])
    d = torch.cdist(groups, groups)  # (G, k, k)
    k = per_prompt
    return mean_se(d.sum((1, 2)) / (k * (k - 1)))


def color_shape(images: Tensor, prompts: list[str], evaluator) -> float:
    """Fraction of images whose colour and shape are the prompt's."""
    short = [canonical_prompt(parse_prompt(p)["color"], parse_prompt(p)["shape"]) for p in prompts]
    return prompt_fidelity(images, short, evaluator=evaluator)["all"]


def _batched(
    make: Callable[[slice, torch.Generator], Tensor],
    n: int,
    settings,
    desc: str,
    batch_size: int | None = None,
) -> Tensor:
    """make(rows, generator) over batches of rows, each batch with its own seeded generator
    (so every row of a table meets the same decoder noise)."""
    from tqdm.auto import tqdm

    size = batch_size or settings.batch_size
    parts = []
    for i in tqdm(range(0, n, size), desc=desc, leave=False):
        gen = torch.Generator().manual_seed(settings.seed + i)
        parts.append(make(slice(i, min(n, i + size)), gen).cpu())
    return torch.cat(parts)


def _single_prompts(pipeline, settings):
    """(all n real images, the n // per_prompt prompts' real images, the prompts repeated)."""
    real, prompts = prompt_set(
        "single", settings.n, image_size=pipeline.image_size, seed=settings.seed
    )
    m = settings.n // settings.per_prompt
    wanted = [p for p in prompts[:m] for _ in range(settings.per_prompt)]
    return real, real[:m], wanted


def image_row(images: Tensor, prompts: list[str], real: Tensor, settings, evaluator) -> dict:
    """Fidelity (+- s.e.), feature distance and within-prompt diversity of one row."""
    n = len(prompts)
    features = evaluator_features(images, evaluator)
    fidelity = prompt_fidelity(images, prompts, evaluator=evaluator)
    row = {"n": n}
    if "relation" in parse_prompt(prompts[0]):
        row.update(fidelity)
        row["stderr_all"] = stderr(row["all"], n)
    else:
        row["color_shape"] = color_shape(images, prompts, evaluator)
        row["stderr_color_shape"] = stderr(row["color_shape"], n)
        row["all"], row["stderr_all"] = fidelity["all"], stderr(fidelity["all"], n)
        row["diversity"], row["stderr_diversity"] = within_prompt_diversity(
            features, settings.per_prompt
        )
    row["feature_distance"] = frechet_distance(features, evaluator_features(real, evaluator))
    return row


@torch.no_grad()
def eval_prior(
    pipeline, settings: UnclipEvalSettings, templates: list[str], pool_size: int = 4000
) -> dict:
    """The prior part (see the module doc); one prior draw per prompt, n prompts."""
    from tinygen.data.shapes import generate_shapes
    from tinygen.eval.zero_shot import zero_shot_classifier, zero_shot_predict

    real, prompts = prompt_set(
        "single", settings.n, image_size=pipeline.image_size, seed=settings.seed
    )
    pool = generate_shapes(
        pool_size, split="test", seed=settings.seed + 1, image_size=pipeline.image_size
    )
    pool_emb = torch.cat([pipeline.image_embeddings(x).cpu() for x in pool.images.split(500)])
    real_emb = pipeline.image_embeddings(real).cpu()
    prior_emb = _batched(
        lambda rows, gen: pipeline.prior_embeddings(prompts[rows], generator=gen),
        len(prompts),
        settings,
        "prior",
    )
    text_emb = pipeline.text_embeddings(prompts).cpu()
    cos_prior, cos_text, cos_real, counts = [], [], [], []
    for i, prompt in enumerate(prompts):
        same = [j for j, p in enumerate(pool.prompts) if p == prompt]
        targets = torch.cat([real_emb[i : i + 1], pool_emb[same]])  # (k, D): real images of it
        cos_prior.append((targets @ prior_emb[i]).mean())
        cos_text.append((targets @ text_emb[i]).mean())
        counts.append(len(targets))
        if same:
            cos_real.append((pool_emb[same] @ real_emb[i]).mean())
    cos_prior, cos_text = torch.stack(cos_prior), torch.stack(cos_text)
    out: dict = {
        "n": len(prompts),
        "real_images_per_prompt": float(torch.tensor(counts).float().mean()),
    }
    for name, values in (
        ("cosine_prior", cos_prior),
        ("cosine_text", cos_text),
        ("cosine_prior_minus_text", cos_prior - cos_text),
        ("cosine_real_to_real", torch.stack(cos_real) if cos_real else torch.zeros(0)),
    ):
        if len(values):
            out[name], out[f"stderr_{name}"] = mean_se(values)
    classnames = [f"{c} {s}" for c in COLORS for s in SHAPES]  # index = combo_index
    classifier = zero_shot_classifier(
        pipeline.clip, classnames, templates, tokenizer=pipeline.clip_tokenizer
    ).cpu()
    truth = torch.tensor(
        [combo_index(parse_prompt(p)["color"], parse_prompt(p)["shape"]) for p in prompts]
    )
    for name, emb in (("prior", prior_emb), ("real_image", real_emb), ("text", text_emb)):
        accuracy = float((zero_shot_predict(emb, classifier) == truth).float().mean())
        out[f"zero_shot_{name}"], out[f"stderr_zero_shot_{name}"] = (
            accuracy,
            stderr(accuracy, len(prompts)),
        )
    return out


def _prior_images(pipeline, wanted, settings, rerank: int) -> Tensor:
    def make(rows, gen):
        z = pipeline.prior_embeddings(wanted[rows], generator=gen, rerank=rerank)
        return pipeline.decode(
            z,
            prompts=wanted[rows],
            guidance=settings.guidance,
            sampler=settings.sampler,
            generator=gen,
        )

    return _batched(make, len(wanted), settings, f"prior (rerank {rerank}) + decoder")


@torch.no_grad()
def eval_ablation(pipeline, settings, evaluator, glide=None, cache=None) -> list[dict]:
    """Rows (a) true image embedding, (b) prior, (c) text embedding, (d) GLIDE."""
    real, sources, wanted = _single_prompts(pipeline, settings)
    k = settings.per_prompt
    true_emb = pipeline.image_embeddings(sources).cpu().repeat_interleave(k, 0)

    def decode(embeddings):
        return lambda rows, gen: pipeline.decode(
            embeddings[rows],
            prompts=wanted[rows],
            guidance=settings.guidance,
            sampler=settings.sampler,
            generator=gen,
        )

    rows = []
    for name, make in (
        ("(a) true CLIP image embedding", decode(true_emb)),
        ("(b) prior embedding", None),
        ("(c) CLIP text embedding (no prior)", decode(pipeline.text_embeddings(wanted).cpu())),
    ):
        if make is None:
            images = _cached(
                cache,
                ("prior", pipeline.rerank),
                lambda: _prior_images(pipeline, wanted, settings, pipeline.rerank),
            )
        else:
            images = _batched(make, len(wanted), settings, name)
        rows.append({"decoder_input": name, **image_row(images, wanted, real, settings, evaluator)})
    if glide is not None:
        images = _batched(
            lambda r, gen: glide.generate(
                wanted[r], guidance=settings.guidance, sampler=settings.sampler, generator=gen
            ),
            len(wanted),
            settings,
            "GLIDE",
        )
        rows.append(
            {"decoder_input": "(d) GLIDE", **image_row(images, wanted, real, settings, evaluator)}
        )
    return rows


def _cached(cache: dict | None, key, make: Callable[[], Tensor]) -> Tensor:
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


@torch.no_grad()
def eval_rerank(pipeline, settings, evaluator, cache=None) -> list[dict]:
    real, _, wanted = _single_prompts(pipeline, settings)
    rows = []
    for rerank in (1, 2):
        images = _cached(
            cache, ("prior", rerank), lambda r=rerank: _prior_images(pipeline, wanted, settings, r)
        )
        rows.append({"rerank": rerank, **image_row(images, wanted, real, settings, evaluator)})
    return rows


@torch.no_grad()
def eval_pairs(pipeline, settings, evaluator, glide=None) -> list[dict]:
    real, prompts = prompt_set(
        "pairs", settings.n, image_size=pipeline.image_size, seed=settings.seed
    )
    systems = [("unCLIP (prior + decoder)", pipeline)] + ([("GLIDE", glide)] if glide else [])
    rows = []
    for name, system in systems:
        images = _batched(
            lambda r, gen, s=system: s.generate(
                prompts[r], guidance=settings.guidance, sampler=settings.sampler, generator=gen
            ),
            len(prompts),
            settings,
            name,
        )
        rows.append({"system": name, **image_row(images, prompts, real, settings, evaluator)})
    return rows


def pixel_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean |a - b| per pixel in [0, 1] units of images in [-1, 1] (broadcast; -> (...))."""
    return (a.float() - b.float()).abs().mean((-3, -2, -1)) / 2


@torch.no_grad()
def eval_variations(pipeline, settings, evaluator) -> list[dict]:
    """Variations of n // per_prompt real test images, per_prompt each (see the module doc)."""
    k = settings.per_prompt
    sources, prompts = prompt_set(
        "single", settings.n // k, image_size=pipeline.image_size, seed=settings.seed + 7
    )
    wanted = [p for p in prompts for _ in range(k)]
    rows = []
    for inverted in (False, True):
        images = _batched(
            lambda r, gen, inv=inverted: pipeline.variations(
                sources[r],
                k,
                eta=settings.eta,
                from_inversion=inv,
                guidance=settings.guidance,
                steps=settings.steps,
                generator=gen,
            ),
            len(sources),
            settings,
            "variations" + (" from inversion" if inverted else ""),
            batch_size=max(1, settings.batch_size // k),
        )
        groups = images.view(len(sources), k, *images.shape[1:])
        to_source = pixel_distance(groups, sources[:, None])  # (S, k)
        among = pixel_distance(groups[:, :, None], groups[:, None])  # (S, k, k)
        fraction = color_shape(images, wanted, evaluator)
        row = {
            "start": "DDIM-inverted x_T" if inverted else "random x_T",
            "n": len(images),
            "color_shape": fraction,
            "stderr_color_shape": stderr(fraction, len(images)),
        }
        row["all"] = prompt_fidelity(images, wanted, evaluator=evaluator)["all"]
        row["pixel_distance_to_source"], row["stderr_pixel_distance_to_source"] = mean_se(
            to_source.mean(1)
        )
        row["pixel_distance_among"], row["stderr_pixel_distance_among"] = mean_se(
            among.sum((1, 2)) / (k * (k - 1))
        )
        rows.append(row)
    return rows


def evaluate_unclip(
    pipeline,
    parts: list[str],
    settings: UnclipEvalSettings,
    *,
    evaluator=None,
    glide=None,
    templates: list[str] | None = None,
    log=print,
) -> dict:
    """The asked parts, as {"settings": ..., part: result}."""
    from tinygen.eval.fidelity import load_evaluator

    settings.validate()
    if unknown := sorted(set(parts) - set(UNCLIP_PARTS)):
        raise TinygenError(f"unknown --parts {unknown}; choose from {', '.join(UNCLIP_PARTS)}")
    evaluator = evaluator if evaluator is not None else load_evaluator()
    report: dict = {
        "settings": {
            **asdict(settings),
            "rerank": pipeline.rerank,
            "prior_guidance": pipeline.prior_guidance,
        }
    }
    cache: dict = {}
    for part in parts:
        if part == "prior":
            report[part] = eval_prior(pipeline, settings, templates or ["{}"])
        elif part == "ablation":
            report[part] = eval_ablation(pipeline, settings, evaluator, glide, cache)
        elif part == "pairs":
            report[part] = eval_pairs(pipeline, settings, evaluator, glide)
        elif part == "rerank":
            report[part] = eval_rerank(pipeline, settings, evaluator, cache)
        else:
            report[part] = eval_variations(pipeline, settings, evaluator)
        log(f"{part}: {report[part]}")
    return report
