"""``compile=True``: the same meta-gradient through torch.compile, and a clean fallback when it fails;
``compile="auto"``: compiled from a call count fixed in advance (never a time), vectorised strategies only."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.exc import BackendCompilerFailed

from torchmaml import MetaLearner, compilation
from torchmaml.data import SinusoidTasks
from torchmaml.errors import ConfigError
from torchmaml.estimators import get_estimator
from torchmaml.models import mlp


def gradients(learner, batch):
    grads, metrics = learner.meta_gradient(batch)
    return torch.cat([g.flatten() for g in grads["params"].values()]), metrics


@pytest.mark.e2e
@pytest.mark.parametrize("estimator", ["unrolled", "first_order"])
def test_compiled_meta_gradient_equals_eager(estimator):
    batches = [SinusoidTasks().sample(25, torch.Generator().manual_seed(s)) for s in range(3)]
    torch.manual_seed(0)
    eager = MetaLearner(mlp(), F.mse_loss, estimator=estimator, compile=False)
    compiled = MetaLearner(eager.model, F.mse_loss, estimator=estimator, compile=True)
    for batch in batches:
        (a, ma), (b, mb) = gradients(eager, batch), gradients(compiled, batch)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert torch.allclose(ma["loss_after"], mb["loss_after"], rtol=1e-5)


@pytest.mark.e2e
def test_implicit_compiles_without_falling_back_and_agrees_with_eager():
    """iMAML's solve and Gauss-Newton CG trace into one graph (its forward-mode Jacobian product once made dynamo
    fail with a device mismatch, and the learner silently ran eagerly)."""
    batch = SinusoidTasks().sample(6, torch.Generator().manual_seed(0))
    options = {"solver_steps": 2, "cg_iterations": 2}
    torch.manual_seed(0)
    eager = MetaLearner(mlp(hidden=(8,)), F.mse_loss, estimator="implicit", estimator_options=options, compile=False)
    compiled = MetaLearner(eager.model, F.mse_loss, estimator="implicit", estimator_options=options, compile=True)
    compiled._meta_gradient_runner.notify = lambda message: None
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # the fallback to eager: fail on it
        (a, ma), (b, mb) = gradients(eager, batch), gradients(compiled, batch)
    assert compiled._meta_gradient_runner._compiled is not None and compiled._meta_gradient_runner.mode is True
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ma["cg_residual"], mb["cg_residual"], rtol=1e-3, atol=1e-6)


def test_an_estimator_may_declare_its_own_auto_count():
    assert compilation.MetaGradientRunner("auto", "vmap", auto_after=7).compile_after == 7
    assert compilation.MetaGradientRunner("auto", "loop", auto_after=7).compile_after == float("inf")
    assert compilation.MetaGradientRunner(False, "vmap", auto_after=7).compile_after == float("inf")
    learner = MetaLearner(mlp(), F.mse_loss, estimator="implicit")
    assert learner._meta_gradient_runner.compile_after == get_estimator("implicit").auto_compile_after
    assert MetaLearner(mlp(), F.mse_loss)._meta_gradient_runner.compile_after == compilation.COMPILE_AFTER_CALLS["vmap"]


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_compile(fn):
        def call(*args):
            raise BackendCompilerFailed(lambda: None, RuntimeError("no C++ compiler"), None)

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    batch = SinusoidTasks().sample(4, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    learner = MetaLearner(mlp(), F.mse_loss, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        got, _ = gradients(learner, batch)
    expected, _ = gradients(MetaLearner(learner.model, F.mse_loss), batch)
    assert torch.equal(got, expected)


def recording_compile(monkeypatch) -> list:
    """Replace ``torch.compile`` by a pass-through that records what it was asked to compile."""
    compiled = []

    def fake_compile(fn):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    return compiled


def test_auto_compiles_a_vectorised_learner_at_a_fixed_call_whatever_the_clock_says(monkeypatch):
    """Item 5 of issue 18: the switch used to follow eager wall-clock time, so load changed the numbers."""
    import time

    compiled = recording_compile(monkeypatch)
    monkeypatch.setitem(compilation.COMPILE_AFTER_CALLS, "vmap", 3)
    clock = iter(range(0, 10**6, 1000))  # every reading 1000 s later: a machine under heavy load
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    notices = []
    batch = SinusoidTasks().sample(8, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    learner = MetaLearner(mlp(), F.mse_loss)  # compile="auto" is the default; strategy auto -> vmap
    runner = learner._meta_gradient_runner
    runner.notify = notices.append
    for call in range(1, 4):
        assert not learner.compiled and not compiled
        learner.meta_gradient(batch)
        assert runner.calls == call
    assert learner.compiled and not compiled and not notices  # compiles on the next (4th) call
    learner.meta_gradient(batch)
    learner.meta_gradient(batch)
    assert len(compiled) == 1 and notices == [compilation.COMPILING_NOTICE]


def test_a_runner_restored_past_the_switch_compiles_on_its_first_call(monkeypatch):
    compiled = recording_compile(monkeypatch)
    monkeypatch.setitem(compilation.COMPILE_AFTER_CALLS, "vmap", 3)
    runner = compilation.MetaGradientRunner("auto", "vmap", notify=lambda message: None, calls=5)
    assert runner.compiled and not compiled
    learner = MetaLearner(mlp(), F.mse_loss)
    runner(*learner_arguments(learner))
    assert len(compiled) == 1 and runner.calls == 6


def learner_arguments(learner):
    batch = SinusoidTasks().sample(2, torch.Generator().manual_seed(0))
    return (learner.estimator, learner.inner_problem(), learner._meta_params(), batch, learner.strategy, None)


def test_auto_leaves_the_loop_strategy_and_compile_false_eager(monkeypatch):
    compiled = recording_compile(monkeypatch)
    monkeypatch.setattr(compilation, "COMPILE_AFTER_CALLS", {"vmap": 0, "chunked": 0})
    batch = SinusoidTasks().sample(4, torch.Generator().manual_seed(0))
    for learner in (MetaLearner(mlp(), F.mse_loss, strategy="loop"), MetaLearner(mlp(), F.mse_loss, compile=False)):
        for _ in range(3):
            learner.meta_gradient(batch)
        assert not learner.compiled
    assert not compiled


@pytest.mark.parametrize("mode", ["yes", 1, None])
def test_an_unknown_compile_mode_is_a_config_error(mode):
    with pytest.raises(ConfigError, match="compile: must be true, false or 'auto'"):
        MetaLearner(mlp(), F.mse_loss, compile=mode)


@pytest.mark.e2e
def test_compiled_loop_compiles_one_whole_task_meta_gradient_of_conv4_and_agrees():
    from test_conv4 import image_batch
    from torch._dynamo.utils import counters

    from torchmaml.models import conv4

    torch.manual_seed(0)
    model = conv4(ways=3, filters=4, image_size=16).double()
    eager = MetaLearner(model, F.cross_entropy, 0.4, 1, strategy="loop", compile=False)
    compiled = MetaLearner(model, F.cross_entropy, 0.4, 1, strategy="loop", compile=True)
    counters.clear()
    (a, ma), (b, mb) = gradients(eager, image_batch()), gradients(compiled, image_batch())
    assert compiled.compiled
    assert not counters["graph_break"]  # batch norm's layout switch is traced, not a break back to eager
    assert counters["stats"]["unique_graphs"] == 1  # one graph serves every task of the batch
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(mb["loss_after"], ma["loss_after"], rtol=1e-9, atol=1e-11)
