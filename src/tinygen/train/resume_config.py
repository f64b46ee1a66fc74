"""What a resumed run may change, and the record of it in config.json.

A resume must rebuild the model it saved (`check_same_model_config`): settings that hold
no weights, a noise schedule or an objective, would otherwise change silently mid-run. The
training and data settings may change (a longer --max-iters, another --pair-fraction), and
`record_resume` writes them into config.json with what changed at which step, so the run
directory describes how the run was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinygen.errors import TinygenError
from tinygen.io import CONFIG_FILE, check_resume_kind, write_json


def config_differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """The fields where two saved configs (JSON dicts, nested) differ, as
    "field: saved X, now Y". A field the saved config lacks was added to tinygen after the
    run was saved -- the run was trained with its default -- so it is not a difference (a
    field that adds weights is still caught when the weights are loaded)."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return [] if saved == now else [f"{prefix}: saved {saved!r}, now {now!r}"]
    changed = []
    for key in sorted(saved):
        name = f"{prefix}.{key}" if prefix else key
        if key not in now:
            changed.append(f"{name}: saved {saved[key]!r}, now absent")
        else:
            changed += config_differences(saved[key], now[key], name)
    return changed


def check_same_model_config(run_dir: Path, run_config: dict) -> None:
    """Refuse, naming the fields, a resume whose model config differs from the saved one
    (or whose model type does)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists() or "model" not in run_config:
        return
    saved_config = json.loads(path.read_text())
    if "model_type" in run_config:
        check_resume_kind(run_dir, run_config["model_type"], saved_config.get("model_type"))
    saved = saved_config.get("model")
    if saved is None:
        return
    now = json.loads(json.dumps(run_config["model"]))  # tuples -> lists, as saved
    changed = config_differences(saved, now)
    if changed:
        raise TinygenError(
            f"cannot resume: {run_dir} was trained with a different model config "
            f"({'; '.join(changed)}); repeat the original command's flags with --resume"
        )


def record_resume(run_dir: Path, full_config: dict, step: int) -> None:
    """Rewrite config.json as the run now trains (`full_config`: model, data, train, ...).
    What changed outside the model, and at which step, is appended to its `resumes` list;
    keys the run added after training (an autoencoder's scale factor) are kept."""
    path = Path(run_dir) / CONFIG_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    now = json.loads(json.dumps(full_config))
    changed = [
        line
        for key in sorted(now)
        if key not in ("model", "resumes") and key in saved
        for line in config_differences(saved[key], now[key], key)
    ]
    merged = {**saved, **now, "resumes": list(saved.get("resumes", []))}
    if changed:
        merged["resumes"].append({"step": step, "changed": changed})
    if not merged["resumes"]:
        del merged["resumes"]
    write_json(path, merged)
