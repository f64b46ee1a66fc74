"""Helpers every CLI command uses: dataclass configs as flags, checked flag types, a
preset's training run with the flags on top. (`interrupted` lives in tinygen.recipes.common.)

Every numeric flag states its range once: a dataclass field in its metadata (tinygen.fields),
an argparse-only flag through a checked type (`positive_int`, `unit_interval`, ...). A bad
value is one error line naming the flag, the value and the range, before any work starts."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from tinygen.errors import TinygenError
from tinygen.fields import check_fields, either, rule_of, rule_text, violation
from tinygen.recipes.common import interrupted, is_main_process
from tinygen.train.config import TrainConfig

T = TypeVar("T")


class UsageError(TinygenError):
    """A command line argparse refuses: an unknown flag, a missing one, a bad value."""


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: what is wrong raises a `UsageError` that
    names the flag (`--n must be >= 1, got 0 (see: tinygen sample shapes --help)`) and
    `tinygen.cli.main` prints as one line; a missing subcommand lists the choices."""

    def error(self, message: str) -> typing.NoReturn:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and "required" in message:
                message = f"choose a {action.metavar}: {', '.join(action.choices)}"
        invalid = r"argument (\S+): invalid choice: (.*) \(choose from (.*)\)$"
        if choice := re.match(invalid, message):  # as tinygen.fields says it
            flag, value, options = choice.groups()
            names = [o.strip().strip("'") for o in options.split(",")]
            message = f"unknown {flag} {value}; choose {either(names)}"
        message = re.sub(r"^argument ([^:]+): must", r"\1 must", message)
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        raise UsageError(f"{message} (see: {self.prog} --help)")


def document_flags(parser: argparse.ArgumentParser) -> None:
    """Make every flag's help tell its range and default: the range of a checked type
    (`[>= 1]`) and, where the help does not say it, the default argparse will use."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                document_flags(sub)
            continue
        if not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        default = action.default
        if not (
            action.nargs == 0 or default in (None, argparse.SUPPRESS) or "default" in action.help
        ):
            if isinstance(default, (list, tuple)):
                default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            action.help += f" (default {default})"
        rule = getattr(action.type, "rule", "")
        if rule and rule not in action.help:  # "images (>= 1; default 16)"
            head, paren, tail = action.help.partition(" (default")
            action.help = f"{head} ({rule}; default{tail}" if paren else f"{head} ({rule})"


def checked(kind: type, **rule: Any) -> Callable[[str], Any]:
    """An argparse type: `kind(text)`, held to `rule` (tinygen.fields keys: min, max, above,
    below). A bad value is `--flag must be >= 1, got 0`; `.rule` is shown in --help."""
    wanted = " ".join(filter(None, ("an integer" if kind is int else "a number", rule_text(rule))))

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if (why := violation(value, rule)) is not None:
            raise argparse.ArgumentTypeError(why)
        return value

    parse.__name__ = kind.__name__
    parse.rule = rule_text(rule)  # type: ignore[attr-defined]
    return parse


def comma_list(item: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse type for `0,1,2,4`: a non-empty list of `item`s (each checked)."""

    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list, got {text!r}")
        return [item(p) for p in parts]

    parse.__name__ = "list"
    rule = getattr(item, "rule", "")
    parse.rule = f"each {rule}" if rule else ""  # type: ignore[attr-defined]
    return parse


def non_empty_text(text: str) -> str:
    """An argparse type: any text but an empty or blank one."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must not be empty, got {text!r}")
    return text


positive_int = checked(int, min=1)
non_negative_int = checked(int, min=0)
positive_float = checked(float, above=0)
non_negative_float = checked(float, min=0)
unit_interval = checked(float, min=0, max=1)


def field_type(cls: type, name: str) -> Callable[[str], Any]:
    """The checked argparse type of one field of `cls`, for a flag that fills it but is not
    made by `add_dataclass_flags` (e.g. `--eta` -> SamplerConfig.eta)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    kind, _ = _flag_type(typing.get_type_hints(cls)[name])
    return checked(kind, **rule_of(f)) if kind in (int, float) else kind


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


def _field_flag_type(tp: Any, f: dataclasses.Field) -> tuple[Any, bool]:
    """`_flag_type` held to the field's metadata rule (choices are left to argparse)."""
    argtype, is_bool = _flag_type(tp)
    rule = {k: v for k, v in rule_of(f).items() if k != "choices"}
    if is_bool or not rule:
        return argtype, is_bool
    if argtype in (int, float):
        return checked(argtype, **rule), False
    inner = checked(typing.get_args(_flag_type_inner(tp))[0], **rule)
    return comma_list(inner), False


def _flag_type_inner(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    title: str = "",
    defaults: Any = None,
    source: str = "",
) -> None:
    """Add one `--field-name` flag per dataclass field, typed and range-checked from its
    metadata. Defaults are None so that `dataclass_from_args` can tell which flags the user
    set (presets fill the rest); --help shows the values of `defaults` (the preset a command
    starts from, named in `source`, e.g. "--preset baby") or else the dataclass's own."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        note = f", {source}" if source and defaults is not None else ""
        help_text = f.metadata.get("help", "").replace("%", "%%")
        if shown is not None:
            help_text = f"{help_text} (default {shown}{note})".strip()
        argtype, is_bool = _field_flag_type(hints[f.name], f)
        if is_bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                flag,
                dest=f.name,
                type=argtype,
                default=None,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def dataclass_from_args(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """`base` (or the defaults) with every flag the user set applied on top, its fields held
    to their metadata ranges (tinygen.fields.check_fields)."""
    base = base if base is not None else cls()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    config = dataclasses.replace(base, **changes)
    check_fields(config)
    return config


def filter_fields(cls: type, values: dict) -> dict:
    """Keep only the keys that are fields of `cls` (configs saved by older versions)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def train_config_from_args(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """`base` (a preset's training run) with the flags applied, checked before any work
    starts (TrainConfig.validate, and that the device exists). A --max-iters given without
    --lr-decay-iters also sets the decay length, so the schedule ends where training does; a
    --learning-rate given without --min-lr moves the preset's floor with it (same ratio)."""
    train = dataclass_from_args(TrainConfig, args, base)
    if getattr(args, "max_iters", None) is not None and getattr(args, "lr_decay_iters", 1) is None:
        train = dataclasses.replace(train, lr_decay_iters=args.max_iters)
    lr = getattr(args, "learning_rate", None)
    if lr is not None and getattr(args, "min_lr", 1) is None and base.min_lr is not None:
        train = dataclasses.replace(train, min_lr=lr * base.min_lr / base.learning_rate)
    train.validate()
    from tinygen.train.device import resolve_device

    resolve_device(train.device)  # an absent --device cuda, before any data is drawn
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
