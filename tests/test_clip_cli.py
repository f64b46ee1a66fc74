"""The CLIP commands end to end on a tiny run: train (shapes and an image folder), the run
directory's contents, zero-shot and search output, and clear errors for bad input."""

from __future__ import annotations

import json
import re

import pytest

from tinygen.cli.main import main
from tinygen.data.image_folder import save_image_grid
from tinygen.data.shapes import generate_shapes

TINY = [
    "--preset",
    "tiny",
    "--max-iters",
    "4",
    "--eval-interval",
    "4",
    "--eval-iters",
    "1",
    "--batch-size",
    "16",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "run"
    code = main(
        ["train", "clip", "--train-size", "128", "--val-size", "32", "--out", str(out), *TINY]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    batch = generate_shapes(3, split="test", seed=5)
    for i in range(3):
        save_image_grid(batch.images[i : i + 1], folder / f"img{i}.png", padding=0)
    return folder


def test_run_directory_holds_config_vocabulary_and_pictures(run):
    config = json.loads((run / "config.json").read_text())
    tokenizer = json.loads((run / "tokenizer.json").read_text())
    assert config["model_type"] == "clip" and config["data"]["name"] == "shapes"
    assert {"red", "circle", "left"} <= set(tokenizer["words"])
    assert config["model"]["vocab_size"] == len(tokenizer["words"]) + 4  # + the specials
    for picture in ("similarity.png", "retrieval.png", "loss.png"):
        assert (run / picture).stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "zero_shot_seen" in r]
    assert evals and 0.0 <= evals[-1]["zero_shot_heldout"] <= 1.0
    assert evals[-1]["logit_scale"] <= 100.0


def test_zero_shot_prints_a_distribution_over_the_labels(run, image_dir, capsys):
    images = sorted(str(p) for p in image_dir.iterdir())
    labels = ["red circle", "blue square", "green star"]
    assert (
        main(["clip", "zero-shot", "--run", str(run), "--labels", ",".join(labels), *images]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for path, line in zip(images, lines):
        assert line.startswith(path)
        probs = [float(x) for x in re.findall(r"(?:circle|square|star) (\d\.\d\d)", line)]
        assert len(probs) == 3 and sum(probs) == pytest.approx(1.0, abs=0.02)
        best = line.split(": ", 1)[1].split(" (")[0]
        assert best == labels[max(range(3), key=probs.__getitem__)]


def test_search_ranks_every_image_by_decreasing_similarity(run, image_dir, capsys, tmp_path):
    grid = tmp_path / "grid.png"
    assert (
        main(
            [
                "clip",
                "search",
                "--run",
                str(run),
                "--text",
                "a small red star",
                "--images",
                str(image_dir),
                "--grid",
                str(grid),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # top 5 of 3 images
    scores = [float(line.split()[-1]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert grid.stat().st_size > 1000


def test_train_on_an_image_folder(tmp_path):
    folder = tmp_path / "pics"
    batch = generate_shapes(24, split="train", seed=1)
    rows = []
    for i in range(24):
        save_image_grid(batch.images[i : i + 1], folder / f"{i}.png", padding=0)
        rows.append(json.dumps({"file": f"{i}.png", "caption": batch.captions[i]}))
    (folder / "captions.jsonl").write_text("\n".join(rows))
    out = tmp_path / "run"
    assert (
        main(
            ["train", "clip", "--data", str(folder), "--out", str(out), *TINY, "--batch-size", "8"]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == {"name": "folder", "path": str(folder), "pairs": 24, "val": 2}


def test_bad_inputs_are_one_line_errors(run, image_dir, tmp_path, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "captions.jsonl").write_text('{"file": "gone.png", "caption": "a red circle"}\n')
    cases = [
        (
            ["clip", "zero-shot", "--run", str(run), "--labels", " , ", str(not_image)],
            "--labels is empty",
        ),
        (
            ["clip", "zero-shot", "--run", str(run), "--labels", "red circle", str(not_image)],
            "not an image",
        ),
        (
            ["clip", "search", "--run", str(run), "--text", "x", "--images", str(tmp_path / "no")],
            "not a folder",
        ),
        (
            ["train", "clip", "--data", str(missing), "--out", str(tmp_path / "r"), *TINY],
            "gone.png",
        ),
        (
            ["clip", "zero-shot", "--run", str(tmp_path), "--labels", "a", str(not_image)],
            "config.json",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
