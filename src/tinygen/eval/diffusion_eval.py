"""Measuring a diffusion model on the shapes world: fidelity against diversity.

For each sampling setting (guidance scale, sampler and number of steps, classifier scale)
we draw images for the (colour, shape) classes of a set of real validation images, then
report
  - prompt fidelity: the fraction of images whose colour AND shape the shapes evaluator
    reads as the prompt asked ("a red circle"), plus per-attribute accuracies;
  - feature distance: the Fréchet distance between the evaluator features of the samples
    and of the real images (lower = closer to the data distribution, i.e. more diverse and
    realistic; guidance usually raises fidelity and this distance together).
The same seeds are used for every setting, so settings differ only in how they sample.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError


@dataclass
class Setting:
    """One row of an evaluation: the guidance scales and the sampler settings (flat, as
    eval.json stores them; `sampler_config` is the validated `SamplerConfig` they make)."""

    guidance: float = 1.0
    sampler: str = "ddim"
    steps: int = 50
    classifier_scale: float = 0.0
    eta: float = 0.0
    thresholding: bool = False  # dynamic thresholding of x_0 instead of clipping
    recompute_eps: bool = True  # DDIM: eps from the clipped x_0 (see DiffusionModel.generate)
    spacing: str = "leading"  # which timesteps the steps visit (see DiffusionModel.generate)

    def __post_init__(self) -> None:
        if self.guidance < 0:
            raise TinygenError(f"guidance scale must be >= 0, got {self.guidance}")
        self.sampler_config  # noqa: B018 - validates the sampler settings once, here

    @property
    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(
            sampler=self.sampler,
            steps=self.steps,
            eta=self.eta,
            spacing=self.spacing,
            thresholding=self.thresholding,
            recompute_eps=self.recompute_eps,
        )

    @property
    def name(self) -> str:
        sampler = self.sampler_config.name
        head, _, options = sampler.partition(", ")
        text = f"{head}, guidance {self.guidance:g}"
        if self.classifier_scale:
            text += f", classifier scale {self.classifier_scale:g}"
        return text + (f", {options}" if options else "")


def eval_labels(
    n: int, seed: int = 0, image_size: int = 32, split: str = "val"
) -> tuple[Tensor, Tensor, list[str]]:
    """n real images of a shapes split, their (colour, shape) classes and canonical prompts.

    split "val" has the training distribution; "heldout" only the (colour, shape) pairs the
    training split never shows (a test of compositional generalisation).
    """
    from tinygen.data.shapes import COLORS, SHAPES, canonical_prompt, combo_labels, generate_shapes

    real = generate_shapes(n, split=split, seed=seed, image_size=image_size)
    color, shape = real.labels["color"], real.labels["shape"]
    labels = combo_labels(color, shape)
    prompts = [
        canonical_prompt(COLORS[c], SHAPES[s]) for c, s in zip(color.tolist(), shape.tolist())
    ]
    return real.images, labels, prompts


@torch.no_grad()
def generate_for_labels(
    model: nn.Module,
    labels: Tensor,
    setting: Setting,
    *,
    batch_size: int = 256,
    seed: int = 0,
    classifier: nn.Module | None = None,
) -> Tensor:
    """Samples (N, C, H, W) for `labels` (N,), in batches, each batch seeded from `seed`."""
    parts = []
    for i, chunk in enumerate(labels.split(batch_size)):
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed + i)
        parts.append(
            model.generate(
                len(chunk),
                labels=chunk if _needs_labels(model, setting) else None,
                guidance=setting.guidance,
                sampler=setting.sampler_config,
                generator=gen,
                classifier=classifier,
                classifier_scale=setting.classifier_scale,
            ).cpu()
        )
    return torch.cat(parts)


def _needs_labels(model: nn.Module, setting: Setting) -> bool:
    return model.config.class_conditional or setting.classifier_scale != 0


def evaluate_settings(
    model: nn.Module,
    settings: list[Setting],
    *,
    n: int = 256,
    n_for: dict | None = None,
    evaluator=None,
    classifier: nn.Module | None = None,
    batch_size: int = 256,
    seed: int = 0,
    split: str = "val",
    log=print,
) -> list[dict]:
    """One row per setting: fidelity ("all", "color", "shape"), feature distance, seconds.

    n_for: optional {steps: n} to use fewer samples for expensive settings (DDPM-1000).
    """
    from tinygen.eval.fidelity import feature_distance, load_evaluator, prompt_fidelity

    evaluator = evaluator if evaluator is not None else load_evaluator()
    evaluator = evaluator.to(next(model.parameters()).device)
    n_max = max([n, *(n_for or {}).values()])
    real, labels, prompts = eval_labels(
        n_max, seed=seed, image_size=model.config.unet.image_size, split=split
    )
    rows = []
    for setting in settings:
        count = (n_for or {}).get(setting.steps, n)
        start = time.perf_counter()
        images = generate_for_labels(
            model, labels[:count], setting, batch_size=batch_size, seed=seed, classifier=classifier
        )
        seconds = time.perf_counter() - start
        fidelity = prompt_fidelity(images.to(real.device), prompts[:count], evaluator=evaluator)
        distance = feature_distance(images, real[:count], evaluator=evaluator)
        row = {
            **asdict(setting),
            "n": count,
            "fidelity": fidelity["all"],
            "color": fidelity.get("color"),
            "shape": fidelity.get("shape"),
            "feature_distance": distance,
            "seconds": seconds,
            "stderr": math.sqrt(max(fidelity["all"] * (1 - fidelity["all"]), 1e-12) / count),
        }
        rows.append(row)
        log(
            f"{setting.name}: fidelity {row['fidelity']:.3f} (colour {row['color']:.3f}, "
            f"shape {row['shape']:.3f}), feature distance {distance:.2f}, n {count}, "
            f"{seconds:.0f} s"
        )
    return rows


def sampler_label(row: dict) -> str:
    """The sampler of a result row with its non-default options, e.g. `ddim (eta 1)`."""
    options = []
    if row["sampler"] == "ddim" and row.get("eta", 0):
        options.append(f"eta {row['eta']:g}")
    if row.get("spacing", "leading") != "leading":
        options.append(row["spacing"])
    if row.get("thresholding"):
        options.append("thresholding")
    if row["sampler"] == "ddim" and not row.get("recompute_eps", True):
        options.append("unclipped eps")
    return row["sampler"] + (f" ({', '.join(options)})" if options else "")


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table (fidelity in percent with its standard error)."""
    lines = [
        "| sampler | steps | guidance | classifier scale | n | fidelity % | colour % | "
        "shape % | feature distance |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {sampler_label(r)} | {r['steps']} | {r['guidance']:g} | {r['classifier_scale']:g} "
            f"| {r['n']} | {100 * r['fidelity']:.1f} ± {100 * r['stderr']:.1f} "
            f"| {100 * r['color']:.1f} | {100 * r['shape']:.1f} | {r['feature_distance']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot_tradeoff(rows: list[dict], path: str | Path, *, title: str = "") -> Path:
    """Fidelity against feature distance, one line per sampler/steps over the guidance
    (or classifier) scale: the fidelity-diversity trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["sampler"], r["steps"]), []).append(r)
    for (sampler, steps), group in groups.items():
        sweep = "classifier_scale" if any(r["classifier_scale"] for r in group) else "guidance"
        group = sorted(group, key=lambda r: r[sweep])
        xs = [r["feature_distance"] for r in group]
        ys = [100 * r["fidelity"] for r in group]
        ax.plot(xs, ys, marker="o", label=f"{sampler.upper()}-{steps}")
        for r, x, y in zip(group, xs, ys):
            ax.annotate(
                f"{r[sweep]:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    ax.set_xlabel("feature distance to real images (lower = closer to the data)")
    ax.set_ylabel("prompt fidelity, colour and shape right (%)")
    ax.set_title(title or "fidelity vs diversity (labels: guidance scale)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(rows: list[dict], out_dir: str | Path, *, title: str = "") -> dict[str, Path]:
    """eval.json, eval.md and fidelity_diversity.png in out_dir."""
    if not rows:
        raise TinygenError("no settings were evaluated; pass at least one --guidance and --steps")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "eval.json",
        "table": out_dir / "eval.md",
        "plot": out_dir / "fidelity_diversity.png",
    }
    paths["json"].write_text(json.dumps(rows, indent=2) + "\n")
    paths["table"].write_text(markdown_table(rows))
    plot_tradeoff(rows, paths["plot"], title=title)
    return paths
