"""One file per model family: its Trainer task, evaluation hooks, pictures and named
presets. `recipes/common.py: fit(...)` is the one place that builds the Trainer.

Recipes sit above `models/`, `train/` and `eval/` and below `cli/`: the commands parse
flags and call in here; benchmarks and tests import presets from here, never from `cli/`.
"""
