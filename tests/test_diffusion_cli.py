"""The diffusion commands end to end on a tiny model: train, sample (grid + denoising
strip of the right size), evaluate (one row per setting, DDPM at the full step count),
noisy-classifier training and guidance, and one-line errors for bad input."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinygen.cli.diffusion import parse_labels
from tinygen.cli.main import main
from tinygen.data.shapes import COLORS, SHAPES
from tinygen.train import checkpoint as ckpt

# tiny models run fastest on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


TINY = [
    "--preset",
    "tiny",
    "--image-size",
    "16",
    "--n-train",
    "256",
    "--max-iters",
    "4",
    "--eval-interval",
    "4",
    "--eval-iters",
    "1",
    "--num-train-timesteps",
    "20",
    "--no-progress",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def class_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("diffusion") / "run"
    assert (
        main(
            [
                "train",
                "diffusion",
                "--cond",
                "class",
                "--objective",
                "v_prediction",
                "--min-snr-gamma",
                "5",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def evaluator_run(tmp_path_factory) -> Path:
    """An (untrained) shapes evaluator run: enough to exercise the evaluation plumbing."""
    from tinygen.models.evaluator import EvaluatorConfig, ShapesEvaluator

    out = tmp_path_factory.mktemp("evaluator")
    torch.manual_seed(0)
    config = EvaluatorConfig(image_size=16, width=8, feature_dim=16)
    ckpt.write_json(
        out / ckpt.CONFIG_FILE, {"model_type": "shapes-evaluator", "model": asdict(config)}
    )
    ckpt.save_weights(ShapesEvaluator(config), out / ckpt.BEST_FILE, {"step": 0})
    return out


def test_labels_parse_to_colour_shape_classes():
    labels = parse_labels("red circle, blue star", 5)
    red_circle = COLORS.index("red") * len(SHAPES) + SHAPES.index("circle")
    blue_star = COLORS.index("blue") * len(SHAPES) + SHAPES.index("star")
    assert labels.tolist() == [red_circle, blue_star, red_circle, blue_star, red_circle]


def test_train_writes_a_run_that_records_the_objective(class_run):
    config = json.loads((class_run / "config.json").read_text())
    assert config["model_type"] == "diffusion"
    assert config["model"]["prediction_type"] == "v_prediction"
    assert config["model"]["conditioning"] == "class"
    assert config["model"]["min_snr_gamma"] == 5.0
    assert (class_run / "ema.safetensors").is_file() and (class_run / "samples.png").is_file()


def test_sample_writes_grid_and_denoising_strip(class_run, tmp_path):
    out = tmp_path / "grid.png"
    assert (
        main(
            [
                "sample",
                "diffusion",
                "--run",
                str(class_run),
                "--sampler",
                "ddpm",
                "--steps",
                "10",
                "--n",
                "6",
                "--label",
                "red circle",
                "--guidance",
                "3",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    # 6 images of 16 px -> a 3 x 2 grid with 2 px padding, magnified 4x
    assert Image.open(out).size == ((3 * 18 + 2) * 4, (2 * 18 + 2) * 4)
    # strip: every step (10 steps, every 1st) in two rows: x_t and predicted x_0
    assert Image.open(tmp_path / "grid_strip.png").size == ((10 * 18 + 2) * 4, (2 * 18 + 2) * 4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--label", "pink blob"], "pink"),
        (["--steps", "21"], "exceeds the 20 training steps"),
        (["--eta", "1.5"], "eta must be in"),
    ],
)
def test_bad_sampling_input_is_one_line_error(class_run, tmp_path, capsys, args, message):
    code = main(
        [
            "sample",
            "diffusion",
            "--run",
            str(class_run),
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "x.png"),
            "--device",
            "cpu",
            *args,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_eval_has_one_row_per_setting_and_ddpm_at_the_training_steps(
    class_run, evaluator_run, tmp_path
):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "diffusion",
                "--run",
                str(class_run),
                "--guidance",
                "0,2",
                "--steps",
                "5,20",
                "--n",
                "6",
                "--n-ddpm",
                "4",
                "--evaluator",
                str(evaluator_run),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = json.loads((out / "eval.json").read_text())
    settings = [(r["sampler"], r["steps"], r["guidance"], r["n"]) for r in rows]
    assert settings == [
        ("ddim", 5, 0.0, 6),
        ("ddim", 5, 2.0, 6),
        ("ddpm", 20, 0.0, 4),
        ("ddpm", 20, 2.0, 4),
    ]
    assert all(0.0 <= r["fidelity"] <= 1.0 and r["feature_distance"] >= 0 for r in rows)
    assert len((out / "eval.md").read_text().splitlines()) == 2 + len(rows)
    assert (out / "fidelity_diversity.png").is_file()


def test_classifier_guidance_on_an_unconditional_model(tmp_path, evaluator_run):
    base = tmp_path / "uncond"
    clf = tmp_path / "clf"
    assert main(["train", "diffusion", "--out", str(base), *TINY]) == 0
    assert main(["train", "noisy-classifier", "--out", str(clf), *TINY]) == 0
    rows_dir = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "diffusion",
                "--run",
                str(base),
                "--classifier",
                str(clf),
                "--classifier-scales",
                "0,4",
                "--steps",
                "3",
                "--n",
                "4",
                "--evaluator",
                str(evaluator_run),
                "--out",
                str(rows_dir),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = json.loads((rows_dir / "eval.json").read_text())
    assert [r["classifier_scale"] for r in rows] == [0.0, 4.0]
    # the classifier changes the samples: the same seeds give different images
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for scale, path in ((0, a), (50, b)):
        assert (
            main(
                [
                    "sample",
                    "diffusion",
                    "--run",
                    str(base),
                    "--classifier",
                    str(clf),
                    "--classifier-scale",
                    str(scale),
                    "--label",
                    "red circle",
                    "--n",
                    "2",
                    "--steps",
                    "3",
                    "--out",
                    str(path),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    assert Image.open(a).tobytes() != Image.open(b).tobytes()


def test_unconditional_model_rejects_a_label_without_classifier(tmp_path, capsys):
    base = tmp_path / "uncond"
    assert main(["train", "diffusion", "--out", str(base), *TINY]) == 0
    code = main(
        [
            "sample",
            "diffusion",
            "--run",
            str(base),
            "--label",
            "red circle",
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "x.png"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and "--classifier" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "schedule", "objective"),
    [
        (["--preset", "shapes"], "cosine", "v_prediction"),
        (["--preset", "tiny"], "linear", "epsilon"),
        (
            ["--preset", "shapes", "--schedule", "linear", "--objective", "epsilon"],
            "linear",
            "epsilon",
        ),
    ],
)
def test_preset_sets_schedule_and_objective_unless_given(flags, schedule, objective):
    """The shapes preset is the measured recipe (cosine, v-prediction); flags still win, and
    the noisy classifier gets the same schedule default as the model it will guide."""
    from tinygen.cli.diffusion import _configs
    from tinygen.cli.main import build_parser

    for command in ("diffusion", "noisy-classifier"):
        if command == "noisy-classifier" and "--objective" in flags:
            continue  # a classifier has no objective flag
        args = build_parser().parse_args(["train", command, *flags])
        _configs(args)
        assert args.beta_schedule == schedule
        if command == "diffusion":
            assert args.prediction_type == objective


def test_resume_with_another_schedule_is_refused(tmp_path, capsys):
    """The schedule holds no weights, so only the saved config can tell that a resumed run
    would continue on another one (e.g. a run started before the preset's default changed)."""
    out = tmp_path / "run"
    assert main(["train", "diffusion", "--schedule", "linear", "--out", str(out), *TINY]) == 0
    before = (out / "trainer_state.pt").read_bytes()
    code = main(
        ["train", "diffusion", "--schedule", "cosine", "--resume", "--out", str(out), *TINY]
    )
    err = capsys.readouterr().err
    assert code == 2 and "beta_schedule: saved 'linear', now 'cosine'" in err
    assert (out / "trainer_state.pt").read_bytes() == before


def test_sample_from_an_init_image_at_strength_zero_gives_the_image_back(class_run, tmp_path):
    """SDEdit: strength 0 runs no step, so every sample is the init image (as 8-bit pixels);
    strength 0.5 runs half of the steps, as the strip shows."""
    from tinygen.data.image_folder import save_image_grid
    from tinygen.data.shapes import generate_shapes

    picture = generate_shapes(1, split="val", seed=3, image_size=16).images
    init = tmp_path / "red.png"
    save_image_grid(picture, init, nrow=1, padding=0)
    common = ["sample", "diffusion", "--run", str(class_run), "--steps", "10", "--n", "2"]
    common += ["--label", "blue circle", "--init-image", str(init), "--device", "cpu"]
    out = tmp_path / "same.png"
    assert main([*common, "--strength", "0", "--out", str(out)]) == 0
    grid = torch.from_numpy(np.array(Image.open(out))).permute(2, 0, 1)
    first = grid[:, 2 * 4 : 18 * 4 : 4, 2 * 4 : 18 * 4 : 4]  # the first image, unmagnified
    expected = ((picture[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(first, expected)
    assert main([*common, "--strength", "0.5", "--out", str(tmp_path / "half.png")]) == 0
    # 5 of the 10 steps ran: a strip of 5 frames over two rows
    assert Image.open(tmp_path / "half_strip.png").size == ((5 * 18 + 2) * 4, (2 * 18 + 2) * 4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strength", "0.5"], "--strength needs --init-image"),
        (["--init-image", "missing.png"], "does not exist"),
        (["--init-image", "{txt}"], "not an image"),
        (["--init-image", "{png}", "--strength", "1.5"], "strength must be in [0, 1]"),
    ],
)
def test_bad_init_image_input_is_one_line_error(class_run, tmp_path, capsys, args, message):
    txt = tmp_path / "notes.txt"
    txt.write_text("not a picture")
    png = tmp_path / "ok.png"
    Image.new("RGB", (20, 12), "red").save(png)
    args = [a.format(txt=txt, png=png) for a in args]
    code = main(
        ["sample", "diffusion", "--run", str(class_run), "--steps", "4", "--n", "1"]
        + ["--out", str(tmp_path / "x.png"), "--device", "cpu", *args]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
