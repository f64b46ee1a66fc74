"""The report of `tinygen eval text2image`: eval.json, eval.md and the fidelity-diversity plot
(one curve for classifier-free guidance, one for CLIP guidance, labelled by scale)."""

from __future__ import annotations

import json
from pathlib import Path

from tinygen.errors import TinygenError
from tinygen.io import atomic_write


def _pct(row: dict, key: str) -> str:
    return f"{100 * row[key]:.1f}" if row.get(key) is not None else "–"


def markdown_table(rows: list[dict]) -> str:
    pairs = rows[0]["prompts"] == "pairs"
    extra = ["relation", "binding_swap"] if pairs else ["color_shape"]
    extra += [k for k in ("diversity_size", "diversity_position", "clip_score") if k in rows[0]]
    head = [
        "sampler",
        "guidance",
        "CLIP scale",
        "n",
        "all %",
        *[k.replace("_", " ") for k in extra],
        "feature distance",
        "s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            f"{r['sampler']}-{r['steps']}",
            f"{r['guidance']:g}",
            f"{r['clip_scale']:g}",
            str(r["n"]),
            f"{_pct(r, 'all')} ± {100 * r['stderr_all']:.1f}",
        ]
        for key in extra:
            if key == "color_shape":
                cells.append(f"{_pct(r, key)} ± {100 * r['stderr']:.1f}")
            elif key.startswith("diversity") or key == "clip_score":
                cells.append(f"{r[key]:.3f}")
            else:
                cells.append(_pct(r, key))
        cells += [f"{r['feature_distance']:.2f}", f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_guidance(rows: list[dict], path: Path, *, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "all" if rows[0]["prompts"] == "pairs" else "color_shape"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    cfg = sorted((r for r in rows if not r["clip_scale"]), key=lambda r: r["guidance"])
    clip = sorted((r for r in rows if r["clip_scale"]), key=lambda r: r["clip_scale"])
    for group, label, scale in (
        (cfg, "classifier-free guidance", "guidance"),
        (clip, "CLIP guidance", "clip_scale"),
    ):
        if not group:
            continue
        xs = [r["feature_distance"] for r in group]
        ys = [100 * r[key] for r in group]
        errs = [100 * r["stderr" if key == "color_shape" else "stderr_all"] for r in group]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
        for r, x, y in zip(group, xs, ys):
            ax.annotate(
                f"{r[scale]:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    ax.set_xlabel("feature distance to real images (lower = closer to the data)")
    ax.set_ylabel("colour and shape right (%)" if key == "color_shape" else "all right (%)")
    ax.set_title(title or "fidelity vs diversity (labels: scale)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def write_report(rows: list[dict], out_dir: Path, *, title: str = "") -> dict[str, Path]:
    if not rows:
        raise TinygenError("no settings were evaluated; pass at least one --guidance")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "eval.json",
        "table": out_dir / "eval.md",
        "plot": out_dir / "fidelity_diversity.png",
    }
    text = json.dumps(rows, indent=2) + "\n"
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(text))
    table = markdown_table(rows)
    atomic_write(paths["table"], lambda tmp: Path(tmp).write_text(table))
    plot_guidance(rows, paths["plot"], title=title)
    return paths
