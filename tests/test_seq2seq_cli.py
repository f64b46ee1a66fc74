"""`tinygen train seq2seq`, `tinygen translate`, `tinygen eval seq2seq` on a short real run."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
import torch

from tinygen.cli.main import main
from tinygen.data.translation import TaskSpec, TranslationData, number_to_words
from tinygen.eval.text_metrics import character_error_rate, exact_match
from tinygen.recipes.seq2seq import Translator

SHORT_RUN = [
    "--max-iters",
    "300",
    "--d-model",
    "64",
    "--n-encoder-layers",
    "2",
    "--n-decoder-layers",
    "2",
    "--batch-size",
    "64",
    "--learning-rate",
    "2e-3",
    "--warmup-iters",
    "50",
    "--eval-interval",
    "150",
    "--eval-iters",
    "2",
    "--eval-examples",
    "100",
    "--n-heldout",
    "200",
    "--final-beam",
    "2",
    "--max-tgt-len",
    "20",
    "--max-src-len",
    "12",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq2seq") / "run"
    assert main(["train", "seq2seq", "--task", "number-words", "--out", str(out), *SHORT_RUN]) == 0
    return out


def test_short_training_run_beats_a_trivial_baseline_by_far(run_dir) -> None:
    """~10 s of training vs. always answering the most common training target."""
    data = TranslationData(TaskSpec(n_heldout=200))
    draws = data.draw("train", 5000, torch.Generator().manual_seed(0))
    constant = Counter(t for _, t in draws).most_common(1)[0][0]
    references = [t for _, t in data.test_pairs]
    baseline_cer = character_error_rate([constant] * 200, references)
    baseline_em = exact_match([constant] * 200, references)
    scores = json.loads((run_dir / "heldout_eval.json").read_text())
    assert baseline_em == 0.0 and baseline_cer > 0.5
    assert scores["greedy"]["n"] == 200
    assert scores["greedy"]["cer"] < baseline_cer / 20  # measured: 0.007 vs 0.6+
    assert scores["greedy"]["exact_match"] > 0.8  # measured: 0.945
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val_exact_match" in row for row in metrics)


def test_run_directory_is_self_contained(run_dir) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_type"] == "seq2seq"
    assert config["task"]["task"] == "number-words" and config["task"]["direction"] == "to-words"
    assert config["source_vocab"]["kind"] == "char" and config["target_vocab"]["kind"] == "word"
    assert config["train"]["lr_schedule"] == "inverse_sqrt"


def test_translate_arguments_and_stdin_agree_with_the_library(run_dir, capsys, monkeypatch):
    translator = Translator.from_run(run_dir)
    texts = ["4051207", "19", "700000"]
    expected = translator.translate(texts)
    assert main(["translate", "--run", str(run_dir), *texts]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("4051207\n19\n700000\n"))
    assert main(["translate", "--run", str(run_dir), "--no-cache"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert main(["translate", "--run", str(run_dir), "--beam", "3", *texts]) == 0
    assert capsys.readouterr().out.splitlines() == translator.translate(texts, beam_size=3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("40,51", "not in the vocabulary: ','"),
        ("", "empty line"),
        ("1" * 13, "at most 12"),
    ],
)
def test_bad_inputs_give_one_clear_line(run_dir, capsys, text, message) -> None:
    assert main(["translate", "--run", str(run_dir), "7", text]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_empty_stdin_line_is_an_error(run_dir, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("12\n\n34\n"))
    assert main(["translate", "--run", str(run_dir)]) == 2
    assert "input 2 is an empty line" in capsys.readouterr().err


def test_attention_map_is_a_distribution_over_the_source(run_dir, tmp_path, capsys) -> None:
    png = tmp_path / "attention.png"
    assert main(["translate", "--run", str(run_dir), "--attention-map", str(png), "4051207"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    translator = Translator.from_run(run_dir)
    output = capsys.readouterr().out.strip()
    weights = translator.attention_map("4051207", output)
    assert weights.shape == (len(output.split()) + 1, 7)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(weights.shape[0]))


def test_eval_prints_greedy_and_beam_scores(run_dir, capsys) -> None:
    assert main(["eval", "seq2seq", "--run", str(run_dir), "--beam", "2", "--limit", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("held-out  greedy: exact match")
    assert lines[1].startswith("held-out   beam2: exact match") and "(n=50)" in lines[1]
    translator = Translator.from_run(run_dir)
    pairs = TranslationData(TaskSpec(n_heldout=200)).test_pairs[:50]
    greedy = translator.evaluate(pairs)
    assert f"exact match {100 * greedy.exact_match:.2f}%" in lines[0]


def test_resume_continues_with_the_saved_task(run_dir, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    # --task dates is ignored: a resumed run keeps its saved task and model
    args = ["train", "seq2seq", "--task", "dates", "--out", str(copy), "--resume", *SHORT_RUN]
    args[args.index("--max-iters") + 1] = "310"
    assert main(args) == 0
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 310
    assert Translator.from_run(copy, "last").translate(["12"])[0] != ""
    assert json.loads((copy / "config.json").read_text())["task"]["task"] == "number-words"
    capsys.readouterr()


def test_translate_rejects_a_run_of_another_kind(tmp_path, capsys) -> None:
    from dataclasses import asdict

    from tinygen.models.gpt import GPT, GPTConfig
    from tinygen.train.checkpoint import save_weights

    config = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt", "model": asdict(config)})
    )
    save_weights(GPT(config), tmp_path / "model.safetensors")
    assert main(["translate", "--run", str(tmp_path), "12"]) == 2
    assert "holds a gpt model, not a seq2seq one" in capsys.readouterr().err


def test_number_words_ground_truth_is_what_the_run_learns_from() -> None:
    data = TranslationData(TaskSpec(n_heldout=10))
    assert all(number_to_words(int(s)) == t for s, t in data.test_pairs)
