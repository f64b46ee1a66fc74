"""Helpers every CLI command uses: dataclass configs as flags, a preset's training run
with the flags on top. (`interrupted` lives in tinygen.recipes.common.)"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, TypeVar

from tinygen.recipes.common import interrupted, is_main_process
from tinygen.train.config import TrainConfig

T = TypeVar("T")


def _flag_type(tp: Any) -> tuple[Any, bool]:
    """The argparse type of a dataclass field annotation, and whether it is a bool."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    if tp is bool:
        return None, True
    if tp in (int, float, str):
        return tp, False
    if typing.get_origin(tp) in (list, tuple):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return (lambda s, inner=inner: [inner(x) for x in s.split(",") if x]), False
    return str, False


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (), title: str = ""
) -> None:
    """Add one `--field-name` flag per dataclass field. Defaults are None so that
    `dataclass_from_args` can tell which flags the user set (presets fill the rest)."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{help_text} (default {default})".strip()
        argtype, is_bool = _flag_type(hints[f.name])
        if is_bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(flag, dest=f.name, type=argtype, default=None, help=help_text)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """`base` (or the defaults) with every flag the user set applied on top."""
    base = base if base is not None else cls()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **changes)


def filter_fields(cls: type, values: dict) -> dict:
    """Keep only the keys that are fields of `cls` (configs saved by older versions)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def train_config_from_args(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """`base` (a preset's training run) with the flags applied; a --max-iters given without
    --lr-decay-iters also sets the decay length, so the schedule ends where training does."""
    train = dataclass_from_args(TrainConfig, args, base)
    if getattr(args, "max_iters", None) is not None and getattr(args, "lr_decay_iters", 1) is None:
        train = dataclasses.replace(train, lr_decay_iters=args.max_iters)
    return train


def finish_training(result: Any, out: Any, next_step: str) -> int:
    """The exit code of a training command and its last line: the resume hint after Ctrl-C
    (130), else (on rank 0) "done: step N, best val loss L; <next_step>" (0)."""
    if interrupted(result, out):
        return 130
    if is_main_process():
        print(
            f"done: step {result.step}, best val loss {result.best_val_loss:.4f}; {next_step}",
            file=sys.stderr,
        )
    return 0
