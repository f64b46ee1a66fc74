"""The one way tests launch `torchrun`: through this interpreter, never found on PATH."""

from __future__ import annotations

import sys


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N ARGS...`.

    `sys.executable` is the interpreter running the tests, so the launcher and its workers
    import the same torch and tinygen; `--standalone` picks a free port, so two test runs
    on one machine never collide on a fixed one."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        *args,
    ]
