"""MAML++ schedules, AlphaMAML's hypergradient rates, and that the trainer applies them at the right iterations."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchmaml import MetaLearner, TaskBatch
from torchmaml.config import load_config
from torchmaml.errors import ConfigError
from torchmaml.experiment import MAML
from torchmaml.optim import HypergradientSGD
from torchmaml.rundir import RunDir
from torchmaml.schedules import multi_step_weights, uses_first_order
from torchmaml.train import PhaseTrainer


def test_multi_step_weights_anneal_towards_the_last_step():
    first = multi_step_weights(1, 5, 100)
    assert first == pytest.approx((0.2,) * 5)
    middle = multi_step_weights(51, 5, 100)
    assert middle[:4] == pytest.approx((0.1,) * 4) and middle[4] == pytest.approx(0.6)
    late = multi_step_weights(100, 5, 100)
    assert late[:4] == pytest.approx((0.006,) * 4) and late[4] == pytest.approx(1 - 4 * 0.006)
    for iteration in range(1, 101, 7):
        assert sum(multi_step_weights(iteration, 5, 100)) == pytest.approx(1.0)
    assert multi_step_weights(101, 5, 100) is None
    assert multi_step_weights(1, 5, 0) is None
    assert multi_step_weights(1, 1, 10) == (1.0,)


def test_first_order_warm_up():
    assert [uses_first_order(i, 3) for i in (1, 3, 4)] == [True, True, False]
    assert not uses_first_order(1, 0)


def test_hypergradient_sgd_matches_the_hand_computed_sequence():
    w = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    optimizer = HypergradientSGD([w], lr=0.1, hyper_lr=0.01)
    a, c = 2.0, 1.0  # f(w) = a/2 (w - c)^2
    expected_w, expected_lr, previous = 3.0, 0.1, None
    for _ in range(5):
        optimizer.zero_grad()
        (0.5 * a * (w - c) ** 2).sum().backward()
        gradient = a * (expected_w - c)
        if previous is not None:
            expected_lr += 0.01 * gradient * previous
        expected_w -= expected_lr * gradient
        previous = gradient
        optimizer.step()
        assert w.item() == pytest.approx(expected_w, rel=1e-12)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr, rel=1e-12)


def test_alpha_maml_update_equals_the_closed_form_on_a_quadratic_task():
    """One task f(w) = (w - c)^2 (support = query), one inner step: phi = w - alpha 2 (w - c),
    L = (phi - c)^2 = (1 - 2 alpha)^2 (w - c)^2, dL/dw = 2 (1 - 2 alpha)^2 (w - c),
    dL/dalpha = -4 (1 - 2 alpha) (w - c)^2."""
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(3.0)
    learner = MetaLearner(model, F.mse_loss, inner_lr=0.1, inner_steps=1, inner_lr_mode="scalar", strategy="loop")
    eta_alpha, eta_beta, beta = 0.01, 0.001, 0.05
    optimizer = HypergradientSGD(
        [
            {"params": list(model.parameters()), "lr": beta, "hyper_lr": eta_beta},
            {"params": list(learner.inner_rate.parameters()), "lr": eta_alpha, "hyper_lr": 0.0},
        ],
        lr=beta,
    )
    c = 1.0
    x = torch.ones(1, 1, 1, dtype=torch.float64)
    batch = TaskBatch(x, torch.full_like(x, c), x, torch.full_like(x, c))
    w, alpha, previous = 3.0, 0.1, None
    for _ in range(4):
        grad_w = 2 * (1 - 2 * alpha) ** 2 * (w - c)
        grad_alpha = -4 * (1 - 2 * alpha) * (w - c) ** 2
        if previous is not None:
            beta += eta_beta * grad_w * previous
        w, alpha, previous = w - beta * grad_w, alpha - eta_alpha * grad_alpha, grad_w
        learner.meta_step(batch, optimizer)
        assert model.weight.item() == pytest.approx(w, rel=1e-10)
        assert learner.inner_rate.lr.item() == pytest.approx(alpha, rel=1e-10)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(beta, rel=1e-10)


def test_alpha_maml_needs_a_scalar_inner_rate():
    with pytest.raises(ConfigError, match="inner_lr_mode"):
        load_config("sinusoid", ["outer_optimizer=alpha_maml"])


def test_trainer_switches_to_exact_gradients_and_anneals_weights_at_the_right_iterations(tmp_path, monkeypatch):
    config = load_config(
        "sinusoid-demo",
        ["iterations=8", "inner_steps=3", "first_order_iterations=3", "multi_step_loss_iterations=5",
         "outer_lr_schedule=cosine", "min_outer_lr=1e-5", "checkpoint_every=100"],
    )  # fmt: skip
    (tmp_path / "config.toml").write_text("")
    trainer = PhaseTrainer(config, MAML, 8, RunDir(tmp_path), progress=False)
    seen = []
    original = trainer.learner.meta_step

    def spy(batch, optimizer, loss_before=False):
        seen.append(
            (type(trainer.learner.estimator).__name__, trainer.learner.step_weights, optimizer.param_groups[0]["lr"])
        )
        return original(batch, optimizer, loss_before)

    monkeypatch.setattr(trainer.learner, "meta_step", spy)
    trainer.run(stop=type("Flag", (), {"signal_number": None})(), resume=False)
    assert [name for name, _, _ in seen] == ["FirstOrder"] * 3 + ["Unrolled"] * 5
    assert [w is not None for _, w, _ in seen] == [True] * 5 + [False] * 3
    assert seen[0][1] == pytest.approx((1 / 3,) * 3)
    rates = [lr for _, _, lr in seen]
    assert rates[0] == pytest.approx(1e-3) and all(a > b for a, b in itertools.pairwise(rates))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_time_limit_stops_the_phase_and_writes_the_final_checkpoint(tmp_path, monkeypatch):
    config = load_config(
        "sinusoid-demo", ["iterations=50", "time_limit_minutes=0.001", "checkpoint_every=100", "compile=false"]
    )
    (tmp_path / "config.toml").write_text("")
    trainer = PhaseTrainer(config, MAML, 50, RunDir(tmp_path), progress=False)
    original = trainer.learner.meta_step

    def slow_step(batch, optimizer, loss_before=False):  # each takes >= 25 ms: the 60 ms limit stops it by 3
        time.sleep(0.025)
        return original(batch, optimizer, loss_before)

    monkeypatch.setattr(trainer.learner, "meta_step", slow_step)
    trainer.run(stop=type("Flag", (), {"signal_number": None})(), resume=False)
    assert 2 <= trainer.iteration <= 3 and trainer.elapsed >= 0.06
    assert len(RunDir(tmp_path).metrics(MAML).read_text().splitlines()) == trainer.iteration
    assert RunDir(tmp_path).checkpoint(MAML).exists()
