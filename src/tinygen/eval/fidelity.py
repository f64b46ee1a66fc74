"""Scoring generated shapes images with the shapes evaluator.

`prompt_fidelity` asks the evaluator what each image shows and compares it with what the
prompt asked for: exact, per attribute, and only possible because we generate the world
ourselves. `feature_distance` is a Fréchet distance (Heusel et al. 2017, the formula of
FID) between the evaluator's penultimate features of two image sets. It measures how far
a generator's image distribution is from the real one *in this world*; its values are
NOT comparable to Inception FID, whose features and scale differ.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from tinygen.data.shapes import ATTRIBUTES, parse_prompt
from tinygen.errors import TinygenError
from tinygen.eval.pairs import judge_pairs, pair_scores
from tinygen.train import checkpoint as ckpt

EVALUATOR_TYPE = "shapes-evaluator"
_CACHE: dict[Path, torch.nn.Module] = {}


def evaluator_search_path() -> list[Path]:
    """Where `load_evaluator()` looks, in order: $TINYGEN_EVALUATOR, the user cache
    (~/.cache/tinygen/evaluator, where `tinygen train evaluator` installs it), runs/evaluator."""
    paths = []
    if os.environ.get("TINYGEN_EVALUATOR"):
        paths.append(Path(os.environ["TINYGEN_EVALUATOR"]).expanduser())
    paths.append(default_install_dir())
    paths.append(Path("runs") / "evaluator")
    return paths


def default_install_dir() -> Path:
    return Path("~/.cache/tinygen/evaluator").expanduser()


def load_evaluator(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The trained shapes evaluator (eval mode) from run directory `path`, or from the
    first of `evaluator_search_path()` that holds one. Loaded models are cached."""
    from tinygen.models.runs import load_model

    if path is not None:
        candidates = [Path(path).expanduser()]
    else:
        candidates = [p for p in evaluator_search_path() if (p / ckpt.CONFIG_FILE).is_file()]
        if not candidates:
            searched = ", ".join(str(p) for p in evaluator_search_path())
            raise TinygenError(
                f"no trained shapes evaluator found (looked in {searched}); run "
                "`tinygen train evaluator` once (a few minutes), or set TINYGEN_EVALUATOR "
                "to a run directory"
            )
    run_dir = candidates[0].resolve()
    key = run_dir
    if key not in _CACHE:
        model, _ = load_model(run_dir, which="best", expect=EVALUATOR_TYPE)
        _CACHE[key] = model
    return _CACHE[key].to(device).eval()


def install_evaluator(run_dir: str | Path, dest: str | Path | None = None) -> Path:
    """Copy a trained evaluator's config and weights to `dest` (default the user cache) so
    `load_evaluator()` finds it from any directory."""
    run_dir, dest = Path(run_dir), Path(dest) if dest else default_install_dir()
    weights = ckpt.model_weights_path(run_dir, "best")
    dest.mkdir(parents=True, exist_ok=True)
    for src, name in ((run_dir / ckpt.CONFIG_FILE, ckpt.CONFIG_FILE), (weights, ckpt.BEST_FILE)):
        ckpt.atomic_write(dest / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    _CACHE.pop(dest.resolve(), None)
    return dest


def _check_images(images: Tensor, what: str = "images") -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise TinygenError(f"{what} must be a (N, 3, H, W) tensor in [-1, 1], got {shape}")
    if images.shape[0] == 0:
        raise TinygenError(f"{what} is empty; pass at least one image")


def prompt_fidelity(images: Tensor, prompts: list[str], *, evaluator=None) -> dict[str, float]:
    """How often the images show what their prompts ask for.

    images (N, 3, H, W) in [-1, 1]; prompts: N canonical prompts (or any caption that
    `parse_prompt` reads), all of one kind. One-object prompts name some of shape, colour,
    size, position; the result is "all" (fraction of images whose every named attribute is
    predicted right) and, for each attribute named by at least one prompt, the accuracy over
    those prompts. Two-object prompts ("a red circle to the left of a blue square") give
    all, relation, binding_swap and the attributes of both objects (`tinygen.eval.pairs`).
    """
    _check_images(images)
    if len(prompts) != images.shape[0]:
        raise TinygenError(
            f"got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image"
        )
    wanted = [parse_prompt(p) for p in prompts]
    pairs = ["relation" in attrs for attrs in wanted]
    if any(pairs) and not all(pairs):
        raise TinygenError(
            "the prompts mix one-object and two-object prompts; score each kind on its own"
        )
    evaluator = evaluator if evaluator is not None else load_evaluator()
    if all(pairs):
        return pair_fidelity(images, wanted, evaluator)
    predicted = evaluator.predict(images)  # attribute -> (N,)
    all_right = torch.ones(len(prompts), dtype=torch.bool)
    out: dict[str, float] = {}
    for name, values in ATTRIBUTES.items():
        rows = [i for i, attrs in enumerate(wanted) if name in attrs]
        if not rows:
            continue
        target = torch.tensor([values.index(wanted[i][name]) for i in rows])
        right = predicted[name][rows] == target
        all_right[rows] &= right
        out[name] = right.float().mean().item()
    return {"all": all_right.float().mean().item(), **out}


def pair_fidelity(images: Tensor, wanted: list[dict[str, str]], evaluator) -> dict[str, float]:
    """Two-object prompt fidelity from the evaluator's slot heads (`tinygen.eval.pairs`)."""
    if getattr(evaluator, "slot_heads", None) is None:
        raise TinygenError(
            "this shapes evaluator has no two-object (slot) heads; retrain it with "
            "`tinygen train evaluator --install` (its default preset judges both kinds)"
        )
    return pair_scores(judge_pairs(evaluator.predict(images), wanted))


@torch.no_grad()
def evaluator_features(images: Tensor, evaluator, batch_size: int = 512) -> Tensor:
    """Penultimate evaluator features (N, feature_dim) as float64 on the CPU."""
    device = next(evaluator.parameters()).device
    evaluator.eval()
    parts = [
        evaluator.features(x.to(device).float()).double().cpu() for x in images.split(batch_size)
    ]
    return torch.cat(parts)


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Dowson & Landau 1982; FID).

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2), a symmetric PSD matrix, so symmetric eigendecompositions in
    float64 suffice (no general matrix square root)."""
    a, b = features_a.double(), features_b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise TinygenError(
            f"feature sets must be (N, D) with equal D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise TinygenError("the Fréchet distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T  # S_a^(1/2)
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(float(value), 0.0)


def feature_distance(images_a: Tensor, images_b: Tensor, *, evaluator=None) -> float:
    """Fréchet distance between two image sets (N, 3, H, W) in [-1, 1] on the evaluator's
    penultimate features. Lower is closer; 0 for identical sets. Not comparable to
    Inception FID. Use the same N for the numbers you compare: the estimate is biased
    upwards for small N (use >= 1,000 images for stable values)."""
    _check_images(images_a, "images_a")
    _check_images(images_b, "images_b")
    evaluator = evaluator if evaluator is not None else load_evaluator()
    return frechet_distance(
        evaluator_features(images_a, evaluator), evaluator_features(images_b, evaluator)
    )
