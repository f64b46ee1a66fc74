"""Measuring image-to-image's trade-off: follow the prompt, or keep the picture?

Real shapes test images (one object, a (colour, shape) pair seen in training) are redrawn by a
prompt that changes ONE attribute -- half of them recoloured ("a blue circle" for a red
circle), half reshaped ("a red star") -- naming colour and shape only, so that the size and
the position are the picture's to keep. At each strength the shapes evaluator (the
independent judge) says per image

- `new`: the changed attribute shows the prompt's new value;
- `kept_other`: the unchanged one of colour / shape is still the input's;
- `kept_position`, `kept_size`: the attributes the prompt did not name are still the input's;
- `kept_all` (all three kept) and `success` (new and kept_all);

each with its binomial standard error sqrt(p (1 - p) / n), and the mean absolute pixel change.
SDEdit's claim (Meng et al. 2021, sec. 4) is that a middle strength does both: low strengths
keep the picture and ignore the prompt, strength 1 follows the prompt and forgets the picture.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from tinygen.data.shapes import (
    COLORS,
    HELDOUT_COMBOS,
    SHAPES,
    canonical_prompt,
    combo_index,
    generate_shapes,
)
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.errors import TinygenError
from tinygen.io import atomic_write

MEASURES = ("new", "kept_other", "kept_position", "kept_size", "kept_all", "success")


def edit_prompts(batch, seed: int = 0) -> tuple[list[str], list[str], list[int]]:
    """Per image: (prompt, the attribute changed -- "color" for even i, "shape" for odd --,
    its new value's index); the new (colour, shape) pair is never a held-out one."""
    gen = torch.Generator().manual_seed(seed)
    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    prompts, changed, targets = [], [], []
    for i in range(len(batch)):
        color = COLORS[int(batch.labels["color"][i])]
        shape = SHAPES[int(batch.labels["shape"][i])]
        which = "color" if i % 2 == 0 else "shape"
        values = COLORS if which == "color" else SHAPES
        while True:
            new = values[int(torch.randint(len(values), (1,), generator=gen))]
            pair = (new, shape) if which == "color" else (color, new)
            if new != (color if which == "color" else shape) and combo_index(*pair) not in heldout:
                break
        prompts.append(canonical_prompt(*pair))
        changed.append(which)
        targets.append(values.index(new))
    return prompts, changed, targets


def edit_test_images(n: int, image_size: int, seed: int = 0):
    """n one-object test images whose (colour, shape) pair was seen in training."""
    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    pool = generate_shapes(2 * n, split="test", seed=seed, image_size=image_size)
    keep = [
        i for i in range(len(pool))
        if int(pool.labels["color"][i]) * len(SHAPES) + int(pool.labels["shape"][i]) not in heldout
    ][:n]  # fmt: skip
    return pool.select(keep)


def judge_edits(predicted: dict[str, Tensor], batch, changed: list[str], targets: list[int]):
    """Per-image booleans (N,) of every measure in MEASURES."""
    truth = batch.labels
    is_colour = torch.tensor([c == "color" for c in changed])
    target = torch.tensor(targets)
    got_colour = predicted["color"] == torch.where(is_colour, target, truth["color"])
    got_shape = predicted["shape"] == torch.where(is_colour, truth["shape"], target)
    out = {
        "new": torch.where(is_colour, got_colour, got_shape),
        "kept_other": torch.where(is_colour, got_shape, got_colour),
        "kept_position": predicted["position"] == truth["position"],
        "kept_size": predicted["size"] == truth["size"],
    }
    out["kept_all"] = out["kept_other"] & out["kept_position"] & out["kept_size"]
    out["success"] = out["new"] & out["kept_all"]
    return out


def _rate(flags: Tensor) -> tuple[float, float]:
    p = flags.float().mean().item()
    return p, math.sqrt(max(p * (1 - p), 1e-12) / flags.numel())


@torch.no_grad()
def evaluate_img2img(
    model,
    strengths: list[float],
    *,
    n: int = 256,
    guidance: float = 3.0,
    sampler: SamplerConfig | None = None,
    batch_size: int = 64,
    seed: int = 0,
    evaluator=None,
    log=None,
) -> tuple[list[dict], Tensor]:
    """One row per strength (the MEASURES, their standard errors, by kind of edit) and a
    grid tensor of examples: 8 inputs, each followed by its result at every strength."""
    from tinygen.eval.fidelity import load_evaluator

    if not strengths:
        raise TinygenError("give at least one strength (--strengths 0.2,0.4,0.6,0.8,1.0)")
    evaluator = evaluator if evaluator is not None else load_evaluator()
    batch = edit_test_images(n, model.image_size, seed)
    prompts, changed, targets = edit_prompts(batch, seed)
    model.check_prompts(prompts)
    sampler = sampler or SamplerConfig()
    rows, examples = [], [batch.images[:8]]
    for strength in strengths:
        start = time.perf_counter()
        parts = []
        for i in range(0, n, batch_size):
            gen = torch.Generator().manual_seed(seed + i)
            parts.append(model.img2img(
                batch.images[i : i + batch_size], prompts[i : i + batch_size],
                strength=strength, guidance=guidance, sampler=sampler, generator=gen,
            ).cpu())  # fmt: skip
        result = torch.cat(parts)
        examples.append(result[:8])
        flags = judge_edits(evaluator.predict(result), batch, changed, targets)
        row = {"strength": strength, "n": n, "guidance": guidance, "sampler": sampler.name}
        for key in MEASURES:
            row[key], row[key + "_stderr"] = _rate(flags[key])
        colour = torch.tensor([c == "color" for c in changed])
        row["new_recolour"], _ = _rate(flags["new"][colour])
        row["new_reshape"], _ = _rate(flags["new"][~colour])
        row["pixel_change"] = (result - batch.images).abs().mean().item()
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if log is not None:
            log(f"strength {strength:g}: new {100 * row['new']:.1f}%, kept "
                f"{100 * row['kept_all']:.1f}% ({row['seconds']:.0f} s)")  # fmt: skip
    grid = torch.stack(examples, dim=1).flatten(0, 1)  # (8 * (1 + S), 3, H, W), row by row
    return rows, grid


def markdown_table(rows: list[dict]) -> str:
    head = [
        "strength", "n", "new attribute %", "recolour %", "reshape %", "kept colour/shape %",
        "kept position %", "kept size %", "kept all %", "new and kept %", "pixel change",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(r: dict, key: str) -> str:
        return f"{100 * r[key]:.1f} ± {100 * r[key + '_stderr']:.1f}"

    for r in rows:
        cells = [f"{r['strength']:g}", str(r["n"]), pct(r, "new"), f"{100 * r['new_recolour']:.1f}",
                 f"{100 * r['new_reshape']:.1f}", pct(r, "kept_other"), pct(r, "kept_position"),
                 pct(r, "kept_size"), pct(r, "kept_all"), pct(r, "success"),
                 f"{r['pixel_change']:.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(rows: list[dict], path: Path, *, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [r["strength"] for r in rows]
    for key, label in (("new", "shows the new attribute"), ("kept_all", "keeps the rest "
                       "(other attribute, position, size)"), ("kept_position", "keeps position"),
                       ("kept_size", "keeps size"), ("success", "both")):  # fmt: skip
        ys = [100 * r[key] for r in rows]
        errs = [100 * r[key + "_stderr"] for r in rows]
        style = "-" if key in ("new", "kept_all", "success") else ":"
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, linestyle=style, label=label)
    ax.set_xlabel("strength (0 keeps the image, 1 redraws it)")
    ax.set_ylabel("% of images (shapes evaluator)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "img2img: following the prompt vs keeping the picture")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def write_img2img_report(rows: list[dict], grid: Tensor, out_dir: Path, *, title: str = ""):
    """eval.json, eval.md, img2img_tradeoff.png and examples.png (each row: the input, then
    its result at each strength) in `out_dir`."""
    from tinygen.data.image_folder import save_image_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "eval.json",
        "table": out_dir / "eval.md",
        "plot": out_dir / "img2img_tradeoff.png",
        "examples": out_dir / "examples.png",
    }
    text = json.dumps(rows, indent=2) + "\n"
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(text))
    table = markdown_table(rows)
    atomic_write(paths["table"], lambda tmp: Path(tmp).write_text(table))
    plot_tradeoff(rows, paths["plot"], title=title)
    save_image_grid(grid, paths["examples"], nrow=len(rows) + 1, scale=2)
    return paths
