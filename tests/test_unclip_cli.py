"""The unCLIP commands on seconds-long tiny runs: train a prior and a decoder on a tiny CLIP,
then generate, eval text2image, variations, interpolate and eval unclip; bad input is one
clear error line."""

from __future__ import annotations

import json

import pytest
import torch

from tinygen.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path, size: int = 32, seed: int = 0) -> None:
    from PIL import Image

    from tinygen.data.shapes import generate_shapes

    image = generate_shapes(1, split="test", seed=seed, image_size=size).images[0]
    pixels = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
    Image.fromarray(pixels.numpy()).save(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny CLIP (5 steps), a tiny prior and decoder through the CLI, and a judge."""
    import dataclasses

    from tinygen.models.shapes_evaluator import EvaluatorConfig
    from tinygen.recipes.clip import PRESETS, train_clip
    from tinygen.recipes.evaluator import train_evaluator
    from tinygen.train.config import TrainConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("unclip")
    tiny = PRESETS["tiny"]
    train = dataclasses.replace(tiny.train, max_iters=5, eval_interval=5, batch_size=32)
    train_clip(tiny.model, train, root / "clip", train_size=256, val_size=64, progress=False)
    clip, prior, dec = (str(root / name) for name in ("clip", "prior", "dec"))
    base = ["--clip", clip, "--preset", "tiny", "--no-progress"]
    assert main(["train", "unclip-prior", *base, "--out", prior]) == 0
    assert main(["train", "unclip-decoder", *base, "--prior", prior, "--out", dec]) == 0
    judge = TrainConfig(max_iters=2, batch_size=8, eval_interval=2, eval_iters=1, warmup_iters=1)
    train_evaluator(
        EvaluatorConfig(width=8, two_objects=True), judge, root / "judge", progress=False
    )
    _png(root / "a.png", seed=0)
    _png(root / "b.png", seed=1)
    return root


def test_training_writes_runs_that_name_their_components(runs):
    from tinygen.models.unclip import read_components
    from tinygen.recipes.unclip_data import CACHE_FILE

    config = json.loads((runs / "prior" / "config.json").read_text())
    assert config["model_type"] == "unclip-prior" and config["clip"]["embed_dim"] == 32
    assert (runs / "prior" / CACHE_FILE).is_file() and (runs / "dec" / CACHE_FILE).is_file()
    named = read_components(runs / "dec")
    assert named["clip"].resolve() == (runs / "clip").resolve()
    assert named["prior"].resolve() == (runs / "prior").resolve()
    assert (runs / "dec" / "samples.png").is_file()


def test_generate_and_eval_text2image_work_on_a_decoder_run(runs, monkeypatch):
    monkeypatch.setenv("TINYGEN_EVALUATOR", str(runs / "judge"))
    dec, out = str(runs / "dec"), runs / "out"
    assert (
        main(
            [
                "generate",
                "--run",
                dec,
                "--prompt",
                "a red circle",
                "--prompt",
                "a blue square above a green star",
                "--n",
                "2",
                "--steps",
                "2",
                "--out",
                str(out / "grid.png"),
            ]
        )
        == 0
    )
    assert (out / "grid.png").is_file()
    assert (
        main(
            [
                "eval",
                "text2image",
                "--run",
                dec,
                "--n",
                "4",
                "--guidance",
                "0,3",
                "--steps",
                "2",
                "--out",
                str(out / "t2i"),
            ]
        )
        == 0
    )
    rows = json.loads((out / "t2i" / "eval.json").read_text())
    assert [r["guidance"] for r in rows] == [0, 3] and all(r["n"] == 4 for r in rows)


def test_variations_and_interpolate_write_their_pictures(runs):
    from PIL import Image

    dec, out = str(runs / "dec"), runs / "pictures"
    common = ["--run", dec, "--steps", "2"]
    assert (
        main(
            [
                "variations",
                *common,
                "--image",
                str(runs / "a.png"),
                "--n",
                "3",
                "--out",
                str(out / "var.png"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "variations",
                *common,
                "--image",
                str(runs / "a.png"),
                "--n",
                "2",
                "--from-inversion",
                "--out",
                str(out / "var2.png"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "interpolate",
                "--run",
                dec,
                "--ddim-steps",
                "2",
                "--image",
                str(runs / "a.png"),
                "--image",
                str(runs / "b.png"),
                "--steps",
                "4",
                "--out",
                str(out / "strip.png"),
            ]
        )
        == 0
    )
    assert Image.open(out / "var.png").size[0] > Image.open(out / "var2.png").size[0]
    assert Image.open(out / "strip.png").size == (6 * 32 * 4 + 7 * 8, 32 * 4 + 2 * 8)  # a, 4, b


def test_eval_unclip_writes_every_part(runs, monkeypatch):
    monkeypatch.setenv("TINYGEN_EVALUATOR", str(runs / "judge"))
    out = runs / "eval"
    argv = [
        "eval",
        "unclip",
        "--run",
        str(runs / "dec"),
        "--n",
        "8",
        "--per-prompt",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "unclip.json").read_text())
    assert set(report) >= {"settings", "prior", "ablation", "pairs", "rerank", "variations"}
    assert [r["rerank"] for r in report["rerank"]] == [1, 2]
    assert len(report["ablation"]) == 3 and all(r["n"] == 8 for r in report["ablation"])
    assert -1 <= report["prior"]["cosine_prior"] <= 1
    assert 0 <= report["variations"][0]["pixel_distance_to_source"] <= 1
    assert "## Ablation" in (out / "unclip.md").read_text()
    assert main([*argv[:-1], str(runs / "eval-prior"), "--parts", "prior"]) == 0
    assert set(json.loads((runs / "eval-prior" / "unclip.json").read_text())) == {
        "settings",
        "prior",
        "runs",
    }


def test_bad_input_is_one_error_line(runs, tmp_path, capsys):
    from PIL import Image

    dec = str(runs / "dec")
    Image.new("RGB", (16, 16)).save(tmp_path / "small.png")
    cases = [
        (["generate", "--run", dec, "--prompt", "a red blob"], "not in this model's caption"),
        (["variations", "--run", dec, "--image", str(tmp_path / "small.png")], "is 16x16"),
        (["interpolate", "--run", dec, "--image", str(runs / "a.png")], "exactly two --image"),
        (["generate", "--run", str(runs / "prior"), "--prompt", "a red circle"], "paints nothing"),
        (
            [
                "train",
                "unclip-prior",
                "--clip",
                str(tmp_path / "none"),
                "--preset",
                "tiny",
                "--out",
                str(tmp_path / "p"),
            ],
            "does not exist",
        ),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "x.png")] if argv[0] != "train" else argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("tinygen: error:"), err
