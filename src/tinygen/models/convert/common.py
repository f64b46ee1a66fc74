"""The one way a reference checkpoint becomes our state dict: a table, checked loudly.

Each family's converter (gpt2.py, clip.py) writes a readable table of `Rule`s, one row per
tensor of ours, naming the reference tensors it comes from. `convert_state_dict` applies
the table and refuses to guess: one `TinygenError` names every reference key the table
did not use, every key of ours it did not fill, every key the table expected but the
checkpoint lacks, and every shape that differs. A checkpoint that loads is therefore
complete, with nothing silently dropped or left at its random initialisation.

The same table runs backwards (`to_reference`), so a model fine-tuned here can be written
in the reference's own layout again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tinygen.errors import TinygenError


@dataclass(frozen=True)
class Rule:
    """Our tensor `ours` is the reference tensors `theirs`, each transposed first when
    `transpose` (GPT-2's Conv1D stores its weight as (in, out), a Linear as (out, in)),
    concatenated along dim 0 in that order (CLIP's q, k, v into our fused qkv_proj).
    `{i}` in the names stands for the layer index."""

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False


def rule(ours: str, *theirs: str, transpose: bool = False) -> Rule:
    """One table row; with no `theirs`, the reference uses our name."""
    return Rule(ours, theirs or (ours,), transpose)


def prefixed(table: Iterable[Rule], ours: str = "", theirs: str = "") -> list[Rule]:
    """The rows of a tower's table placed inside a bigger model: `text.` before our names,
    `text_model.` before the reference's."""
    return [Rule(ours + r.ours, tuple(theirs + t for t in r.theirs), r.transpose) for r in table]


def expand_layers(table: Iterable[Rule], layers: int) -> list[Rule]:
    """Every row with `{i}` once per layer, the others once."""
    out: list[Rule] = []
    for r in table:
        if "{i}" not in r.ours:
            out.append(r)
            continue
        for i in range(layers):
            theirs = tuple(t.format(i=i) for t in r.theirs)
            out.append(Rule(r.ours.format(i=i), theirs, r.transpose))
    return out


def count_layers(keys: Iterable[str], prefix: str) -> int:
    """How many layers `prefix{n}.` a state dict holds (`blocks.` -> 12 for GPT-2)."""
    found = {
        int(k[len(prefix) :].split(".", 1)[0])
        for k in keys
        if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0].isdigit()
    }
    return max(found) + 1 if found else 0


@dataclass
class Conversion:
    """Our state dict and how it was filled: `mapped` of our tensors from `used` reference
    tensors; `ignored` reference keys (buffers and tied copies the table declares)."""

    state_dict: dict[str, Tensor]
    mapped: int
    used: int
    ignored: list[str] = field(default_factory=list)


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def convert_state_dict(
    theirs: Mapping[str, Tensor],
    ours: Mapping[str, Tensor],
    table: Sequence[Rule],
    *,
    ignore: Callable[[str], bool] = lambda key: False,
    tied: Mapping[str, str] | None = None,
    source: str = "the checkpoint",
) -> Conversion:
    """Apply `table` to the reference state dict `theirs`, checked against `ours` (our
    module's state dict: names and shapes; meta tensors are fine).

    ignore(key): reference keys that carry nothing we need (a causal-mask buffer).
    tied: our key -> our key it shares storage with (GPT's lm_head -> wte), filled by copy.
    Raises one TinygenError naming every problem at once; returns the `Conversion`.
    """
    tied = dict(tied or {})
    out: dict[str, Tensor] = {}
    missing, wrong, used = [], [], set()
    for r in table:
        absent = [t for t in r.theirs if t not in theirs]
        if absent:
            missing += absent
            continue
        parts = [theirs[t].t() if r.transpose else theirs[t] for t in r.theirs]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        used.update(r.theirs)
        if r.ours not in ours:
            continue  # reported below as a rule for a key we do not have
        if tensor.shape != ours[r.ours].shape:
            wrong.append(
                f"{r.ours} ({_shape(ours[r.ours])}) <- {'+'.join(r.theirs)} ({_shape(tensor)})"
            )
            continue
        out[r.ours] = tensor
    for key, target in tied.items():
        if target in out:
            out[key] = out[target]
    targets = {r.ours for r in table}
    extra_rules = sorted(targets - set(ours))
    unfilled = sorted(k for k in ours if k not in targets and k not in tied)
    ignored = sorted(k for k in theirs if k not in used and ignore(k))
    unused = sorted(k for k in theirs if k not in used and not ignore(k))
    problems = [
        (f"{source} lacks", sorted(set(missing))),
        (f"{source} holds tensors no rule maps", unused),
        ("our model has tensors no rule fills", unfilled),
        ("rules name tensors our model lacks", extra_rules),
        ("shapes differ (ours <- theirs)", wrong),
    ]
    problems = [(what, keys) for what, keys in problems if keys]
    if problems:
        detail = "; ".join(f"{what} ({len(keys)}): {', '.join(keys)}" for what, keys in problems)
        raise TinygenError(
            f"cannot convert {source} into our model: {detail}; is it a checkpoint of the "
            "kind and size this loader reads?"
        )
    return Conversion(out, len(out), len(used), ignored)


def to_reference(ours: Mapping[str, Tensor], table: Sequence[Rule]) -> dict[str, Tensor]:
    """The table backwards: our state dict in the reference's names and layouts (a fused
    tensor split into equal parts, transposes undone), contiguous for saving."""
    out: dict[str, Tensor] = {}
    for r in table:
        parts = ours[r.ours].chunk(len(r.theirs), dim=0)
        for name, part in zip(r.theirs, parts):
            out[name] = (part.t() if r.transpose else part).contiguous()
    return out
