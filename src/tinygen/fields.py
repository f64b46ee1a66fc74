"""Ranges and choices of config fields, declared once in the dataclass and checked once.

A config field states what it accepts in its metadata, beside its help text:

    n_layer: int = field(default=6, metadata={"help": "Transformer blocks", "min": 1})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "below": 1.0})
    norm: str = field(default="pre", metadata={"choices": ("pre", "post")})

Keys: `min` / `max` (inclusive), `above` / `below` (exclusive), `choices`; a list or tuple
value is checked item by item. `flag` names the command-line flag when it is not the field's
name (`beta_schedule` is `--schedule`). `check_fields(config)` raises one `TinygenError`
that names the flag, the value and what is allowed (`--warmup-iters must be >= 0, got -5`);
the CLI's flag types and `--help` read the same rules (`violation`, `rule_text`), and
`check_types` holds a saved config.json to the dataclass's annotations. Cross-field rules
(`min_lr <= learning_rate`) stay in each config's `validate()`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from tinygen.errors import TinygenError

RULE_KEYS = ("min", "max", "above", "below", "choices")


def either(options: typing.Iterable[Any]) -> str:
    """`a, b or c`: the choices an error offers."""
    names = [str(o) for o in options]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def rule_text(rule: Mapping[str, Any]) -> str:
    """What a rule allows, in words: `>= 1`, `in [0, 1)`, `> 0`, `one of a, b or c`."""
    if "choices" in rule:
        return f"one of {either(rule['choices'])}"
    low = ("[", rule["min"]) if "min" in rule else ("(", rule["above"]) if "above" in rule else None
    high = (
        ("]", rule["max"]) if "max" in rule else (")", rule["below"]) if "below" in rule else None
    )
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]:g}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]:g}"
    return ""


def violation(value: Any, rule: Mapping[str, Any]) -> str | None:
    """Why `value` breaks `rule` (`must be >= 1, got 0`), or None when it fits. Lists and
    tuples are checked item by item; None always fits (an optional field left unset)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        for item in value:
            if (why := violation(item, rule)) is not None:
                return f"{why} (in {','.join(str(v) for v in value)})"
        return None
    if "choices" in rule:
        if value not in rule["choices"]:
            return f"must be one of {either(rule['choices'])}, got {value!r}"
        return None
    if not any(key in rule for key in RULE_KEYS):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return f"must be a number {rule_text(rule)}, got {value!r}"
    low_ok = value >= rule["min"] if "min" in rule else value > rule.get("above", -math.inf)
    high_ok = value <= rule["max"] if "max" in rule else value < rule.get("below", math.inf)
    if low_ok and high_ok:
        return None
    return f"must be {rule_text(rule)}, got {value!r}"


def rule_of(f: dataclasses.Field) -> dict[str, Any]:
    """The rule keys of one field's metadata."""
    return {key: f.metadata[key] for key in RULE_KEYS if key in f.metadata}


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag that sets a field: `--warmup-iters` (or metadata `flag`)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_fields(config: Any, *, where: str | None = None) -> None:
    """Hold every field of the dataclass instance `config` (and of configs nested in it) to
    its metadata rule. The error names the flag (`--warmup-iters must be >= 0, got -5`), or,
    with `where` (a saved config.json), the field (`runs/x/config.json: model.n_layer ...`)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, where=f"{where}.{f.name}" if where else None)
            continue
        why = violation(value, rule_of(f))
        if why is None:
            continue
        if where is not None:
            raise TinygenError(f"{where}.{f.name} {why}; fix the file or retrain the run")
        if "choices" in f.metadata:
            raise TinygenError(
                f"unknown {flag_of(f)} {value!r}; choose {either(f.metadata['choices'])}"
            )
        raise TinygenError(f"{flag_of(f)} {why}")


# -- saved configs: JSON values against the dataclass's annotations -------------------------


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ')}s"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _fits(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in typing.get_args(tp))
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return isinstance(value, (list, tuple)) and all(_fits(inner, v) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    return True


def check_types(cls: type, values: Any, *, where: str) -> None:
    """Raise a `TinygenError` naming the first entry of `values` (a config read from JSON)
    whose type does not fit the annotation of the field of `cls` it fills, e.g.
    `runs/x/config.json: model.n_embd is '128' (a string), not an integer`. Unknown keys are
    left alone (configs of older versions); nested config objects are checked too."""
    if not isinstance(values, dict):
        raise TinygenError(
            f"{where} is {_json_kind(values)}, not an object of {cls.__name__} fields; "
            "the file is damaged: restore it or retrain the run"
        )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, tp = values[f.name], hints[f.name]
        if not _fits(tp, value):
            raise TinygenError(
                f"{where}.{f.name} is {value!r} ({_json_kind(value)}), not {_describe(tp)}; "
                "the file was edited or damaged: fix the value or retrain the run"
            )
        nested = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if nested and isinstance(value, dict):
            check_types(nested[0], value, where=f"{where}.{f.name}")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    kinds = {dict: "an object", list: "a list", str: "a string", int: "an integer"}
    kinds.update({float: "a number", type(None): "null"})
    return kinds.get(type(value), type(value).__name__)
