"""Every bad value a user can type is refused with one line that names the offending flag
(or file), before any work starts: a table of command lines and the fragment each error must
contain, run in-process on tiny runs built once. Then --help tells the truth: the preset's
defaults, a help string on every flag, a description on every subcommand."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from pathlib import Path

import pytest

from tinygen.cli.main import build_parser, main

# tiny models run fastest on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

GPT_TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]
GPT_TINY += ["--batch-size", "4", "--eval-iters", "1", "--no-progress", "--device", "cpu"]
DIFFUSION_TINY = ["--preset", "tiny", "--n-train", "64", "--max-iters", "2", "--eval-interval"]
DIFFUSION_TINY += ["2", "--eval-iters", "1", "--num-train-timesteps", "20", "--no-progress"]
DIFFUSION_TINY += ["--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_file) -> dict[str, Path]:
    """One tiny run of each kind the cases read, plus garbled copies of their config.json."""
    root = tmp_path_factory.mktemp("bad-inputs")
    gpt, diffusion, clip = root / "gpt", root / "diffusion", root / "clip"
    seq2seq = root / "seq2seq"
    train = [
        ["gpt", "--data", str(corpus_file), "--out", str(gpt), "--max-iters", "2", *GPT_TINY],
        ["diffusion", "--cond", "class", "--out", str(diffusion), *DIFFUSION_TINY],
        ["clip", "--preset", "tiny", "--train-size", "64", "--val-size", "16", "--out", str(clip)]
        + ["--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--batch-size", "16"]
        + ["--no-progress"],
        ["seq2seq", "--out", str(seq2seq), "--max-iters", "2", "--d-model", "16"]
        + ["--n-encoder-layers", "1", "--n-decoder-layers", "1", "--batch-size", "8"]
        + ["--eval-interval", "2", "--eval-iters", "1", "--eval-examples", "0"]
        + ["--n-heldout", "20", "--final-beam", "1", "--no-progress"],
    ]
    for argv in train:
        assert main(["train", *argv]) == 0, argv
    found = {"gpt": gpt, "diffusion": diffusion, "clip": clip, "seq2seq": seq2seq}
    # the same runs with a config.json edited by hand: sizes as strings, a size out of range
    for name, change in (
        ("gpt-strings", lambda m: m.update(n_embd="16")),
        ("gpt-negative", lambda m: m.update(n_layer=-1)),
        ("clip-strings", lambda m: m.update(image_size="32", embed_dim="32")),
        ("diffusion-strings", lambda m: m["unet"].update(base_channels="16")),
    ):
        source = found[name.split("-")[0]]
        copy = shutil.copytree(source, root / name)
        config = json.loads((copy / "config.json").read_text())
        change(config["model"])
        (copy / "config.json").write_text(json.dumps(config))
        found[name] = copy
    hf = root / "hf"
    hf.mkdir()
    (hf / "list").mkdir()
    (hf / "list" / "config.json").write_text("[1, 2, 3]")
    llama = {"model_type": "llama", "intermediate_size": 11008, "num_attention_heads": 32}
    llama |= {"num_hidden_layers": 32, "vocab_size": 32000}  # no hidden_size
    (hf / "llama").mkdir()
    (hf / "llama" / "config.json").write_text(json.dumps(llama))
    found["hf-list"], found["hf-llama"] = hf / "list", hf / "llama"
    return found


# (argv with {placeholders}, the fragment the one error line must contain)
CASES = [
    # sample gpt
    ("sample gpt --run {gpt} --num-samples 0", "--num-samples"),
    ("sample gpt --run {gpt} --num-samples -3", "--num-samples"),
    ("sample gpt --run {gpt} --max-new-tokens 0", "--max-new-tokens"),
    ("sample gpt --run {gpt} --temperature -1", "--temperature"),
    ("sample gpt --run {gpt} --top-k 0", "--top-k"),
    ("sample gpt --run {gpt} --top-p 0", "--top-p"),
    ("sample gpt --run {gpt} --top-p 1.5", "--top-p"),
    ("sample gpt --run {gpt} --num-samples x", "--num-samples"),
    ("sample gpt --run {gpt} --merge", "--merge"),
    ("sample gpt --run {gpt} --checkpoint ema", "--checkpoint"),
    ("sample gpt --run {gpt-strings}", "n_embd"),
    ("sample gpt --run {gpt-negative}", "n_layer"),
    ("sample gpt", "--run"),
    # train gpt (fields of GPTConfig and TrainConfig, and the rules that tie them)
    ("train gpt --out {out} --warmup-iters -5", "--warmup-iters"),
    ("train gpt --out {out} --min-lr 0.01", "--min-lr"),
    ("train gpt --out {out} --min-lr 0.01 --learning-rate 0.001", "--learning-rate"),
    ("train gpt --out {out} --learning-rate 0", "--learning-rate"),
    ("train gpt --out {out} --learning-rate=-1e-3", "--learning-rate"),
    ("train gpt --out {out} --max-iters 0", "--max-iters"),
    ("train gpt --out {out} --batch-size 0", "--batch-size"),
    ("train gpt --out {out} --grad-accum 0", "--grad-accum"),
    ("train gpt --out {out} --eval-interval 0", "--eval-interval"),
    ("train gpt --out {out} --eval-iters -1", "--eval-iters"),
    ("train gpt --out {out} --log-interval 0", "--log-interval"),
    ("train gpt --out {out} --lr-decay-iters 0", "--lr-decay-iters"),
    ("train gpt --out {out} --weight-decay -0.1", "--weight-decay"),
    ("train gpt --out {out} --beta2 1", "--beta2"),
    ("train gpt --out {out} --grad-clip -1", "--grad-clip"),
    ("train gpt --out {out} --ema-decay 1", "--ema-decay"),
    ("train gpt --out {out} --lr-schedule linear", "--lr-schedule"),
    ("train gpt --out {out} --n-layer 0", "--n-layer"),
    ("train gpt --out {out} --n-head 0", "--n-head"),
    ("train gpt --out {out} --n-embd -8", "--n-embd"),
    ("train gpt --out {out} --block-size 0", "--block-size"),
    ("train gpt --out {out} --dropout 1", "--dropout"),
    ("train gpt --out {out} --n-layer four", "--n-layer"),
    ("train gpt --out {out} --bogus 1", "--bogus"),
    ("train gpt --out {out} --preset huge", "--preset"),
    # seq2seq
    ("eval seq2seq --run {seq2seq} --limit -5", "--limit"),
    ("eval seq2seq --run {seq2seq} --limit 0", "--limit"),
    ("eval seq2seq --run {seq2seq} --beam 0", "--beam"),
    ("translate --run {seq2seq} --beam -1 7", "--beam"),
    ("translate --run {seq2seq} --length-penalty -1 7", "--length-penalty"),
    ("train seq2seq --out {out} --n-heldout 0", "--n-heldout"),
    ("train seq2seq --out {out} --eval-examples -1", "--eval-examples"),
    ("train seq2seq --out {out} --final-beam 0", "--final-beam"),
    ("train seq2seq --out {out} --d-model 0", "--d-model"),
    ("train seq2seq --out {out} --label-smoothing 1", "--label-smoothing"),
    ("train seq2seq --out {out} --norm middle", "--norm"),
    ("train seq2seq --out {out} --min-lr 1", "--min-lr"),
    # fine-tuning and memory
    ("finetune gpt --base {gpt} --out {out} --alpha -1", "--alpha"),
    ("finetune gpt --base {gpt} --out {out} --alpha 0", "--alpha"),
    ("finetune gpt --base {gpt} --out {out} --r 0", "--r"),
    ("finetune gpt --base {gpt} --out {out} --lora-dropout 1", "--lora-dropout"),
    ("finetune gpt --base {gpt} --out {out} --eval-batches 0", "--eval-batches"),
    ("finetune gpt --base {gpt} --out {out} --method dora", "--method"),
    ("finetune gpt --base {gpt} --out {out} --learning-rate 0", "--learning-rate"),
    ("finetune hf --model m --data d.txt --out {out} --r 0", "--r"),
    ("finetune hf --model m --data d.txt --out {out} --alpha -1", "--alpha"),
    ("finetune hf --model m --data d.txt --out {out} --lora-dropout 2", "--lora-dropout"),
    ("finetune hf --model m --data d.txt --out {out} --block-size 0", "--block-size"),
    ("finetune toy --out {out} --n-points 5", "--n-points"),
    ("finetune toy --out {out} --lr 0", "--lr"),
    ("finetune toy --out {out} --lora-steps 0", "--lora-steps"),
    ("memory --model llama-2-7b --r 0", "--r"),
    ("memory --model {hf-list}", "JSON list"),
    ("memory --model {hf-llama}", "hidden_size"),
    ("memory --model {gpt-strings}", "n_embd"),
    ("memory --model {gpt-strings}", "gpt-strings/config.json"),
    # the shapes world
    ("sample shapes --out {out}.png --scale 0", "--scale"),
    ("sample shapes --out {out}.png --n 0", "--n"),
    ("sample shapes --out {out}.png --image-size 8", "--image-size"),
    ("eval evaluator --noise -1", "--noise"),
    ("eval evaluator --noise 0,-0.1", "--noise"),
    ("eval evaluator --noise ,", "--noise"),
    ("eval evaluator --noise abc", "--noise"),
    ("eval evaluator --n 0", "--n"),
    ("train evaluator --out {out} --width 0", "--width"),
    ("train evaluator --out {out} --feature-dim 0", "--feature-dim"),
    # CLIP
    ("clip search --run {clip} --images {clip} --text x --top 0", "--top"),
    ("clip search --run {clip} --images {clip} --text '' --top 1", "--text"),
    ("clip search --run {clip} --images {clip} --text '   '", "--text"),
    ("eval clip --run {clip} --n-test 0", "--n-test"),
    ("eval clip --run {clip-strings}", "model.embed_dim is '32'"),
    ("train clip --out {out} --train-size 0", "--train-size"),
    ("train clip --out {out} --val-size -1", "--val-size"),
    ("train clip --out {out} --vision-heads 0", "--vision-heads"),
    ("train clip --out {out} --image-tower cnn", "--image-tower"),
    ("train clip --out {out} --max-logit-scale 1", "--max-logit-scale"),
    # diffusion: sampling and evaluation
    ("sample diffusion --run {diffusion} --out {out}.png --n 0", "--n"),
    ("sample diffusion --run {diffusion} --out {out}.png --steps 0", "--steps"),
    ("sample diffusion --run {diffusion} --out {out}.png --guidance -1", "--guidance"),
    ("sample diffusion --run {diffusion} --out {out}.png --eta 1.5", "--eta"),
    ("sample diffusion --run {diffusion} --out {out}.png --eta 0.5 --sampler ddpm", "--eta"),
    ("sample diffusion --run {diffusion} --out {out}.png --classifier-scale 2", "--classifier"),
    ("sample diffusion --run {diffusion} --out {out}.png --classifier-scale -1", "--classifier"),
    ("sample diffusion --run {diffusion} --out {out}.png --strength 2", "--strength"),
    ("sample diffusion --run {diffusion-strings} --out {out}.png", "model.unet.base_channels"),
    ("eval diffusion --run {diffusion} --out {out} --batch-size 0", "--batch-size"),
    ("eval diffusion --run {diffusion} --out {out} --n 0", "--n"),
    ("eval diffusion --run {diffusion} --out {out} --n-ddpm 0", "--n-ddpm"),
    ("eval diffusion --run {diffusion} --out {out} --guidance 1,-2", "--guidance"),
    ("eval diffusion --run {diffusion} --out {out} --steps 10,0", "--steps"),
    ("eval diffusion --run {diffusion} --out {out} --steps ,", "--steps"),
    ("eval diffusion --run {diffusion} --out {out} --classifier-scales 1,2", "--classifier"),
    ("eval diffusion --run {diffusion} --out {out} --classifier {gpt}", "--classifier-scales"),
    ("eval diffusion --run {diffusion} --out {out} --steps 20 --eta 0.5", "--eta"),
    # diffusion: training
    ("train diffusion --out {out} --cond-drop-prob 1", "--cond-drop-prob"),
    ("train diffusion --out {out} --min-snr-gamma -1", "--min-snr-gamma"),
    ("train diffusion --out {out} --num-train-timesteps 0", "--num-train-timesteps"),
    ("train diffusion --out {out} --cond label", "--cond"),
    ("train diffusion --out {out} --objective noise", "--objective"),
    ("train diffusion --out {out} --schedule quadratic", "--schedule"),
    ("train diffusion --out {out} --n-train 0", "--n-train"),
    ("train diffusion --out {out} --base-channels 0", "--base-channels"),
    ("train diffusion --out {out} --channel-mult 1,0", "--channel-mult"),
    ("train diffusion --out {out} --attention-resolutions 0", "--attention-resolutions"),
    ("train diffusion --out {out} --dropout -0.5", "--dropout"),
    ("train noisy-classifier --out {out} --num-train-timesteps 0", "--num-train-timesteps"),
    ("train noisy-classifier --out {out} --norm-groups 0", "--norm-groups"),
    # seeds are integers >= 0 everywhere (the shapes world's generator refuses others late)
    ("train clip --out {out} --data-seed -1", "--data-seed"),
    ("train diffusion --out {out} --seed -1", "--seed"),
    ("train seq2seq --out {out} --task-seed -1", "--task-seed"),
    ("sample shapes --out {out}.png --seed -1", "--seed"),
    ("sample diffusion --run {diffusion} --out {out}.png --seed -1", "--seed"),
    ("eval evaluator --seed -2", "--seed"),
    ("finetune toy --out {out} --seed -1", "--seed"),
    # commands
    ("train", "gpt"),
    ("bogus", "COMMAND"),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """`tinygen ARGV` in this process: its exit status and its stderr (an argparse exit is
    accepted too, as long as it says what is wrong)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command, fragment", CASES, ids=[f"{c} -> {f}" for c, f in CASES])
def test_bad_input_is_one_line_naming_the_flag(
    runs, tmp_path, monkeypatch, capsys, command, fragment
):
    monkeypatch.chdir(tmp_path)  # anything written to a default path lands here
    out = tmp_path / "out"
    places = {**{k: str(v) for k, v in runs.items()}, "out": str(out)}
    argv = [part.format(**places) for part in shlex.split(command)]
    code, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code != 0, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("tinygen: error:"), err
    assert fragment in lines[0], err
    assert not out.exists() and not Path(f"{out}.png").exists(), "work started before the error"


def test_bad_values_say_the_value_and_the_allowed_range(runs, capsys):
    _, err = run_cli(["sample", "gpt", "--run", str(runs["gpt"]), "--num-samples", "0"], capsys)
    assert "--num-samples must be >= 1, got 0" in err
    _, err = run_cli(["train", "gpt", "--warmup-iters", "-5"], capsys)
    assert "--warmup-iters must be >= 0, got -5" in err
    _, err = run_cli(["train", "gpt", "--min-lr", "0.01"], capsys)
    assert "--min-lr 0.01 is above --learning-rate 0.003" in err
    _, err = run_cli(["train", "gpt", "--dropout", "1"], capsys)
    assert "--dropout must be in [0, 1), got 1.0" in err


def test_a_learning_rate_alone_moves_the_presets_floor_with_it():
    """`--learning-rate 1e-4` under the baby preset (floor 3e-4) is not an error: the floor
    follows at the preset's ratio; only a --min-lr the user gives above the peak is refused."""
    from tinygen.cli.gpt import build_configs

    args = build_parser().parse_args(["train", "gpt", "--learning-rate", "1e-4"])
    _, train = build_configs(args)
    assert train.learning_rate == 1e-4 and train.min_lr == pytest.approx(1e-5)


def test_check_fields_and_check_types_name_the_field():
    from tinygen.errors import TinygenError
    from tinygen.fields import check_fields, check_types
    from tinygen.models.diffusion import DiffusionConfig
    from tinygen.train.config import TrainConfig

    with pytest.raises(TinygenError, match=r"--eval-iters must be >= 1, got 0"):
        check_fields(TrainConfig(eval_iters=0))
    with pytest.raises(TinygenError, match=r"unknown --objective 'noise'; choose epsilon, "):
        check_fields(DiffusionConfig(prediction_type="noise"))
    with pytest.raises(TinygenError, match=r"run/config.json: model.unet.image_size is '32'"):
        check_types(DiffusionConfig, {"unet": {"image_size": "32"}}, where="run/config.json: model")
    with pytest.raises(TinygenError, match="not an object"):
        check_types(TrainConfig, [1, 2], where="config.json")
    check_types(DiffusionConfig, {"unet": {"channel_mult": [1, 2]}, "min_snr_gamma": 5}, where="x")


# -- help that tells the truth ----------------------------------------------------------------


def parsers(parser: argparse.ArgumentParser, name: str = "tinygen", one_line: str = "(root)"):
    """(command name, parser, its one-line help) for the root and every subcommand."""
    yield name, parser, one_line
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}", helps.get(sub_name))


def flag_helps(command: str) -> dict[str, str]:
    parser = next(p for n, p, _ in parsers(build_parser()) if n == command)
    return {a.option_strings[-1]: a.help for a in parser._actions if a.option_strings}


def test_train_gpt_help_shows_the_baby_presets_values():
    from tinygen.recipes.gpt import PRESETS

    helps = flag_helps("tinygen train gpt")
    baby = PRESETS["baby"]
    assert (baby.model.n_layer, baby.model.n_embd, baby.model.block_size) == (4, 128, 64)
    assert "default 4, the baby preset's" in helps["--n-layer"]
    assert "default 128," in helps["--n-embd"] and "default 64," in helps["--block-size"]
    assert "default 0.003," in helps["--learning-rate"] and ">= 1" in helps["--n-layer"]
    assert "384" not in helps["--n-embd"]  # GPTConfig's own default, which the CLI never uses


@pytest.mark.parametrize(
    "command, flag, value",
    [
        ("tinygen train clip", "--vision-width", "default 96,"),
        ("tinygen train evaluator", "--learning-rate", "default 0.002,"),
        ("tinygen train diffusion", "--base-channels", "default 32,"),
        ("tinygen train noisy-classifier", "--max-iters", "default 2400,"),
        ("tinygen train seq2seq", "--lr-schedule", "default inverse_sqrt,"),
        ("tinygen finetune gpt", "--max-iters", "default 500,"),
        ("tinygen finetune hf", "--learning-rate", "default 0.0002,"),
        ("tinygen eval diffusion", "--guidance", "comma-separated"),
        ("tinygen eval diffusion", "--steps", "comma-separated"),
        ("tinygen sample gpt", "--num-samples", ">= 1"),
    ],
)
def test_help_shows_the_defaults_that_will_be_used(command, flag, value):
    assert value in flag_helps(command)[flag]


def test_every_flag_and_subcommand_has_help_and_no_internal_metavar():
    missing, metavars = [], []
    for name, parser, one_line in parsers(build_parser()):
        parser.format_help()  # (a stray % in a help string would raise here)
        if not one_line or not parser.description:
            missing.append(f"{name}: one-line help or description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
            if (
                action.option_strings
                and action.nargs != 0
                and not (action.metavar or action.choices)
            ):
                flag = action.option_strings[-1].lstrip("-").replace("-", "_")
                if flag != action.dest:  # argparse would show DEST, an internal name
                    metavars.append(f"{name} {action.option_strings[-1]} {action.dest.upper()}")
    assert not missing, "without help:\n" + "\n".join(missing)
    assert not metavars, "internal metavars:\n" + "\n".join(metavars)


def test_tinygen_alone_lists_the_commands(capsys):
    code, err = run_cli([], capsys)
    assert code == 2
    for command in ("train", "sample", "eval", "translate", "finetune", "memory", "clip"):
        assert f"  {command} " in err
