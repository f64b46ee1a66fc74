"""A noised CLIP fine-tuned from a clean one (`train clip --noised --init-from`): at step 0 it
is the clean CLIP at every t, and a run of another shape is one clear error."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinygen.errors import TinygenError
from tinygen.recipes.clip import PRESETS, load_clip, train_clip
from tinygen.recipes.clip_noised import noised_config, warm_start

DATA = dict(train_size=256, val_size=64, progress=False)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clip"
    preset = PRESETS["tiny"]
    train_clip(preset.model, dataclasses.replace(preset.train, max_iters=3), out, **DATA)
    return out


def test_the_warm_started_noised_clip_equals_the_clean_one_at_every_t(clean_run):
    from tinygen.models.clip import CLIP

    clean, tokenizer, _ = load_clip(clean_run)
    config = noised_config(
        dataclasses.replace(
            PRESETS["tiny"].model,
            vocab_size=tokenizer.vocab_size,
            context_length=tokenizer.context_length,
        ),
        100,
    )
    loaded_tokenizer, load = warm_start(clean_run, config)
    assert loaded_tokenizer.vocab_size == tokenizer.vocab_size
    noised = CLIP(config).eval()
    load(noised)
    images = torch.rand(4, 3, config.image_size, config.image_size) * 2 - 1
    expected = clean.encode_image(images)
    for t in (0, 37, 99):
        got = noised.encode_image(images, torch.full((4,), t))
        torch.testing.assert_close(got, expected)
    # the timestep layer is the only new part, and it starts at zero
    assert all((p == 0).all() for n, p in noised.named_parameters() if "time_embedding" in n)


def test_the_recipe_records_its_source_and_trains_from_it(clean_run, tmp_path):
    from tinygen.models.runs import load_run_config
    from tinygen.recipes.clip_noised import train_noised_clip

    preset = PRESETS["tiny"]
    train = dataclasses.replace(preset.train, max_iters=2, eval_interval=2)
    train_noised_clip(
        preset.model,
        train,
        tmp_path / "noised",
        beta_schedule="linear",
        num_train_timesteps=100,
        init_from=clean_run,
        **DATA,
    )
    config = load_run_config(tmp_path / "noised")
    assert config["init_from"]["run"] == str(clean_run)
    assert config["model"]["num_timesteps"] == 100
    assert (tmp_path / "noised" / "tokenizer.json").read_text() == (
        clean_run / "tokenizer.json"
    ).read_text()


def test_a_different_model_or_the_wrong_kind_of_run_is_one_clear_error(clean_run, tmp_path, capsys):
    from tinygen.cli.main import main

    config = noised_config(dataclasses.replace(PRESETS["tiny"].model, vision_width=48), 100)
    with pytest.raises(TinygenError, match="vision_width"):
        warm_start(clean_run, config)
    with pytest.raises(TinygenError):
        warm_start(tmp_path / "nothing", config)
    assert main(["train", "clip", "--init-from", str(clean_run), "--out", str(tmp_path)]) == 2
    assert "add --noised" in capsys.readouterr().err
    missing = ["train", "clip", "--noised", "--init-from", str(tmp_path / "nothing")]
    assert main([*missing, "--preset", "tiny", "--out", str(tmp_path / "n")]) == 2
    assert "nothing" in capsys.readouterr().err
