"""The unCLIP evaluation as files: `unclip.json` (everything) and `unclip.md` (one table per
part, fractions as percentages +- their standard errors)."""

from __future__ import annotations

import json
from pathlib import Path

from tinygen.io import atomic_write


def _pct(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    se = row.get(f"stderr_{key}")
    return (
        f"{100 * row[key]:.1f} ± {100 * se:.1f} %" if se is not None else f"{100 * row[key]:.1f} %"
    )


def _num(row: dict, key: str, digits: int = 3) -> str:
    if key not in row:
        return "-"
    se = row.get(f"stderr_{key}")
    return (
        f"{row[key]:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{row[key]:.{digits}f}"
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(report: dict, title: str) -> str:
    s = report["settings"]
    lines = [
        f"# unCLIP: {title}",
        "",
        f"Decoder DDIM-{s['steps']}, guidance {s['guidance']:g}; prior guidance "
        f"{s['prior_guidance']:g}, best-of-{s['rerank']}; {s['per_prompt']} images per prompt; "
        f"seed {s['seed']}. ± = one standard error.",
    ]
    if "prior" in report:
        p = report["prior"]
        lines += ["", f"## The prior (n = {p['n']} single-object prompts)", ""]
        lines += _table(
            ["embedding", "cosine to real images of the prompt", "zero-shot colour+shape"],
            [
                ["prior", _num(p, "cosine_prior"), _pct(p, "zero_shot_prior")],
                ["CLIP text (baseline)", _num(p, "cosine_text"), _pct(p, "zero_shot_text")],
                [
                    "real image (reference)",
                    _num(p, "cosine_real_to_real"),
                    _pct(p, "zero_shot_real_image"),
                ],
            ],
        )
        lines.append(f"\nprior - text cosine: {_num(p, 'cosine_prior_minus_text')} (paired)")
    single = ["colour+shape", "all four", "feature distance", "within-prompt diversity"]

    def single_row(r: dict) -> list[str]:
        return [
            _pct(r, "color_shape"),
            _pct(r, "all"),
            f"{r['feature_distance']:.2f}",
            _num(r, "diversity", 2),
        ]

    if "ablation" in report:
        lines += ["", "## Ablation: what the decoder is fed", ""]
        lines += _table(
            ["decoder input", *single],
            [[r["decoder_input"], *single_row(r)] for r in report["ablation"]],
        )
    if "pairs" in report:
        lines += ["", "## Two-object prompts", ""]
        lines += _table(
            ["system", "all", "relation", "binding_swap", "feature distance"],
            [
                [
                    r["system"],
                    _pct(r, "all"),
                    _pct(r, "relation"),
                    _pct(r, "binding_swap"),
                    f"{r['feature_distance']:.2f}",
                ]
                for r in report["pairs"]
            ],
        )
    if "rerank" in report:
        lines += ["", "## Best-of-2 reranking", ""]
        lines += _table(
            ["prior candidates", *single],
            [[str(r["rerank"]), *single_row(r)] for r in report["rerank"]],
        )
    if "variations" in report:
        lines += ["", "## Variations", ""]
        lines += _table(
            [
                "start",
                "keeps colour+shape",
                "all four kept",
                "pixel distance to source",
                "among variations",
            ],
            [
                [
                    r["start"],
                    _pct(r, "color_shape"),
                    _pct(r, "all"),
                    _num(r, "pixel_distance_to_source"),
                    _num(r, "pixel_distance_among"),
                ]
                for r in report["variations"]
            ],
        )
    return "\n".join(lines) + "\n"


def write_unclip_report(report: dict, out: str | Path, *, title: str) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "unclip.json", "table": out / "unclip.md"}
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(text))
    table = markdown(report, title)
    atomic_write(paths["table"], lambda tmp: Path(tmp).write_text(table))
    return paths
