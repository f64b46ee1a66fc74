"""`--precision auto`: bf16 autocast only where the CPU runs bf16 natively (AMX, AVX-512
BF16), fp32 elsewhere (bf16 is emulated there: 0.05x of fp32 for the diffusion U-Net on an
AVX2 host, issue 17); one line says which and why, an explicit bf16 there warns."""

import pytest
import torch
from torch import nn

from tinygen.errors import TinygenError
from tinygen.train import device as device_module
from tinygen.train.config import TrainConfig
from tinygen.train.device import (
    autocast,
    cpu_has_native_bf16,
    precision_notice,
    resolve_precision,
)
from tinygen.train.trainer import Trainer

CPU = torch.device("cpu")
AVX2 = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
AVX512_NO_BF16 = {"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
AVX512_BF16 = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": False}
AMX = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend torch's CPU probe found `caps` and dispatches to kernel level `level`."""

    def pretend(caps: dict, level: str) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: level)

    return pretend


@pytest.mark.parametrize(
    "caps, level, what",
    [(AVX2, "AVX2", "AVX2"), (AVX512_NO_BF16, "AVX512", "AVX512")],
)
def test_auto_is_fp32_on_a_cpu_that_only_emulates_bf16(cpu_with, caps, level, what):
    cpu_with(caps, level)
    assert cpu_has_native_bf16() == (False, what)
    dtype, reason = resolve_precision(CPU, "auto")
    assert dtype is None
    assert reason == f"fp32 (this CPU has no native bf16: {what})"
    with autocast(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("caps, what", [(AVX512_BF16, "AVX-512 BF16"), (AMX, "AMX")])
def test_auto_is_bf16_where_the_cpu_runs_it_natively(cpu_with, caps, what):
    cpu_with(caps, "AVX512")
    assert cpu_has_native_bf16() == (True, what)
    dtype, reason = resolve_precision(CPU, "auto")
    assert dtype is torch.bfloat16
    assert reason == f"bf16 autocast (this CPU runs bf16 natively: {what})"
    with autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16


def test_explicit_bf16_on_an_emulating_cpu_warns_with_the_expected_slowdown(cpu_with):
    cpu_with(AVX2, "AVX2")
    dtype, _ = resolve_precision(CPU, "bf16")
    assert dtype is torch.bfloat16  # asked for, so given: the warning says what it costs
    line, slow = precision_notice(CPU, "bf16")
    assert slow and line.startswith("warning: precision bf16: ")
    assert "no native bf16 (AVX2)" in line and "20x slower than fp32" in line
    assert "--precision auto" in line and "\n" not in line


def test_explicit_bf16_on_a_native_cpu_does_not_warn(cpu_with):
    cpu_with(AMX, "AMX")
    line, slow = precision_notice(CPU, "bf16")
    assert (
        not slow
        and line == "precision bf16: bf16 autocast (asked for; this CPU runs it natively: AMX)"
    )


@pytest.mark.parametrize("caps", [AVX2, AMX])
def test_fp32_and_cuda_do_not_depend_on_the_cpu(cpu_with, caps):
    cpu_with(caps, "AVX2")
    assert resolve_precision(CPU, "fp32") == (None, "fp32 (asked for)")
    assert resolve_precision(torch.device("cuda"), "auto")[0] is torch.bfloat16
    assert resolve_precision(torch.device("cuda"), "fp32")[0] is None


def test_unknown_precision_is_an_error_that_lists_the_choices():
    with pytest.raises(TinygenError, match="choose auto, fp32, bf16"):
        resolve_precision(CPU, "fp16")


def test_the_real_probe_answers_in_words():
    native, what = cpu_has_native_bf16()
    assert isinstance(native, bool) and what


def test_an_old_torch_without_the_probe_counts_as_not_native(monkeypatch):
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert device_module.cpu_has_native_bf16() == (False, "AVX2")


class LineTask:
    """y = 2x + 1 with a linear layer: the smallest thing a Trainer can train."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(1, 1)

    def get_batch(self, split, batch_size, generator):
        x = torch.randn(batch_size, 1, generator=generator)
        return x, 2 * x + 1

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x).float(), y)


def run_trainer(tmp_path, precision: str, progress: bool) -> None:
    config = TrainConfig(
        max_iters=2,
        batch_size=4,
        eval_interval=2,
        eval_iters=1,
        log_interval=1,
        warmup_iters=0,
        device="cpu",
        precision=precision,
    )
    Trainer(LineTask(), config, tmp_path / "run", progress=progress).fit()


def test_training_starts_with_one_precision_line_and_one_thread_line(tmp_path, capsys, cpu_with):
    cpu_with(AVX2, "AVX2")
    run_trainer(tmp_path, "auto", progress=True)
    lines = [
        x for x in capsys.readouterr().err.splitlines() if x.startswith(("precision", "threads"))
    ]
    assert lines[0] == "precision auto: fp32 (this CPU has no native bf16: AVX2)"
    assert lines[1].startswith(f"threads: {torch.get_num_threads()}")
    assert len(lines) == 2


def test_a_quiet_run_still_warns_about_emulated_bf16(tmp_path, capsys, cpu_with):
    cpu_with(AVX2, "AVX2")
    run_trainer(tmp_path, "auto", progress=False)
    assert capsys.readouterr().err == ""  # progress=False is quiet...
    run_trainer(tmp_path / "again", "bf16", progress=False)
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: precision bf16:") and len(err.splitlines()) == 1  # ...but warns
