"""How many CPU threads torch uses, and how its OpenMP threads wait: one policy for a quiet
and for a busy CPU, set before torch loads.

torch's intra-op threads are OpenMP threads (libgomp in the CPU wheels). Between parallel
regions they spin-wait for each other; when other processes keep the cores busy, a spinning
thread burns the time slice that the thread it waits for needs, and a small model trains
many times slower (issue 17: the 2-minute quick start took 41 minutes beside 3-4 other
jobs). libgomp reads its settings once, when torch loads it, so `apply_thread_policy` runs
in `tinygen.cli.main.main()` before any command imports torch:

- threads (`choose_threads`): the physical cores this process may use, less the cores that
  other processes keep busy right now (the run queue, sampled for ~20 ms: the 1-minute load
  average still counts a run that just ended), shared among the torchrun processes on this
  host; at least one.
- wait policy (`choose_wait_policy`): OMP_WAIT_POLICY=PASSIVE (waiting threads sleep)
  whenever the cores are shared -- other processes busy, several processes of ours, or
  more threads than cores -- and libgomp's default (spin a while, then sleep) on a quiet
  CPU, where spinning was the faster (issue 17: 15.4 s against 17.9 s for 200 steps).
- what the user set wins: `--threads N` over everything; an OMP_NUM_THREADS or
  OMP_WAIT_POLICY (or GOMP_SPINCOUNT) in the environment is left as it is.

This module imports nothing heavy (torch only inside functions, once it is loaded).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
QUIET_LOAD = 0.5  # cores kept busy by others below which the CPU counts as quiet


def choose_threads(
    cpu_count: int, load_avg: float, local_world_size: int = 1, user_threads: int | None = None
) -> int:
    """Threads for one process: `user_threads` if given; else the `cpu_count` cores less
    the `load_avg` cores other processes keep busy (rounded to the nearest core), split
    evenly among the `local_world_size` processes of a torchrun on this host; at least 1."""
    if user_threads is not None:
        return max(1, int(user_threads))
    free = math.floor(cpu_count - max(0.0, load_avg) + 0.5)
    return max(1, free // max(1, local_world_size))


def choose_wait_policy(
    threads: int, cpu_count: int, load_avg: float, local_world_size: int = 1
) -> str | None:
    """PASSIVE when the cores are shared, None (libgomp's default) on a quiet CPU that
    this one process fills with exactly one thread per core."""
    quiet = load_avg < QUIET_LOAD and local_world_size <= 1 and threads == cpu_count
    return None if quiet else "PASSIVE"


def usable_cores() -> int:
    """Physical cores this process may run on: its CPU affinity, one per core (torch's
    default also counts physical cores, not hyperthreads), capped by a cgroup CPU quota."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    count = len(cores)
    try:  # cgroup v2: "max 100000" or "200000 100000" (quota, period)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def other_load(cpu_count: int, local_world_size: int = 1, samples: int = 5) -> float:
    """Cores that other processes keep busy now: the run queue of /proc/loadavg (its
    "running/total" field) sampled `samples` times over ~20 ms, less this process and
    the other torchrun processes on this host, scaled to the cores this process may use
    (in a container the queue counts the whole host). Elsewhere the 1-minute load average."""
    path = Path("/proc/loadavg")
    counts = []
    for i in range(samples):
        try:
            counts.append(int(path.read_text().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            break
        if i + 1 < samples:
            time.sleep(0.004)
    if counts:
        others = sum(counts) / len(counts) - 1 - (local_world_size - 1)
    else:
        try:
            others = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows
            others = 0.0
    online = os.cpu_count() or cpu_count
    return max(0.0, others) * min(1.0, cpu_count / online)


@dataclass
class ThreadPolicy:
    threads: int
    cores: int
    load: float
    wait_policy: str | None  # what OMP_WAIT_POLICY is (None: unset)
    source: str  # "auto", "--threads" or "OMP_NUM_THREADS"
    processes: int = 1  # torchrun processes on this host


_applied: ThreadPolicy | None = None


def threads_from_argv(argv: list[str]) -> int | None:
    """The value of `--threads N` / `--threads=N` in a command line, read before argparse
    (which runs only after every command module has imported torch); None when absent or
    not a positive integer (argparse then reports it)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        value = None
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        if value is not None:
            return int(value) if value.isdigit() and int(value) > 0 else None
    return None


def apply_thread_policy(
    user_threads: int | None = None,
    environ: MutableMapping[str, str] = os.environ,
    *,
    torch_loaded: bool | None = None,
) -> ThreadPolicy | None:
    """Decide the threads and wait policy and set them: as OMP_* variables while torch is
    not loaded yet (libgomp reads them once, as it loads), through `torch.set_num_threads`
    once it is. A program that loaded torch itself keeps its own settings (None is
    returned) unless `user_threads` is given."""
    global _applied
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    if torch_loaded and user_threads is None:
        _applied = None
        return None
    local = environ.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    cores = usable_cores()
    load = other_load(cores, processes)
    env_threads = environ.get("OMP_NUM_THREADS", "")
    if user_threads is not None:
        threads, source = choose_threads(cores, load, processes, user_threads), "--threads"
    elif env_threads.isdigit() and int(env_threads) > 0:
        threads, source = int(env_threads), "OMP_NUM_THREADS"
    else:
        threads, source = choose_threads(cores, load, processes), "auto"
    if torch_loaded:
        set_torch_threads(threads)
    else:
        if source != "OMP_NUM_THREADS":
            environ["OMP_NUM_THREADS"] = str(threads)
        user_wait = bool(env_threads) or any(name in environ for name in WAIT_SETTINGS)
        wait = choose_wait_policy(threads, cores, load, processes)
        if wait is not None and not user_wait:
            environ["OMP_WAIT_POLICY"] = wait
    _applied = ThreadPolicy(threads, cores, load, environ.get("OMP_WAIT_POLICY"), source, processes)
    return _applied


def set_torch_threads(threads: int) -> None:
    """`--threads N` in a process where torch is already loaded."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def describe_threads() -> str:
    """One line for the start of training: the threads torch really uses, of how many
    cores, why, and how they wait."""
    import torch

    threads = torch.get_num_threads()
    wait = os.environ.get("OMP_WAIT_POLICY")
    waiting = f"OMP_WAIT_POLICY={wait}" if wait else "OpenMP's default wait (spin, then sleep)"
    policy = _applied
    if policy is None:
        cores = usable_cores()
        return (
            f"threads: {threads} of {cores} cores (torch loaded before tinygen's policy), {waiting}"
        )
    per = f" per process, {policy.processes} processes" if policy.processes > 1 else ""
    why = {
        "auto": f"load {policy.load:.1f} from other processes",
        "--threads": "--threads",
        "OMP_NUM_THREADS": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
    }[policy.source]
    return f"threads: {threads}{per} of {policy.cores} cores ({why}), {waiting}"


THREADS_HELP = (
    "CPU threads for torch (default: the physical cores that other processes leave free, "
    "shared among torchrun's processes; an OMP_NUM_THREADS you set is kept)"
)


def threads_type(value: str) -> int:
    """argparse type of `--threads`: a positive integer."""
    import argparse

    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return int(value)
