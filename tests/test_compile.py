"""``compile=True``: the same meta-gradient through torch.compile, and a clean fallback when it fails."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.exc import BackendCompilerFailed

from torchmaml import MetaLearner
from torchmaml.data import SinusoidTasks
from torchmaml.models import mlp


def gradients(learner, batch):
    grads, metrics = learner.meta_gradient(batch)
    return torch.cat([g.flatten() for g in grads["params"].values()]), metrics


@pytest.mark.e2e
@pytest.mark.parametrize("estimator", ["unrolled", "first_order"])
def test_compiled_meta_gradient_equals_eager(estimator):
    batches = [SinusoidTasks().sample(25, torch.Generator().manual_seed(s)) for s in range(3)]
    torch.manual_seed(0)
    eager = MetaLearner(mlp(), F.mse_loss, estimator=estimator)
    compiled = MetaLearner(eager.model, F.mse_loss, estimator=estimator, compile=True)
    for batch in batches:
        (a, ma), (b, mb) = gradients(eager, batch), gradients(compiled, batch)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert torch.allclose(ma["loss_after"], mb["loss_after"], rtol=1e-5)


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
