"""The resume check compares saved and current model configs field by field, nested, and
lets a run saved before a field existed resume (it was trained with that field's default)."""

from __future__ import annotations

from tinygen.train.trainer import config_differences


def test_a_field_added_after_the_run_was_saved_is_no_difference():
    saved = {"beta_schedule": "cosine", "unet": {"base_channels": 32}}
    now = {"beta_schedule": "cosine", "unet": {"base_channels": 32, "cond_emb_dim": 0}}
    assert config_differences(saved, now) == []


def test_nested_and_top_level_changes_are_named_with_their_path():
    saved = {"beta_schedule": "linear", "unet": {"base_channels": 32, "channel_mult": [1, 2]}}
    now = {"beta_schedule": "cosine", "unet": {"base_channels": 64, "channel_mult": [1, 2]}}
    assert config_differences(saved, now) == [
        "beta_schedule: saved 'linear', now 'cosine'",
        "unet.base_channels: saved 32, now 64",
    ]


def test_a_field_the_new_config_lost_is_a_difference():
    assert config_differences({"dropout": 0.1}, {}) == ["dropout: saved 0.1, now absent"]
