"""The model zoo: every everyday kind of ``nn.Module`` meta-learned exactly, by every estimator and strategy.

Each model's meta-gradient from ``MetaLearner`` is compared with an independent reference written here: a
per-task Python loop of ``torch.autograd.grad(create_graph=True)`` inner steps on the *original* module (through
``torch.func.functional_call``, training-mode batch statistics, fresh buffer clones), as a reader would write
MAML by hand; for the approximate estimators, their formula written out with autograd and an explicit Hessian.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_map

from torchmaml import MetaLearner, ModelError, TaskBatch

B, N, T, D = 2, 5, 4, 3  # tasks, examples per set, sequence length, features


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(D, 6, batch_first=True)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(D, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, activation="gelu")
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(D, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        attended, _ = self.attention(h, h, h)
        return self.head(self.norm(h + attended).mean(1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(D, 6), nn.Linear(2, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.left(a) + self.right(b)))


class MeanAndScale(nn.Module):
    """A dict output: a Gaussian's mean and log-scale, scored by a negative log-likelihood."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, 8), nn.Tanh())
        self.mean, self.log_scale = nn.Linear(8, 1), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"mean": self.mean(h), "log_scale": self.log_scale(h)}


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(1))


def gaussian_nll(prediction: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    mean, log_scale = prediction["mean"], prediction["log_scale"]
    return (log_scale + 0.5 * ((y - mean) * torch.exp(-log_scale)) ** 2).mean()


def frozen_mlp() -> nn.Module:
    model = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 1))
    model[0].weight.requires_grad_(False)
    return model


def conv_net(norm: Callable[[int], nn.Module]) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), norm(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 3)
    )


@dataclass
class Case:
    build: Callable[[], nn.Module]
    loss: Callable
    data: str  # regression | sequence | image | tokens | two_inputs
    vmap: bool = True  # whether strategy="vmap" is allowed for it


ZOO = {
    "mlp": Case(lambda: nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 1)), F.mse_loss, "regression"),
    "layer_norm_mlp": Case(
        lambda: nn.Sequential(nn.Linear(D, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1)), F.mse_loss, "regression"
    ),
    "frozen_mlp": Case(frozen_mlp, F.mse_loss, "regression"),
    "cnn_batch_norm": Case(lambda: conv_net(nn.BatchNorm2d), F.cross_entropy, "image"),
    "cnn_group_norm": Case(lambda: conv_net(lambda c: nn.GroupNorm(1, c)), F.cross_entropy, "image"),
    "mlp_batch_norm_1d": Case(
        lambda: nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)),
        F.mse_loss,
        "regression",
        vmap=False,
    ),
    "gru": Case(lambda: Recurrent(nn.GRU), F.mse_loss, "sequence", vmap=False),
    "lstm": Case(lambda: Recurrent(nn.LSTM), F.mse_loss, "sequence", vmap=False),
    "rnn": Case(lambda: Recurrent(nn.RNN), F.mse_loss, "sequence", vmap=False),
    "transformer": Case(Transformer, F.mse_loss, "sequence"),
    "multihead_attention": Case(Attention, F.mse_loss, "sequence"),
    "embedding": Case(Tokens, F.cross_entropy, "tokens"),
    "two_inputs": Case(TwoInputs, F.mse_loss, "two_inputs"),
    "dict_output": Case(MeanAndScale, gaussian_nll, "regression"),
}


def make_batch(data: str, dtype: torch.dtype) -> TaskBatch:
    def inputs() -> object:
        if data == "regression":
            return torch.randn(B, N, D, dtype=dtype)
        if data == "sequence":
            return torch.randn(B, N, T, D, dtype=dtype)
        if data == "image":
            return torch.randn(B, N, 1, 6, 6, dtype=dtype)
        if data == "tokens":
            return torch.randint(0, 11, (B, N, T))
        return (torch.randn(B, N, D, dtype=dtype), torch.randn(B, N, 2, dtype=dtype))

    def targets() -> torch.Tensor:
        if data in ("image", "tokens"):
            return torch.randint(0, 3, (B, N))
        return torch.randn(B, N, 1, dtype=dtype)

    return TaskBatch(inputs(), targets(), inputs(), targets())


def call(model: nn.Module, params: dict, x: object) -> object:
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    args = x if isinstance(x, tuple) else (x,)
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
        return functional_call(model, ({**frozen, **params}, buffers), args)


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters() if p.requires_grad}


def naive_gradient(model, loss, batch, lr, steps, first_order=False) -> dict[str, torch.Tensor]:
    """The mean over tasks of autograd through a hand-written inner loop."""
    total: dict[str, torch.Tensor] = {}
    for i in range(batch.num_tasks):
        task = tree_map(lambda t, i=i: t[i], batch.tensors())
        w = trainable(model)
        fast = dict(w)
        for _ in range(steps):
            inner = loss(call(model, fast, task["support_x"]), task["support_y"])
            grads = torch.autograd.grad(inner, list(fast.values()), create_graph=not first_order)
            fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads, strict=True)}
        outer = loss(call(model, fast, task["query_x"]), task["query_y"])
        for n, g in zip(w, torch.autograd.grad(outer, list(w.values())), strict=True):
            total[n] = total.get(n, 0) + g / batch.num_tasks
    return total


def assert_matches(mine: dict, reference: dict, dtype: torch.dtype) -> None:
    assert mine.keys() == reference.keys()
    scale = max(float(g.abs().max()) for g in reference.values())
    tolerance = 1e-9 if dtype == torch.float64 else 2e-4
    for name, g in reference.items():
        difference = float((mine[name].to(torch.float64) - g.to(torch.float64)).abs().max())
        assert difference <= tolerance * max(scale, 1.0), f"{name}: {difference:.3g} (scale {scale:.3g})"


def strategies(case: Case) -> list[str]:
    return ["auto", "loop", "vmap"] if case.vmap else ["auto", "loop"]


MATRIX = [
    (name, estimator, strategy, dtype)
    for name, case in ZOO.items()
    for estimator in ("unrolled", "first_order")
    for strategy in strategies(case)
    for dtype in (torch.float64, torch.float32)
]


@pytest.mark.parametrize(("name", "estimator", "strategy", "dtype"), MATRIX)
def test_meta_gradient_matches_the_naive_loop(name, estimator, strategy, dtype):
    case = ZOO[name]
    model = case.build().to(dtype)
    batch = make_batch(case.data, dtype)
    learner = MetaLearner(model, case.loss, 0.3, 2, estimator, strategy, compile=False)
    grads, _ = learner.meta_gradient(batch)
    reference_model = copy.deepcopy(model).double()
    reference = naive_gradient(
        reference_model, case.loss, batch.to(dtype=torch.float64), 0.3, 2, estimator == "first_order"
    )
    assert_matches(grads["params"], reference, dtype)


def naive_hessian_free(model, loss, batch, lr, delta) -> dict[str, torch.Tensor]:
    """HF-MAML's one-step formula: ``v - alpha (g(w + delta v) - g(w - delta v)) / (2 delta)``, task mean."""
    total: dict[str, torch.Tensor] = {}
    for i in range(batch.num_tasks):
        task = tree_map(lambda t, i=i: t[i], batch.tensors())
        w = trainable(model)

        def gradient(params, x, y):
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
            values = torch.autograd.grad(loss(call(model, params, x), y), list(params.values()))
            return dict(zip(params, values, strict=True))

        g = gradient(w, task["support_x"], task["support_y"])
        v = gradient({n: w[n] - lr * g[n] for n in w}, task["query_x"], task["query_y"])
        plus = gradient({n: w[n] + delta * v[n] for n in w}, task["support_x"], task["support_y"])
        minus = gradient({n: w[n] - delta * v[n] for n in w}, task["support_x"], task["support_y"])
        for n in w:
            total[n] = total.get(n, 0) + (v[n] - lr * (plus[n] - minus[n]) / (2 * delta)) / batch.num_tasks
    return total


def naive_implicit(model, loss, batch, lr, steps, lam, cg_iterations) -> dict[str, torch.Tensor]:
    """iMAML with an explicit Hessian matrix: proximal gradient steps, then conjugate gradient on
    ``(I + H / lambda) x = grad f(phi; D_o)``, stopped where a direction has non-positive curvature (at the first
    step the answer is then the right-hand side)."""
    total: dict[str, torch.Tensor] = {}
    for i in range(batch.num_tasks):
        task = tree_map(lambda t, i=i: t[i], batch.tensors())
        w = {n: p.detach() for n, p in trainable(model).items()}
        shapes = {n: p.shape for n, p in w.items()}

        def unflat(vector, shapes=shapes):
            pieces = torch.split(vector, [s.numel() for s in shapes.values()])
            return {n: p.reshape(shapes[n]) for n, p in zip(shapes, pieces, strict=True)}

        def support_loss(vector, task=task):
            return loss(call(model, unflat(vector), task["support_x"]), task["support_y"])

        w_flat = torch.cat([p.reshape(-1) for p in w.values()])
        phi = w_flat.clone()
        for _ in range(steps):
            point = phi.clone().requires_grad_()
            (g,) = torch.autograd.grad(support_loss(point), point)
            phi = phi - lr * (g + lam * (phi - w_flat))
        hessian = torch.autograd.functional.hessian(support_loss, phi)
        point = phi.clone().requires_grad_()
        query = loss(call(model, unflat(point), task["query_x"]), task["query_y"])
        (rhs,) = torch.autograd.grad(query, point)
        matrix = torch.eye(len(phi), dtype=phi.dtype) + hessian / lam
        x, r = torch.zeros_like(rhs), rhs.clone()
        p, rr = r.clone(), r @ r
        for iteration in range(cg_iterations):
            ap = matrix @ p
            if p @ ap <= 0 and rr > 0:
                x = rhs.clone() if iteration == 0 else x
                break
            step = rr / (p @ ap)
            x, r = x + step * p, r - step * ap
            rr_new = r @ r
            p, rr = r + (rr_new / rr) * p, rr_new
        for n, value in unflat(x).items():
            total[n] = total.get(n, 0) + value / batch.num_tasks
    return total


def naive_reptile(model, loss, batch, lr, steps) -> dict[str, torch.Tensor]:
    """``w - phi_k`` after ``k`` SGD steps on the support and query sets together, task mean."""
    total: dict[str, torch.Tensor] = {}
    for i in range(batch.num_tasks):
        task = tree_map(lambda t, i=i: t[i], batch.tensors())
        x = tree_map(lambda s, q: torch.cat([s, q]), task["support_x"], task["query_x"])
        y = torch.cat([task["support_y"], task["query_y"]])
        w = trainable(model)
        fast = dict(w)
        for _ in range(steps):
            grads = torch.autograd.grad(loss(call(model, fast, x), y), list(fast.values()))
            fast = {n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(fast.items(), grads, strict=True)}
        for n in w:
            total[n] = total.get(n, 0) + (w[n] - fast[n]).detach() / batch.num_tasks
    return total


OTHER_ESTIMATORS = {
    "three_batch": ({}, lambda m, loss, b: naive_gradient(m, loss, b, 0.3, 1)),  # D_h = D_in: MAML's gradient
    "hessian_free": ({"delta": 1e-3}, lambda m, loss, b: naive_hessian_free(m, loss, b, 0.3, 1e-3)),
    "implicit": (
        {"lam": 2.0, "cg_iterations": 3, "damping": 0.0, "solver": "fixed", "curvature": "hessian"},
        lambda m, loss, b: naive_implicit(m, loss, b, 0.3, 1, 2.0, 3),
    ),
    "reptile": ({}, lambda m, loss, b: naive_reptile(m, loss, b, 0.3, 1)),
}


@pytest.mark.parametrize("estimator", sorted(OTHER_ESTIMATORS))
@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_estimator_matches_its_formula(name, estimator):
    case = ZOO[name]
    options, reference_of = OTHER_ESTIMATORS[estimator]
    model = case.build().double()
    batch = make_batch(case.data, torch.float64)
    if estimator == "three_batch":  # the Hessian set it requires: here the support set again
        batch = TaskBatch(**batch.tensors(), hessian_x=batch.support_x, hessian_y=batch.support_y)
    learner = MetaLearner(model, case.loss, 0.3, 1, estimator, estimator_options=options, compile=False)
    grads, _ = learner.meta_gradient(batch)
    assert_matches(grads["params"], reference_of(model, case.loss, batch), torch.float64)


def test_dropout_gets_fresh_masks_and_the_exact_gradient_of_the_masks_drawn():
    """Under ``loop`` the meta-gradient is the naive loop's with the same generator state (the same masks in
    the same order); under ``vmap`` two identical tasks draw different masks."""
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 1)).double()
    batch = make_batch("regression", torch.float64)
    learner = MetaLearner(model, F.mse_loss, 0.3, 2, "unrolled", "loop", compile=False)
    torch.manual_seed(7)
    grads, _ = learner.meta_gradient(batch)
    torch.manual_seed(7)
    assert_matches(grads["params"], naive_gradient(model, F.mse_loss, batch, 0.3, 2), torch.float64)
    torch.manual_seed(8)
    other, _ = learner.meta_gradient(batch)
    assert not torch.allclose(other["params"]["0.weight"], grads["params"]["0.weight"])

    twins = TaskBatch(*(tree_map(lambda t: t[:1].expand(2, *t.shape[1:]), f) for f in batch.tensors().values()))
    vectorised = MetaLearner(model, F.mse_loss, 0.3, 2, "unrolled", "vmap", compile=False)
    scores = vectorised.query_losses(twins, steps=2)
    assert not torch.allclose(scores[0, 1:], scores[1, 1:])
    model.eval()  # no dropout: identical tasks score identically
    scores = vectorised.query_losses(twins, steps=2)
    assert torch.equal(scores[0], scores[1])


def test_frozen_parameters_are_neither_adapted_nor_meta_learned():
    model = frozen_mlp().double()
    frozen_before = model[0].weight.detach().clone()
    learner = MetaLearner(model, F.mse_loss, 0.3, 1, compile=False)
    batch = make_batch("regression", torch.float64)
    assert "0.weight" not in learner.meta_gradient(batch)[0]["params"]
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.1)
    learner.meta_step(batch, optimizer)
    assert torch.equal(model[0].weight, frozen_before) and model[0].weight.grad is None
    assert not torch.equal(model[2].weight.detach(), frozen_mlp().double()[2].weight)  # trainable ones moved
    fast = learner.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert torch.equal(fast[0].weight, frozen_before)
    assert not torch.equal(fast[0].bias, model[0].bias)
    head_only = MetaLearner(model, F.mse_loss, 0.3, 1, adapt_only=["2"], compile=False)
    fast = head_only.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert torch.equal(fast[0].bias, model[0].bias) and not torch.equal(fast[2].weight, model[2].weight)


def test_batch_norm_uses_batch_statistics_in_either_mode_and_never_touches_running_statistics():
    model = conv_net(nn.BatchNorm2d).double()
    batch = make_batch("image", torch.float64)
    state = copy.deepcopy(model.state_dict())
    learner = MetaLearner(model, F.cross_entropy, 0.3, 1, compile=False)
    trained = learner.meta_gradient(batch)[0]["params"]
    model.eval()
    evaluated = learner.meta_gradient(batch)[0]["params"]
    assert_matches(evaluated, trained, torch.float64)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("norm", ["torch", "conv4"])
def test_adapted_copy_in_eval_mode_predicts_each_example_with_the_support_statistics(norm):
    from torchmaml.models import MetaBatchNorm2d

    model = conv_net(nn.BatchNorm2d if norm == "torch" else MetaBatchNorm2d).double()
    batch = make_batch("image", torch.float64)
    learner = MetaLearner(model, F.cross_entropy, 0.3, 1, compile=False)
    support_x, support_y = batch.support_x[0], batch.support_y[0]
    fast = learner.adapt(support_x, support_y, steps=2)
    assert fast.training  # the copy keeps the model's mode
    transductive_support = fast(support_x)
    fast.eval()
    # in eval mode the support set is normalised exactly as in training ...
    assert torch.allclose(fast(support_x), transductive_support, atol=1e-12)
    # ... and each query example alone gets the prediction it gets among others
    query = batch.query_x[0]
    together = fast(query)
    alone = torch.cat([fast(query[i : i + 1]) for i in range(len(query))])
    assert torch.allclose(together, alone, atol=1e-12)


def test_adapt_returns_a_copy_a_loss_cannot_silently_backpropagate_through():
    model = ZOO["mlp"].build().double()
    learner = MetaLearner(model, F.mse_loss, 0.3, 1, compile=False)
    batch = make_batch("regression", torch.float64)
    fast = learner.adapt(batch.support_x[0], batch.support_y[0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        F.mse_loss(fast(batch.query_x[0]), batch.query_y[0]).backward()


@pytest.mark.parametrize("first_order", [False, True])
def test_differentiable_adaptation_gives_the_meta_gradient(first_order):
    """The learn2learn habit: adapt on the support set, backpropagate the query loss, for every task."""
    model = ZOO["gru"].build().double()
    batch = make_batch("sequence", torch.float64)
    learner = MetaLearner(model, F.mse_loss, 0.3, 2, "first_order" if first_order else "unrolled", compile=False)
    expected, _ = learner.meta_gradient(batch)
    for i in range(batch.num_tasks):
        fast = learner.adapt_differentiable(batch.support_x[i], batch.support_y[i], first_order=first_order)
        (F.mse_loss(fast(batch.query_x[i]), batch.query_y[i]) / batch.num_tasks).backward()
    assert_matches({n: p.grad for n, p in model.named_parameters()}, expected["params"], torch.float64)


def test_backward_accumulates_like_loss_backward_and_meta_step_is_sugar_over_it():
    model = ZOO["mlp"].build().double()
    learner = MetaLearner(model, F.mse_loss, 0.3, 1, compile=False)
    first, second = make_batch("regression", torch.float64), make_batch("regression", torch.float64)
    expected = {
        n: (learner.meta_gradient(first)[0]["params"][n] + learner.meta_gradient(second)[0]["params"][n])
        for n, _ in model.named_parameters()
    }
    metrics = learner.backward(first)
    learner.backward(second)
    assert metrics["finite"] == 1.0 and metrics["loss_after"] > 0
    assert_matches({n: p.grad for n, p in model.named_parameters()}, expected, torch.float64)

    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.grad = None
    by_hand = MetaLearner(twin, F.mse_loss, 0.3, 1, compile=False)
    sugar_optimizer = torch.optim.SGD(learner.parameters(), lr=0.1)
    hand_optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    learner.meta_step(first, sugar_optimizer)
    hand_optimizer.zero_grad()
    by_hand.backward(first)
    torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 1e9)  # the user's loop: anything between the two
    hand_optimizer.step()
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_loss_scale_and_grad_scaler():
    model = ZOO["mlp"].build()
    twin = copy.deepcopy(model)
    batch = make_batch("regression", torch.float32)
    plain, scaled = (MetaLearner(m, F.mse_loss, 0.3, 1, compile=False) for m in (model, twin))
    plain_optimizer, scaled_optimizer = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    plain.backward(batch)
    plain_optimizer.step()
    scaled.backward(batch, grad_scaler=scaler)
    assert torch.allclose(twin[0].weight.grad, 1024.0 * model[0].weight.grad)
    scaler.step(scaled_optimizer)
    scaler.update()
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn_batch_norm", "gru"])
def test_bfloat16_autocast_stays_close_to_float32(name):
    """CPU mixed precision: the meta-gradient under ``torch.autocast(bfloat16)`` is within 5 % (relative, in
    norm) of float32's; the parameters and ``.grad`` stay float32."""
    case = ZOO[name]
    model = case.build()
    batch = make_batch(case.data, torch.float32)
    learner = MetaLearner(model, case.loss, 0.3, 1, compile=False)
    reference, _ = learner.meta_gradient(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = learner.meta_gradient(batch)
    flat_reference = torch.cat([g.reshape(-1) for g in reference["params"].values()])
    flat_mixed = torch.cat([g.reshape(-1).float() for g in mixed["params"].values()])
    assert float((flat_mixed - flat_reference).norm() / flat_reference.norm()) < 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        learner.backward(batch)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "strategy", "match"),
    [
        ("gru", "vmap", "recurrent layer .* use strategy='loop'"),
        ("mlp_batch_norm_1d", "vmap", "fused nn.BatchNorm .* use strategy='loop'"),
    ],
)
def test_strategies_that_cannot_be_exact_are_refused_in_one_line(name, strategy, match):
    with pytest.raises(ModelError, match=match) as error:
        MetaLearner(ZOO[name].build(), F.mse_loss, 0.3, 1, strategy=strategy)
    assert "\n" not in str(error.value)


def test_loss_errors_are_one_line():
    model = ZOO["embedding"].build()
    batch = make_batch("tokens", torch.float32)
    with pytest.raises(ModelError, match="scalar tensor, got float"):
        MetaLearner(model, lambda p, y: 1.0, 0.3, 1).meta_gradient(batch)
    learner = MetaLearner(model, F.cross_entropy, 0.3, 1, compile=False)
    learner.meta_gradient(batch)
    bad = TaskBatch(batch.support_x, batch.support_y + 5, batch.query_x, batch.query_y)
    with pytest.raises(ModelError, match=r"labels in \[5, 7\] but the model outputs 3 classes"):
        learner.meta_gradient(bad)
    with pytest.raises(Exception, match="steps: must be an integer >= 0"):
        learner.adapt(batch.support_x[0], batch.support_y[0], steps=-5)
    with pytest.raises(Exception, match="inner_lr: must be a finite number > 0"):
        learner.adapt(batch.support_x[0], batch.support_y[0], inner_lr=float("nan"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["mlp", "cnn_batch_norm", "gru", "transformer"])
def test_cuda_matches_cpu(name):
    case = ZOO[name]
    model = case.build().double()
    batch = make_batch(case.data, torch.float64)
    cpu, _ = MetaLearner(model, case.loss, 0.3, 2, compile=False).meta_gradient(batch)
    gpu_model = copy.deepcopy(model).cuda()
    gpu, _ = MetaLearner(gpu_model, case.loss, 0.3, 2, compile=False).meta_gradient(batch.to(device="cuda"))
    assert_matches({n: g.cpu() for n, g in gpu["params"].items()}, cpu["params"], torch.float64)


class Counter(nn.Module):
    """Counts its forward passes in a buffer: an in-place buffer update the meta-learner must not hide."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, 1)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("scale", torch.full((), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.scale * self.linear(x)


def test_buffers_are_read_and_an_in_place_update_is_reported_not_hidden():
    model = Counter().double()
    batch = make_batch("regression", torch.float64)
    learner = MetaLearner(model, F.mse_loss, 0.3, 1, compile=False)
    with pytest.warns(UserWarning, match=r"updates the buffer\(s\) calls in place.*discarded"):
        grads, _ = learner.meta_gradient(batch)
    assert float(model.calls) == 0.0  # never leaked into the module
    assert_matches(grads["params"], naive_gradient(model, F.mse_loss, batch, 0.3, 1), torch.float64)
    model.scale.fill_(3.0)  # buffers are read at each call
    rescaled, _ = learner.meta_gradient(batch)
    assert not torch.allclose(rescaled["params"]["linear.weight"], grads["params"]["linear.weight"])


def test_differentiable_adaptation_of_a_model_with_several_inputs_takes_its_own_call_signature():
    model = TwoInputs().double()
    batch = make_batch("two_inputs", torch.float64)
    learner = MetaLearner(model, F.mse_loss, 0.3, 1, compile=False)
    fast = learner.adapt_differentiable(tree_map(lambda t: t[0], batch.support_x), batch.support_y[0])
    a, b = (t[0] for t in batch.query_x)
    assert torch.equal(fast(a, b), fast(a, b=b))
    assert torch.equal(fast(a, b), call(model, fast.params, (a, b)))
