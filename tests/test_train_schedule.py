"""Learning-rate schedules, optimiser groups and EMA against their formulas."""

import math

import torch

from tinygen.train.config import TrainConfig
from tinygen.train.ema import EMA
from tinygen.train.lr import get_lr
from tinygen.train.optim import make_optimizer


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110)
    assert get_lr(0, cfg) == 1e-3 * 1 / 11
    assert math.isclose(get_lr(9, cfg), 1e-3 * 10 / 11)
    assert math.isclose(get_lr(10, cfg), 1e-3)
    assert math.isclose(get_lr(60, cfg), 1e-4 + 0.5 * (1e-3 - 1e-4))  # half way: cos = 0
    assert math.isclose(get_lr(110, cfg), 1e-4)
    assert get_lr(500, cfg) == 1e-4


def test_inverse_sqrt_schedule_is_the_papers_formula_scaled_to_the_peak():
    cfg = TrainConfig(learning_rate=2e-3, lr_schedule="inverse_sqrt", warmup_iters=400)
    d_model = 512

    def paper(step):  # Vaswani et al. 2017, eq. 3
        return d_model**-0.5 * min(step**-0.5, step * 400**-1.5)

    scale = 2e-3 / paper(400)
    for step in (1, 100, 400, 1000, 10_000):
        assert math.isclose(get_lr(step - 1, cfg), scale * paper(step), rel_tol=1e-9)


def test_weight_decay_applies_to_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), "cpu")
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_frozen_parameters_are_not_optimised():
    model = torch.nn.Linear(4, 4)
    model.weight.requires_grad_(False)
    opt = make_optimizer(model, TrainConfig(), "cpu")
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == 1 and params[0] is model.bias


def test_ema_update_is_exact():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, 0.9 * start + 0.1 * (start + 1.0))
