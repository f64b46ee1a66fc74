"""The CPU thread policy: threads from the cores other processes leave free, one per
process under torchrun, OMP_WAIT_POLICY=PASSIVE whenever the cores are shared, what the
user set kept, and `--threads N` over everything (issue 17: torch's spinning OpenMP threads
made a 2-minute run take 41 minutes on a busy CPU)."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

from tinygen import threads as policy_module
from tinygen.cli.main import build_parser, main
from tinygen.threads import (
    choose_threads,
    choose_wait_policy,
    describe_threads,
    other_load,
    threads_from_argv,
    usable_cores,
)


@pytest.mark.parametrize(
    "cores, load, processes, user, expected",
    [
        (2, 0.0, 1, None, 2),  # quiet: every core
        (2, 0.3, 1, None, 2),  # a browser tab's flicker takes no core away
        (2, 0.7, 1, None, 1),  # most of a core is busy
        (2, 1.0, 1, None, 1),  # one competing busy process
        (2, 2.0, 1, None, 1),  # two: still one thread, never zero
        (2, 5.0, 1, None, 1),
        (16, 3.2, 1, None, 13),
        (2, 0.0, 2, None, 1),  # torchrun --nproc_per_node 2 on 2 cores: one thread each
        (16, 0.0, 4, None, 4),
        (16, 8.0, 4, None, 2),
        (2, 0.0, 1, 4, 4),  # --threads wins, even above the core count
        (2, 2.0, 2, 3, 3),
    ],
)
def test_choose_threads(cores, load, processes, user, expected):
    assert choose_threads(cores, load, processes, user) == expected


@pytest.mark.parametrize(
    "threads, cores, load, processes, expected",
    [
        (2, 2, 0.0, 1, None),  # quiet and filled: libgomp's spin is the faster
        (2, 2, 0.6, 1, "PASSIVE"),  # others busy
        (1, 2, 1.0, 1, "PASSIVE"),
        (1, 2, 0.0, 1, "PASSIVE"),  # fewer threads than cores (--threads 1)
        (4, 2, 0.0, 1, "PASSIVE"),  # more threads than cores
        (1, 2, 0.0, 2, "PASSIVE"),  # several processes of ours
    ],
)
def test_choose_wait_policy(threads, cores, load, processes, expected):
    assert choose_wait_policy(threads, cores, load, processes) == expected


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "gpt"], None),
        (["--threads", "2", "train", "gpt"], 2),
        (["train", "gpt", "--threads", "3"], 3),
        (["train", "gpt", "--threads=4"], 4),
        (["train", "gpt", "--threads", "0"], None),  # argparse reports it
        (["train", "gpt", "--threads", "x"], None),
        (["train", "gpt", "--", "--threads", "2"], None),
    ],
)
def test_threads_from_argv(argv, expected):
    assert threads_from_argv(argv) == expected


@pytest.fixture
def machine(monkeypatch):
    """A pretend machine: `cores` physical cores, `load` cores busy with other processes."""

    def pretend(cores: int, load: float) -> None:
        monkeypatch.setattr(policy_module, "usable_cores", lambda: cores)
        monkeypatch.setattr(policy_module, "other_load", lambda cpu_count, processes=1: load)

    yield pretend
    policy_module._applied = None


def apply(environ: dict, user_threads=None):
    return policy_module.apply_thread_policy(user_threads, environ, torch_loaded=False)


def test_a_quiet_cpu_gets_every_core_and_the_default_wait(machine):
    machine(2, 0.0)
    env: dict = {}
    policy = apply(env)
    assert env == {"OMP_NUM_THREADS": "2"} and policy.source == "auto"


def test_a_busy_cpu_gets_the_free_cores_and_passive_waits(machine):
    machine(2, 1.0)
    env: dict = {}
    apply(env)
    assert env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def test_under_torchrun_each_process_gets_its_share(machine):
    machine(8, 0.0)
    env = {"LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "4"}
    apply(env)
    assert env["OMP_NUM_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("load", [0.0, 1.0])
def test_a_user_set_omp_num_threads_is_kept_and_its_wait_left_alone(machine, load):
    machine(2, load)
    env = {"OMP_NUM_THREADS": "2"}
    policy = apply(env)
    assert env == {"OMP_NUM_THREADS": "2"}
    assert policy.threads == 2 and policy.source == "OMP_NUM_THREADS"


def test_a_user_set_wait_policy_is_kept(machine):
    machine(2, 1.0)
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    apply(env)
    assert env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}


def test_the_threads_flag_overrides_the_environment(machine):
    machine(2, 0.0)
    env = {"OMP_NUM_THREADS": "1"}
    policy = apply(env, user_threads=3)
    assert env["OMP_NUM_THREADS"] == "3" and policy.source == "--threads"


def test_the_policy_line_says_threads_cores_load_and_wait(machine, monkeypatch):
    machine(2, 1.0)
    env: dict = {}
    apply(env)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    line = describe_threads()
    assert line == (
        f"threads: {torch.get_num_threads()} of 2 cores (load 1.0 from other processes), "
        "OMP_WAIT_POLICY=PASSIVE"
    )


def test_a_program_that_loaded_torch_itself_keeps_its_threads(monkeypatch):
    env = {"OMP_NUM_THREADS": "7"}
    assert policy_module.apply_thread_policy(None, env, torch_loaded=True) is None
    assert env == {"OMP_NUM_THREADS": "7"}
    assert "torch loaded before tinygen's policy" in describe_threads()


def test_the_machine_probes_answer_sensibly():
    cores = usable_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert other_load(cores) >= 0.0


def leaf_parsers(parser: argparse.ArgumentParser):
    children = [
        sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
    ]
    if not children:
        yield parser
    for child in children:
        yield from leaf_parsers(child)


def test_every_command_takes_threads():
    parser = build_parser()
    leaves = list(leaf_parsers(parser))
    assert len(leaves) >= 10
    assert all("--threads" in leaf._option_string_actions for leaf in leaves)
    assert parser.parse_args(["--threads", "2", "memory", "--model", "x"]).threads == 2
    assert parser.parse_args(["memory", "--model", "x", "--threads", "3"]).threads == 3
    assert parser.parse_args(["memory", "--model", "x"]).threads is None


def test_threads_must_be_a_positive_integer(capsys):
    assert main(["memory", "--model", "llama-2-7b", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--threads" in err and "positive integer, got '0'" in err and len(err.splitlines()) == 1


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    policy_module._applied = None


@pytest.mark.parametrize(
    "argv",
    [
        ["--threads", "3", "memory", "--model", "llama-2-7b"],
        ["memory", "--model", "llama-2-7b", "--threads", "3"],
        ["memory", "--model", "llama-2-7b", "--thr", "3"],  # argparse's abbreviation too
    ],
)
def test_the_threads_flag_reaches_torch_in_process(argv, restore_threads, capsys):
    torch.set_num_threads(1)
    before = dict(os.environ)
    assert main(argv) == 0
    assert torch.get_num_threads() == 3
    assert dict(os.environ) == before  # torch was loaded: nothing to set for libgomp


def fresh_process(argv: list[str], **env: str) -> list[str]:
    """torch.get_num_threads() and OMP_WAIT_POLICY after `main(argv)` in a new process."""
    code = (
        "import os, sys; from tinygen.cli.main import main; assert 'torch' not in sys.modules;"
        "main(sys.argv[1:]); import torch;"
        "print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'))"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    out = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.split("\n")[-2].split()


def test_a_fresh_process_gets_the_flag_before_torch_loads():
    threads, wait = fresh_process(["--threads", "1", "memory", "--model", "llama-2-7b"])
    assert threads == "1"
    if usable_cores() > 1:
        assert wait == "PASSIVE"  # one thread on more cores: the cores are shared


def test_a_fresh_process_keeps_a_user_set_omp_num_threads():
    assert fresh_process(["memory", "--model", "llama-2-7b"], OMP_NUM_THREADS="1") == [
        "1",
        "None",
    ]
