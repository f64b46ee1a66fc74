"""The `tinygen` command: `tinygen train gpt`, `tinygen sample diffusion`, ...

Commands live in one module per model family; each exposes `register(commands)` and adds
its subcommands to the verbs it needs. A handler returns an exit code (or None for 0).
User errors (`TinygenError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from dataclasses import dataclass

from tinygen.errors import TinygenError
from tinygen.threads import THREADS_HELP, apply_thread_policy, threads_from_argv, threads_type

COMMAND_MODULES = (
    "gpt",
    "seq2seq",
    "finetune",
    "shapes",
    "clip",
    "diffusion",
    "diffusion_sample",
    "glide",
    "stable_diffusion",
    "text2image",
    "unclip",
    "unclip_use",
    "autoencoder",
    "latent_diffusion",
    "img2img",
)
VERBS = {
    "train": "train a model from scratch",
    "sample": "generate from a trained model",
    "eval": "measure a trained model",
}


@dataclass
class Commands:
    """Where command modules attach: `root` for new top-level commands (translate,
    finetune, clip, memory, img2img), and the subparsers of each shared verb."""

    root: argparse._SubParsersAction
    train: argparse._SubParsersAction
    sample: argparse._SubParsersAction
    eval: argparse._SubParsersAction


def build_parser() -> argparse.ArgumentParser:
    from tinygen.cli.common import Parser, document_flags  # (after the thread policy is set)

    parser = Parser(
        prog="tinygen", description="The generative-AI stack, from scratch, on your laptop."
    )
    root = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    verbs = {}
    for verb, help_text in VERBS.items():
        sub = root.add_parser(verb, help=help_text, description=help_text)
        verbs[verb] = sub.add_subparsers(dest="target", metavar="MODEL", required=True)
    commands = Commands(root=root, **verbs)
    for name in COMMAND_MODULES:
        importlib.import_module(f"tinygen.cli.{name}").register(commands)
    add_threads_option(parser)
    document_flags(parser)
    return parser


def add_threads_option(parser: argparse.ArgumentParser, default: object = None) -> None:
    """`--threads N` on the root and on every subcommand, so `tinygen --threads 2 train gpt`
    and `tinygen train gpt --threads 2` both work; below the root the default is SUPPRESS,
    so a subcommand never overwrites the value the root parsed."""
    if "--threads" not in parser._option_string_actions:
        parser.add_argument(
            "--threads", type=threads_type, default=default, metavar="N", help=THREADS_HELP
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                add_threads_option(sub, argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    early = threads_from_argv(argv)
    apply_thread_policy(early)  # before the command modules import torch (and libgomp)
    parser = build_parser()
    if not argv:  # `tinygen` alone: the commands, as argparse's usage error would not list
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except TinygenError as e:  # a flag argparse refused (cli.common.Parser): one line
        print(f"tinygen: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "threads", None) not in (None, early):  # e.g. an abbreviated --thr
        apply_thread_policy(args.threads)
    code = 1
    try:
        code = int(args.func(args) or 0)
    except TinygenError as e:
        print(f"tinygen: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("tinygen: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into `head` & co.: stop quietly, as cat does
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open until exit
        code = 0
    finally:
        from tinygen.train.distributed import shutdown_distributed

        shutdown_distributed(clean=code == 0)
    return code


def entry() -> None:
    """The `tinygen` command: `main()`, then exit without the interpreter's teardown.

    Everything a command writes is already on disk (atomically, fsynced) when `main()`
    returns; what is left is Python freeing torch's modules and thread pools one by one,
    which takes ~0.8 s on a quiet 2-core CPU and more on a busy one -- 5% of a two-minute
    run for nothing. So flush the two streams and leave at once. (Library callers of
    `main()` keep the normal exit.)
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
