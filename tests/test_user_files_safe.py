"""Nothing a user saved is lost or silently replaced: a run directory that holds any part of
a run is refused without --resume or --overwrite; --out that cannot be a run directory is
one clear line; files get the user's permissions; Ctrl-C while the end-of-run pictures are
drawn says the run had finished; the logged throughput counts the steps it covers."""

from __future__ import annotations

import json
import os
import stat
import types

import pytest
import torch

from tinygen import io
from tinygen.cli.main import main
from tinygen.errors import TinygenError
from tinygen.train import trainer as trainer_module
from tinygen.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_GPT = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]
TINY_GPT += ["--max-iters", "4", "--eval-interval", "4", "--eval-iters", "1"]
TINY_GPT += ["--batch-size", "4", "--device", "cpu", "--no-progress"]


def train_gpt(out, *extra: str) -> int:
    return main(["train", "gpt", "--data", "sonnets", "--out", str(out), *TINY_GPT, *extra])


def test_a_finished_run_without_its_trainer_state_is_not_trained_over(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_gpt(out) == 0
    (out / io.STATE_FILE).unlink()  # the old guard looked only at this file
    weights = (out / io.MODEL_FILE).read_bytes()
    metrics = (out / io.METRICS_FILE).read_text()
    capsys.readouterr()
    assert train_gpt(out) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert len(err.splitlines()) == 1
    assert (out / io.MODEL_FILE).read_bytes() == weights
    assert (out / io.METRICS_FILE).read_text() == metrics


def test_overwrite_replaces_the_run_and_leaves_nothing_of_the_old_one(tmp_path):
    out = tmp_path / "run"
    assert train_gpt(out, "--ema-decay", "0.9") == 0
    assert (out / io.EMA_FILE).is_file()
    assert train_gpt(out, "--overwrite") == 0
    assert not (out / io.EMA_FILE).exists()  # the new run has no EMA: no stale one remains
    lines = (out / io.METRICS_FILE).read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == sorted(steps)  # one run's metrics, not two appended


def test_out_that_is_a_file_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    assert train_gpt(path) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file, not a directory" in err and len(err.splitlines()) == 1
    assert path.read_text() == "mine"
    assert train_gpt(path / "run") == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_out_under_a_read_only_directory_is_one_clear_line(tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert train_gpt(parent / "run") == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        parent.chmod(0o700)


def test_the_writability_check_is_the_one_the_trainer_uses(tmp_path, monkeypatch):
    """Also as root: with os.access saying no, the check the trainer runs refuses."""
    monkeypatch.setattr(io.os, "access", lambda path, mode: False)
    with pytest.raises(TinygenError, match="not writable"):
        io.check_writable_dir(tmp_path / "new", "--out")


def test_files_get_the_users_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_json(tmp_path / "a.json", {"x": 1})
        io.save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    for name in ("a.json", "w.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


class _Clock:
    """perf_counter that advances by one second per call, and the real time()."""

    def __init__(self) -> None:
        self.now = 0.0
        self.time = trainer_module.time.time

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def _tiny_task():
    from tinygen.data.text import TextTask, encode_corpus
    from tinygen.data.tokenizers import CharTokenizer
    from tinygen.models.gpt import GPT, GPTConfig

    text = "to be or not to be, that is the question " * 40
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8))
    data = encode_corpus(text, tok)
    return TextTask(model, data, data, 8), {"model_type": "gpt", "model": model.config.__dict__}


def test_throughput_counts_the_steps_since_the_last_log_and_not_the_evaluation(
    tmp_path, monkeypatch
):
    """With a clock of one second per reading: logs every 4 steps to step 7 (the last log
    covers 3 steps, not 1), and an evaluation at step 4 whose time the next log leaves out."""
    clock = _Clock()
    fake_time = types.SimpleNamespace(perf_counter=clock.perf_counter, time=clock.time)
    monkeypatch.setattr(trainer_module, "time", fake_time)
    task, run_config = _tiny_task()
    config = TrainConfig(
        max_iters=7, batch_size=2, log_interval=4, eval_interval=4, eval_iters=1,
        warmup_iters=0, device="cpu",
    )  # fmt: skip
    result = trainer_module.Trainer(
        task, config, tmp_path / "r", run_config=run_config, progress=False
    ).fit()
    rates = {r["step"]: r["tokens_per_s"] for r in result.history if "tokens_per_s" in r}
    per_step = 2 * 8  # batch x block tokens
    # readings: start 1; log@4 at 2 -> 4 steps / 1 s; after the eval 3; log@7 at 4 -> 3 steps
    assert rates == {4: 4 * per_step, 7: 3 * per_step}


def test_ctrl_c_while_the_pictures_are_drawn_says_the_run_had_finished(tmp_path, capsys):
    task, run_config = _tiny_task()

    def on_end(model, run_dir):
        raise KeyboardInterrupt

    task.on_end = on_end
    config = TrainConfig(
        max_iters=2, batch_size=2, log_interval=1, eval_interval=2, eval_iters=1, device="cpu"
    )
    result = trainer_module.Trainer(
        task, config, tmp_path / "r", run_config=run_config, progress=False
    ).fit()
    err = capsys.readouterr().err
    assert not result.interrupted and result.step == 2
    assert "training had finished" in err and "nothing to resume" in err
    assert (tmp_path / "r" / io.STATE_FILE).is_file()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny GPT run, a tiny CLIP run and a LoRA adapter of the GPT run."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        torch.set_num_threads(1)
        mp.chdir(root)
        assert train_gpt(root / "gpt") == 0
        clip = ["train", "clip", "--preset", "tiny", "--max-iters", "2", "--eval-interval", "2"]
        clip += [
            "--eval-iters",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(root / "clip"),
        ]
        assert main(clip) == 0
        adapter = ["finetune", "gpt", "--base", str(root / "gpt"), "--method", "lora"]
        adapter += ["--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1"]
        adapter += ["--device", "cpu", "--no-progress", "--out", str(root / "adapter")]
        assert main(adapter) == 0
    return root


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "gpt", "--resume", "--out", "{clip}"], "holds a clip run, not a gpt one"),
        (["train", "clip", "--resume", "--out", "{gpt}"], "holds a gpt run, not a clip one"),
        (["train", "seq2seq", "--resume", "--out", "{gpt}"], "holds a gpt run, not a seq2seq"),
        (["train", "gpt", "--resume", "--out", "{empty}"], "holds no run"),
        (  # no recipe check before the trainer: the trainer's own, with the same message
            ["train", "diffusion", "--preset", "tiny", "--n-train", "64", "--resume"]
            + ["--out", "{gpt}"],
            "holds a gpt run, not a diffusion one",
        ),
        (["sample", "gpt", "--run", "{adapter}", "--max-new-tokens", "2"], "is a LoRA adapter"),
        (["finetune", "gpt", "--base", "{adapter}", "--out", "{empty}"], "LoRA adapter"),
        (["memory", "--model", "{adapter}"], "LoRA adapter"),
    ],
)
def test_a_run_of_the_wrong_kind_is_named_with_the_fix(runs, tmp_path, capsys, argv, message):
    paths = {name: runs / name for name in ("gpt", "clip", "adapter")}
    argv = [a.format(**paths, empty=tmp_path / "empty") for a in argv]
    clip_tokenizer = (runs / "clip" / "tokenizer.json").read_bytes()
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "corrupt" not in err  # the old advice: "retrain the run"
    assert (runs / "clip" / "tokenizer.json").read_bytes() == clip_tokenizer


def test_a_second_evaluator_does_not_replace_the_installed_judge_unasked(tmp_path, capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path / "home"))
        installed = tmp_path / "home" / ".cache" / "tinygen" / "evaluator" / io.BEST_FILE
        base = ["train", "evaluator", "--image-size", "16", "--width", "8", "--max-iters", "2"]
        base += ["--eval-interval", "2", "--eval-iters", "1", "--device", "cpu", "--no-progress"]
        assert main([*base, "--out", str(tmp_path / "first")]) == 0
        first = installed.read_bytes()  # nothing was installed: the first one is
        assert main([*base, "--seed", "7", "--out", str(tmp_path / "second")]) == 0
        assert "kept the judge installed" in capsys.readouterr().err
        assert installed.read_bytes() == first
        assert main([*base, "--seed", "7", "--install", "--out", str(tmp_path / "third")]) == 0
        assert "replacing the judge installed" in capsys.readouterr().err
        assert installed.read_bytes() != first


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion") / "run"
    argv = ["train", "diffusion", "--preset", "tiny", "--cond", "class", "--n-train", "64"]
    argv += ["--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1"]
    argv += ["--num-train-timesteps", "10", "--device", "cpu", "--no-progress", "--out", str(out)]
    torch.set_num_threads(1)
    assert main(argv) == 0
    return out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "{tmp}/d.txt"], "cannot write a .txt file"),
        (["--out", "{tmp}"], "is a directory"),
        (["--out", "{tmp}/notes.txt/grid.png"], "is a file"),
        (["--label", ""], "names no class"),
        (["--label", ","], "names no class"),
        (["--label", "pink blob"], "colours:"),
    ],
)
def test_sample_diffusion_checks_its_inputs_before_sampling(
    diffusion_run, tmp_path, capsys, monkeypatch, extra, message
):
    from tinygen.recipes import diffusion_sampling

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before refusing a bad input")

    monkeypatch.setattr(diffusion_sampling, "sample_with_strip", no_sampling)
    (tmp_path / "notes.txt").write_text("mine")
    extra = [a.format(tmp=tmp_path) for a in extra]
    code = main(["sample", "diffusion", "--run", str(diffusion_run), "--steps", "2", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_sample_diffusion_adds_png_to_a_name_without_an_extension(diffusion_run, tmp_path):
    argv = ["sample", "diffusion", "--run", str(diffusion_run), "--steps", "2", "--n", "2"]
    assert main([*argv, "--out", str(tmp_path / "grid")]) == 0
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "grid_strip.png").is_file()


def test_a_second_diffusion_eval_goes_to_a_new_folder(diffusion_run, tmp_path, capsys):
    from dataclasses import asdict

    from tinygen.models.shapes_evaluator import EvaluatorConfig, ShapesEvaluator

    judge = tmp_path / "judge"
    config = EvaluatorConfig(image_size=16, width=8, feature_dim=16)
    io.write_json(
        judge / io.CONFIG_FILE, {"model_type": "shapes-evaluator", "model": asdict(config)}
    )
    io.save_weights(ShapesEvaluator(config), judge / io.BEST_FILE)
    argv = ["eval", "diffusion", "--run", str(diffusion_run), "--evaluator", str(judge)]
    argv += ["--guidance", "1", "--steps", "2", "--n", "4", "--device", "cpu"]
    assert main(argv) == 0
    first = (diffusion_run / "eval" / "eval.json").read_text()
    assert main(argv) == 0
    assert "holds an earlier evaluation" in capsys.readouterr().err
    assert (diffusion_run / "eval" / "eval.json").read_text() == first
    assert (diffusion_run / "eval-2" / "eval.json").is_file()


def test_other_output_files_are_checked_first(runs, tmp_path, capsys):
    assert main(["sample", "shapes", "--out", str(tmp_path / "x.txt")]) == 2
    assert "cannot write a .txt file" in capsys.readouterr().err
    assert main(["sample", "shapes", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_held_out_pair_on_a_joint_label_model_is_warned_about():
    from tinygen.data.shapes import HELDOUT_COMBOS, combo_index
    from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
    from tinygen.nn.unet import UNetConfig
    from tinygen.recipes.diffusion_sampling import untrained_labels_warning

    unet = UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    unet.attention_resolutions, unet.head_channels, unet.norm_groups = (4,), 8, 4
    joint = DiffusionModel(DiffusionConfig(unet=unet, conditioning="class"))
    factored = DiffusionModel(
        DiffusionConfig(unet=unet, conditioning="class", label_factors=(8, 6))
    )
    held = torch.tensor([combo_index(*HELDOUT_COMBOS[0]), 0])
    warning = untrained_labels_warning(joint, held)
    assert warning is not None and " ".join(HELDOUT_COMBOS[0]) in warning
    assert untrained_labels_warning(factored, held) is None
    assert untrained_labels_warning(joint, torch.tensor([0, 1])) is None


TRAINERS = {
    "gpt": ["train", "gpt", "--data", "sonnets", *TINY_GPT],
    "seq2seq": ["train", "seq2seq", "--d-model", "16", "--n-head", "2", "--max-iters", "4"],
    "clip": ["train", "clip", "--preset", "tiny", "--max-iters", "4"],
    "evaluator": ["train", "evaluator", "--no-install", "--image-size", "16", "--max-iters", "4"],
    "diffusion": ["train", "diffusion", "--preset", "tiny", "--n-train", "64", "--max-iters", "4"],
    "noisy-classifier": ["train", "noisy-classifier", "--preset", "tiny", "--n-train", "64"],
    "finetune": ["finetune", "gpt", "--method", "lora", "--max-iters", "4"],
}


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_ctrl_c_prints_the_resume_hint_for_every_trainer(name, runs, tmp_path, capsys):
    """Ctrl-C at the third step: exit 130, the checkpoint saved, and the hint to resume."""
    calls = {"n": 0}
    original = trainer_module.Trainer._train_step

    def interrupted_step(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self)

    argv = [*TRAINERS[name], "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    if name == "finetune":
        argv += ["--base", str(runs / "gpt")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module.Trainer, "_train_step", interrupted_step)
        mp.chdir(tmp_path)
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 130, err
    assert "--resume" in err and "interrupted" in err
    assert (tmp_path / "run" / io.STATE_FILE).is_file()


def test_resume_on_another_corpus_is_refused_and_without_data_keeps_the_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_gpt(out) == 0  # on the sonnets
    argv = ["train", "gpt", "--out", str(out), "--resume", *TINY_GPT]
    argv[argv.index("--max-iters") + 1] = "6"
    capsys.readouterr()
    assert main([*argv, "--data", "shakespeare"]) == 2
    assert "it was trained on sonnets" in capsys.readouterr().err
    assert main(argv) == 0  # no --data: the run's own corpus
    assert json.loads((out / io.CONFIG_FILE).read_text())["data"]["corpus"] == "sonnets"
