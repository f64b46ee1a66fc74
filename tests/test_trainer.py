"""The shared trainer: learning, exact resume, atomic checkpoints, interrupts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tinygen.data.text import TextTask, encode_corpus
from tinygen.data.tokenizers import CharTokenizer
from tinygen.errors import TinygenError
from tinygen.models.gpt import GPT, GPTConfig
from tinygen.train import checkpoint as ckpt
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import Trainer


def make_task(text, *, dropout=0.1, block_size=32, seed=0):
    tok = CharTokenizer.from_text(text)
    n = int(0.9 * len(text))
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=tok.vocab_size,
        block_size=block_size,
        n_layer=2,
        n_head=2,
        n_embd=32,
        dropout=dropout,
    )
    model = GPT(config)
    task = TextTask(model, encode_corpus(text[:n], tok), encode_corpus(text[n:], tok), block_size)
    return task, {"model_type": "gpt", "model": config.__dict__}


def train_config(**kw):
    base = dict(
        max_iters=40,
        batch_size=8,
        eval_interval=10,
        eval_iters=2,
        log_interval=2,
        lr_decay_iters=40,
        warmup_iters=5,
        seed=5,
    )
    return TrainConfig(**{**base, **kw})


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in rows]


@pytest.fixture(scope="module")
def text(shakespeare):
    return shakespeare[:50_000]


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, text):
    task, run_config = make_task(text)
    Trainer(task, train_config(), tmp_path / "full", run_config=run_config, progress=False).fit()

    task, run_config = make_task(text)
    interrupted = Trainer(
        task, train_config(max_iters=20), tmp_path / "part", run_config=run_config, progress=False
    )
    interrupted.fit()
    # a metrics line written after the last checkpoint must not survive the resume
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 21, "train_loss": 9.9}) + "\n")
    task, run_config = make_task(text, seed=123)  # different init: resume must overwrite it
    Trainer(
        task, train_config(), tmp_path / "part", run_config=run_config, resume=True, progress=False
    ).fit()
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, text):
    task, run_config = make_task(text)
    with pytest.raises(TinygenError, match="never saved a checkpoint"):
        Trainer(task, train_config(), tmp_path / "none", run_config=run_config, resume=True)


def test_starting_over_an_existing_run_is_refused(tmp_path, text):
    task, run_config = make_task(text)
    Trainer(
        task, train_config(max_iters=10), tmp_path / "r", run_config=run_config, progress=False
    ).fit()
    with pytest.raises(TinygenError, match="--resume"):
        Trainer(task, train_config(), tmp_path / "r", run_config=run_config)


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "state.pt"
    ckpt.save_state({"step": 1}, target)

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpo")
        raise OSError("killed mid-write")

    with pytest.raises(OSError):
        ckpt.atomic_write(target, crash)
    assert ckpt.load_state(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


def test_corrupt_trainer_state_is_a_clear_error(tmp_path):
    (tmp_path / "trainer_state.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(TinygenError, match="corrupt"):
        ckpt.load_state(tmp_path / "trainer_state.pt")


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path, text):
    task, run_config = make_task(text)
    original = task.get_batch
    calls = {"n": 0}

    def interrupting(split, batch_size, generator):
        calls["n"] += 1
        if split == "train" and calls["n"] == 15:
            raise KeyboardInterrupt
        return original(split, batch_size, generator)

    task.get_batch = interrupting
    result = Trainer(
        task, train_config(), tmp_path / "r", run_config=run_config, progress=False
    ).fit()
    assert result.interrupted
    assert ckpt.load_state(tmp_path / "r" / "trainer_state.pt")["step"] == result.step > 0


def test_sigkill_during_training_resumes_the_same_curve(tmp_path, corpus_file):
    """Kill a real `tinygen train gpt` process with SIGKILL at an arbitrary moment (possibly
    while it writes a checkpoint); `--resume` must finish with the uninterrupted curve."""
    args = [
        sys.executable,
        "-m",
        "tinygen",
        "train",
        "gpt",
        "--data",
        str(corpus_file),
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--block-size",
        "32",
        "--batch-size",
        "8",
        "--max-iters",
        "120",
        "--eval-interval",
        "5",
        "--eval-iters",
        "2",
        "--log-interval",
        "5",
        "--no-progress",
        "--threads",  # one thread in all three processes: the same float reductions, whatever
        "1",  # the load (a busy machine may otherwise get fewer threads for one of them)
    ]
    subprocess.run([*args, "--out", str(tmp_path / "full")], check=True, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [*args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "trainer_state.pt").exists():
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "trainer_state.pt").exists()
    subprocess.run([*args, "--out", str(run), "--resume"], check=True, capture_output=True)
    assert losses(run) == losses(tmp_path / "full")


def test_short_training_run_beats_unigram_entropy(tmp_path, text):
    """300 steps of a tiny GPT must predict characters far better than their frequencies
    (on the shipped Shakespeare: val 2.4 against a unigram entropy of 3.3)."""
    task, run_config = make_task(text, dropout=0.0, block_size=64)
    counts = torch.bincount(task.data["val"], minlength=task.model.config.vocab_size).float()
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = -(p * p.log()).sum().item()  # ~3.3 nats for Shakespeare
    cfg = train_config(
        max_iters=300,
        lr_decay_iters=300,
        eval_interval=300,
        eval_iters=20,
        batch_size=16,
        learning_rate=3e-3,
    )
    result = Trainer(task, cfg, tmp_path / "r", run_config=run_config, progress=False).fit()
    assert result.last_val_loss < unigram_entropy - 0.6
    assert (tmp_path / "r" / "loss.png").stat().st_size > 1000


def test_bf16_precision_on_cpu_trains_close_to_fp32(tmp_path, text):
    """precision=bf16 runs the forward under CPU autocast (bf16 matmuls), fp32 does not; the
    two loss curves of the same run agree to bf16 accuracy, and both learn."""
    from tinygen.train.device import autocast

    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    curves = {}
    for precision in ("fp32", "bf16"):
        task, run_config = make_task(text, dropout=0.0)
        config = train_config(
            precision=precision, device="cpu", learning_rate=3e-3, max_iters=80, lr_decay_iters=80
        )
        Trainer(task, config, tmp_path / precision, run_config=run_config, progress=False).fit()
        curves[precision] = [r for r in losses(tmp_path / precision) if r[2] is not None]
    for (_, _, fp32), (_, _, bf16) in zip(curves["fp32"], curves["bf16"], strict=True):
        assert abs(fp32 - bf16) < 0.05 * fp32
    assert curves["bf16"][-1][2] < curves["bf16"][0][2] - 0.3  # measured: 3.63 -> 2.95


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(TinygenError, match="--precision"):
        TrainConfig(precision="fp16").validate()


def test_max_minutes_stops_at_a_log_step_evaluates_saves_and_can_resume(tmp_path, text):
    # a deadline already past: the first log step (2) is the last, with an evaluation
    task, run_config = make_task(text)
    config = train_config(max_minutes=1e-9)
    result = Trainer(task, config, tmp_path / "r", run_config=run_config, progress=False).fit()
    assert result.step == 2
    rows = losses(tmp_path / "r")
    assert rows[-1][0] == 2 and rows[-1][2] is not None  # evaluated at the stop
    # resumed without the limit, the run goes on from its checkpoint to max_iters
    task, run_config = make_task(text)
    result = Trainer(
        task, train_config(), tmp_path / "r", run_config=run_config, resume=True, progress=False
    ).fit()
    assert result.step == 40


def test_a_resume_with_new_settings_records_them_in_config_json(tmp_path, text):
    task, run_config = make_task(text)
    config = train_config(max_iters=10)
    Trainer(task, config, tmp_path / "r", run_config=run_config, progress=False).fit()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    saved["scale_factor"] = 0.5  # a key a recipe adds after training is kept
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    task, run_config = make_task(text)
    longer = train_config(max_iters=20)
    Trainer(task, longer, tmp_path / "r", run_config=run_config, resume=True, progress=False).fit()
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["train"]["max_iters"] == 20 and config["scale_factor"] == 0.5
    assert config["resumes"] == [{"step": 10, "changed": ["train.max_iters: saved 10, now 20"]}]
