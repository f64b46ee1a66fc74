"""`tinygen train autoencoder`, `tinygen reconstruct` and `tinygen eval autoencoder` on tiny
runs: the files they write, and one clear error for each bad input."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from tinygen import io
from tinygen.cli.main import main
from tinygen.data.shapes import generate_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*argv: str) -> int:
    return main(list(argv))


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ae-vq"
    code = run_cli(
        "train", "autoencoder", "--preset", "tiny", "--kind", "vq", "--factor", "8",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory) -> Path:
    """An untrained shapes evaluator: enough for the evaluation plumbing (hermetic)."""
    from tinygen.models.evaluator import EvaluatorConfig, ShapesEvaluator

    out = tmp_path_factory.mktemp("judge")
    torch.manual_seed(0)
    config = EvaluatorConfig(image_size=32, width=8, feature_dim=16)
    io.write_json(out / io.CONFIG_FILE, {"model_type": "shapes-evaluator", "model": asdict(config)})
    io.save_weights(ShapesEvaluator(config), out / io.BEST_FILE, {"step": 0})
    return out


def shapes_png(path: Path, size: int = 32, mode: str = "RGB") -> Path:
    image = generate_shapes(1, split="test", seed=0, image_size=size).images[0]
    pixels = ((image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    picture = Image.fromarray(pixels)
    if mode == "RGBA":
        picture = picture.convert("RGBA")
        picture.putpixel((0, 0), (0, 0, 0, 0))
    picture.save(path)
    return path


def test_train_writes_a_vq_run_with_its_scale_factor(vq_run):
    config = json.loads((vq_run / "config.json").read_text())
    assert config["model_type"] == "autoencoder" and config["model"]["regularizer"] == "vq"
    assert config["model"]["channel_mult"] == [1, 1, 2, 2]  # f = 8
    assert config["scale_factor"] > 0 and (vq_run / "reconstructions.png").is_file()


def test_a_finished_run_is_not_overwritten(vq_run, capsys):
    argv = ("train", "autoencoder", "--preset", "tiny", "--out", str(vq_run), "--no-progress")
    assert run_cli(*argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_reconstruct_writes_input_beside_reconstruction(vq_run, tmp_path):
    out, image = tmp_path / "side.png", shapes_png(tmp_path / "a.png")
    assert (
        run_cli("reconstruct", "--run", str(vq_run), "--image", str(image), "--out", str(out)) == 0
    )
    with Image.open(out) as im:
        assert im.size == (2 * 32 + 3 * 2, 32 + 2 * 2)  # two images with the grid's padding


def test_eval_prints_and_writes_the_table_row(vq_run, judge_run, tmp_path, capsys):
    code = run_cli("eval", "autoencoder", "--run", str(vq_run), "--n", "24", "--out",
                   str(tmp_path), "--evaluator", str(judge_run))  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "autoencoder_eval.json").read_text())
    assert result["kind"] == "vq" and result["factor"] == 8 and result["n"] == 24
    keys = ("psnr", "psnr_se", "agreement", "agreement_color", "accuracy", "perplexity")
    for key in (*keys, "feature_distance"):
        assert key in result
    assert 0 <= result["agreement"] <= 1 and 1 <= result["perplexity"] <= result["codebook_size"]
    assert result["dead_codes"] >= 0 and result["train_seconds"] > 0
    md = (tmp_path / "autoencoder_eval.md").read_text().splitlines()
    assert md[0].startswith("| run | kind") and "| vq | 8 | 4 |" in md[2]
    assert "| vq | 8 | 4 |" in capsys.readouterr().out


def test_eval_of_several_runs_is_one_table(vq_run, judge_run, tmp_path, capsys):
    argv = ["eval", "autoencoder", "--run", str(vq_run), "--run", str(vq_run), "--n", "8"]
    assert run_cli(*argv, "--out", str(tmp_path), "--evaluator", str(judge_run)) == 0
    results = json.loads((tmp_path / "autoencoder_eval.json").read_text())
    assert isinstance(results, list) and len(results) == 2
    assert results[0]["psnr"] == results[1]["psnr"]  # the same run, the same test images
    md = (tmp_path / "autoencoder_eval.md").read_text().splitlines()
    assert len(md) == 4 and md[0].startswith("| run | kind")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: shapes_png(d / "big.png", size=64),
            "is 64x64 but .* trained on 32x32 .* resize",
        ),
        (lambda d: shapes_png(d / "alpha.png", mode="RGBA"), "transparent pixels"),
        (lambda d: (d / "text.png").write_text("not an image") and d / "text.png", "not an image"),
        (lambda d: d / "missing.png", "does not exist"),
    ],
)
def test_bad_images_are_one_clear_error(vq_run, tmp_path, capsys, make, message):
    image = make(tmp_path)
    assert run_cli("reconstruct", "--run", str(vq_run), "--image", str(image), "--out",
                   str(tmp_path / "o.png")) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    import re

    assert re.search(message, err[0]), err[0]


def test_a_run_of_another_kind_is_one_clear_error(judge_run, tmp_path, capsys):
    image = shapes_png(tmp_path / "a.png")
    assert run_cli("reconstruct", "--run", str(judge_run), "--image", str(image)) == 2
    err = capsys.readouterr().err
    assert "holds a shapes-evaluator model, not a autoencoder one" in err
    assert "tinygen train autoencoder" in err


def test_a_missing_weights_file_is_one_clear_error(vq_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "no-weights"
    shutil.copytree(vq_run, run)
    for name in ("model.safetensors", "best.safetensors", "ema.safetensors"):
        (run / name).unlink(missing_ok=True)
    assert run_cli("eval", "autoencoder", "--run", str(run), "--n", "4") == 2
    assert "has no checkpoint (model.safetensors missing)" in capsys.readouterr().err
