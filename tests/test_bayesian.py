"""Bayesian MAML: SVGD against a hand-written reference, the chaser and BFA meta-gradients against finite
differences, the ensemble of MAMLs against independent MAMLs, Particles on several model kinds, bad options."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn
from torch.func import functional_call

from torchmaml import MetaLearner, TaskBatch
from torchmaml.bayesian import SVGD, CategoricalLikelihood, GaussianLikelihood, Particles, median_bandwidth
from torchmaml.bayesian.svgd import squared_distances
from torchmaml.config import load_config
from torchmaml.errors import ConfigError, ModelError
from torchmaml.experiment import build_learner

DTYPE = torch.float64


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).to(DTYPE)


def regression_batch(tasks: int = 2, support: int = 4, query: int = 5, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, support, 1, generator=g, dtype=DTYPE) * 4 - 2
    qx = torch.rand(tasks, query, 1, generator=g, dtype=DTYPE) * 4 - 2
    amplitude = torch.rand(tasks, 1, 1, generator=g, dtype=DTYPE) + 0.5
    return TaskBatch(sx, amplitude * torch.sin(sx), qx, amplitude * torch.sin(qx))


# -- an independent reference: SVGD written out particle by particle -------------------------------------------


def particle_weights(particles: Particles) -> list[dict[str, torch.Tensor]]:
    """Every particle's parameters (model weights and log_std) as a dict of plain tensors."""
    tensors = dict(particles.named_parameters())
    return [{name: t[m].clone() for name, t in tensors.items()} for m in range(particles.count)]


def log_posterior(model: nn.Module, weights: dict, x, y, noise_std, prior_std) -> torch.Tensor:
    """``sum_n log N(y_n; f(x_n), sigma^2) + log N(theta; 0, s^2)`` for one particle (up to constants in theta)."""
    params = {name.removeprefix("members."): w for name, w in weights.items() if name.startswith("members.")}
    mean = functional_call(model, params, (x,))
    log_std = weights["noise.log_std"] if noise_std is None else torch.tensor(math.log(noise_std), dtype=DTYPE)
    log_likelihood = (-((y - mean) ** 2) / (2 * torch.exp(2 * log_std)) - log_std - 0.5 * math.log(2 * math.pi)).sum()
    prior = sum(-(w**2).sum() / (2 * prior_std**2) for w in weights.values())
    return log_likelihood + prior


def reference_svgd_step(model, weights: list[dict], x, y, step, noise_std, prior_std, create_graph=False):
    """One SVGD step with the kernel matrix written out and the kernel's gradient by autograd."""
    names = list(weights[0])
    flat = [torch.cat([w[n].reshape(-1) for n in names]) for w in weights]
    count = len(weights)
    distances = [float(((flat[i] - flat[j]) ** 2).sum().detach()) for i in range(count) for j in range(i + 1, count)]
    h = statistics.median(distances) / math.log(count + 1) if count > 1 else 1.0
    scores = []
    for w in weights:
        leaves = {n: t if t.requires_grad else t.detach().requires_grad_() for n, t in w.items()}
        value = log_posterior(model, leaves, x, y, noise_std, prior_std)
        grads = torch.autograd.grad(value, [leaves[n] for n in names], create_graph=create_graph)
        scores.append(torch.cat([g.reshape(-1) for g in grads]))
    new = []
    for i in range(count):
        phi = torch.zeros_like(flat[i])
        for j in range(count):
            source = flat[j].detach().requires_grad_()
            kernel = torch.exp(-((source - flat[i].detach()) ** 2).sum() / h)
            (kernel_grad,) = torch.autograd.grad(kernel, source)
            phi = phi + kernel.detach() * scores[j] + kernel_grad
        moved = flat[i] + step * phi / count
        sizes = [weights[0][n].numel() for n in names]
        parts = torch.split(moved, sizes)
        new.append({n: p.reshape(weights[0][n].shape) for n, p in zip(names, parts, strict=True)})
    return new


SVGD_PRIOR_2 = SVGD(prior_std=2.0)


def learner_for(particles, estimator="chaser", update=SVGD_PRIOR_2, lr=0.01, steps=1, **options):
    return MetaLearner(
        particles,
        loss=particles.likelihood,
        inner_lr=lr,
        inner_steps=steps,
        estimator=estimator,
        inner_update=update,
        estimator_options=options or None,
    )


@pytest.mark.parametrize("count", [3, 4])
@pytest.mark.parametrize("noise_std", [None, 0.5])
def test_svgd_step_equals_the_reference(count, noise_std):
    particles = Particles(small_mlp(), count, GaussianLikelihood(noise_std))
    batch = regression_batch(tasks=1)
    learner = learner_for(particles, lr=0.03)
    adapted = learner.adaptation_trajectory(batch.support_x[0], batch.support_y[0], steps=1)[-1]
    reference = reference_svgd_step(
        particles.model, particle_weights(particles), batch.support_x[0], batch.support_y[0], 0.03, noise_std, 2.0
    )
    for name, tensor in adapted.items():
        expected = torch.stack([r[name] for r in reference])
        torch.testing.assert_close(tensor, expected, rtol=1e-10, atol=1e-12)
    moved = sum(float((adapted[n] - dict(particles.named_parameters())[n]).abs().max().detach()) for n in adapted)
    assert moved > 1e-3  # the step moved the particles: the comparison is not of two unchanged copies


def test_one_particle_svgd_is_gradient_ascent_on_the_log_posterior():
    particles = Particles(small_mlp(), 1, GaussianLikelihood(0.3))
    batch = regression_batch(tasks=1)
    x, y = batch.support_x[0], batch.support_y[0]
    learner = learner_for(particles, update=SVGD(prior_std=1.5), lr=0.02)
    adapted = learner.adaptation_trajectory(x, y, steps=1)[-1]
    weights = {n: t.detach().requires_grad_() for n, t in particle_weights(particles)[0].items()}
    grads = torch.autograd.grad(log_posterior(particles.model, weights, x, y, 0.3, 1.5), list(weights.values()))
    for (name, w), g in zip(weights.items(), grads, strict=True):
        torch.testing.assert_close(adapted[name][0], w + 0.02 * g, rtol=1e-12, atol=1e-12)


def test_median_bandwidth_by_hand():
    flat = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=DTYPE)
    # squared distances of the 6 pairs: 1, 4, 25, 5, 20, 13 -> median (5 + 13) / 2 = 9
    assert float(median_bandwidth(squared_distances(flat))) == pytest.approx(9 / math.log(5), rel=1e-14)
    assert float(median_bandwidth(squared_distances(flat[:1]))) == 1.0


# -- meta-gradients against central finite differences -----------------------------------------------------------


def followers_reference(particles, weights, x, y, step, steps, noise_std, prior_std):
    for _ in range(steps):
        weights = reference_svgd_step(particles.model, weights, x, y, step, noise_std, prior_std, create_graph=True)
    return weights


def stacked_to_weights(stacked: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    count = next(iter(stacked.values())).shape[0]
    return [{n: t[m] for n, t in stacked.items()} for m in range(count)]


def central_differences(objective, stacked: dict[str, torch.Tensor], coordinates, eps=1e-3) -> list[float]:
    """Fourth-order central differences ``(-f(+2e) + 8 f(+e) - 8 f(-e) + f(-2e)) / 12 e`` at each coordinate
    (the objective's rounding noise, ~1e-10, rules out a smaller second-order step)."""

    def shifted(name: str, index: int, amount: float) -> float:
        values = {n: t.clone() for n, t in stacked.items()}
        values[name].view(-1)[index] += amount
        return float(objective(values))

    return [
        (-shifted(n, i, 2 * eps) + 8 * shifted(n, i, eps) - 8 * shifted(n, i, -eps) + shifted(n, i, -2 * eps))
        / (12 * eps)
        for n, i in coordinates
    ]


def pick_coordinates(stacked: dict[str, torch.Tensor], per_tensor: int = 2) -> list[tuple[str, int]]:
    g = torch.Generator().manual_seed(1)
    return [
        (name, int(i)) for name, t in stacked.items() for i in torch.randint(0, t.numel(), (per_tensor,), generator=g)
    ]


@pytest.mark.parametrize(("steps", "chase_noise"), [(1, False), (2, False), (1, True)])
def test_chaser_meta_gradient_matches_finite_differences(steps, chase_noise):
    """The learned noise moves with the followers and leaders; the distance includes it only with chase_noise."""
    particles = Particles(small_mlp(), 2, GaussianLikelihood())
    batch = regression_batch(tasks=1)
    task = {k: v[0] for k, v in batch.tensors().items()}
    step, prior = 0.02, 2.0
    learner = learner_for(particles, lr=step, steps=steps, leader_steps=2, chase_noise=chase_noise)
    grads, metrics = learner.meta_gradient(batch)
    stacked = {n: t.detach().clone() for n, t in particles.named_parameters()}
    every_x = torch.cat([task["support_x"], task["query_x"]])
    every_y = torch.cat([task["support_y"], task["query_y"]])
    followers = followers_reference(
        particles, stacked_to_weights(stacked), task["support_x"], task["support_y"], step, steps, None, prior
    )
    leaders = [{n: t.detach() for n, t in w.items()} for w in followers]
    for _ in range(2):
        leaders = reference_svgd_step(particles.model, leaders, every_x, every_y, step, None, prior)

    def chaser(values: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = followers_reference(
            particles, stacked_to_weights(values), task["support_x"], task["support_y"], step, steps, None, prior
        )
        chased = [n for n in moved[0] if chase_noise or n != "noise.log_std"]
        return sum(((m[n] - lead[n]) ** 2).sum() for m, lead in zip(moved, leaders, strict=True) for n in chased)

    assert float(metrics["chaser_distance"]) == pytest.approx(float(chaser(stacked)), rel=1e-10)
    coordinates = pick_coordinates(stacked)
    expected = central_differences(chaser, stacked, coordinates)
    mine = [float(grads["params"][name].reshape(-1)[index]) for name, index in coordinates]
    assert mine == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert max(abs(v) for v in expected) > 1e-4


def test_bfa_meta_gradient_matches_finite_differences():
    particles = Particles(small_mlp(), 3, GaussianLikelihood())
    batch = regression_batch(tasks=1)
    task = {k: v[0] for k, v in batch.tensors().items()}
    learner = learner_for(particles, estimator="bfa", lr=0.02)
    grads, _ = learner.meta_gradient(batch)
    stacked = {n: t.detach().clone() for n, t in particles.named_parameters()}

    def predictive_nll(values: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = followers_reference(
            particles, stacked_to_weights(values), task["support_x"], task["support_y"], 0.02, 1, None, 2.0
        )
        densities = []
        for w in moved:  # per point: log N(y; f_m(x), sigma_m^2), then log-mean-exp over particles by hand
            params = {n.removeprefix("members."): t for n, t in w.items() if n.startswith("members.")}
            mean = functional_call(particles.model, params, (task["query_x"],))
            variance = torch.exp(2 * w["noise.log_std"])
            densities.append(
                torch.exp(-((task["query_y"] - mean) ** 2) / (2 * variance)) / torch.sqrt(2 * math.pi * variance)
            )
        return -torch.log(sum(densities) / len(densities)).mean()

    coordinates = pick_coordinates(stacked)
    expected = central_differences(predictive_nll, stacked, coordinates)
    mine = [float(grads["params"][name].reshape(-1)[index]) for name, index in coordinates]
    assert mine == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_first_order_chaser_is_the_distance_gradient_at_the_followers():
    particles = Particles(small_mlp(), 2, GaussianLikelihood(0.5))
    batch = regression_batch(tasks=1)
    task = {k: v[0] for k, v in batch.tensors().items()}
    learner = learner_for(particles, lr=0.02, first_order=True)
    grads, _ = learner.meta_gradient(batch)
    followers = learner.adaptation_trajectory(task["support_x"], task["support_y"], steps=1)[-1]
    every = (torch.cat([task["support_x"], task["query_x"]]), torch.cat([task["support_y"], task["query_y"]]))
    lead = learner.inner_problem().step(followers, {}, *every, 0)  # the leaders: one more step on every example
    for name in followers:
        torch.testing.assert_close(grads["params"][name], 2 * (followers[name] - lead[name]), rtol=1e-12, atol=1e-14)


# -- the ensemble of MAMLs is M independent MAMLs -----------------------------------------------------------------


def test_ensemble_of_mamls_equals_independent_mamls():
    model = small_mlp()
    particles = Particles(model, 3, GaussianLikelihood(0.5))
    batch = regression_batch(tasks=3)
    grads, _ = learner_for(particles, estimator="unrolled", update=None, lr=0.05, steps=2).meta_gradient(batch)

    def gaussian(prediction, y):
        return ((y - prediction) ** 2 / (2 * 0.25) + math.log(0.5) + 0.5 * math.log(2 * math.pi)).mean()

    for m in range(3):
        single = small_mlp()
        with torch.no_grad():
            for name, p in single.named_parameters():
                p.copy_(particles.particle(m)[name])
        expected, _ = MetaLearner(single, loss=gaussian, inner_lr=0.05, inner_steps=2).meta_gradient(batch)
        for name, g in expected["params"].items():
            torch.testing.assert_close(grads["params"][f"members.{name}"][m], g, rtol=1e-10, atol=1e-13)


# -- Particles on models we did not write for it --------------------------------------------------------------------


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 5, batch_first=True)
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0][:, -1])


def conv_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4)
    )


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(conv_bn, (8, 1, 6, 6)), (Recurrent, (8, 7, 3))],
    ids=["conv-batchnorm", "gru"],
)
def test_particles_evaluate_every_particle_as_the_model(factory, shape):
    model = factory().to(DTYPE)
    particles = Particles(model, 3, CategoricalLikelihood())
    x = torch.randn(*shape, dtype=DTYPE)
    outputs = particles(x)["outputs"]
    assert outputs.shape[0] == 3
    for m in range(3):
        reference = factory().to(DTYPE)
        with torch.no_grad():
            for name, p in reference.named_parameters():
                p.copy_(particles.particle(m)[name])
        reference.train()  # batch statistics, as the meta-learner evaluates batch norm
        torch.testing.assert_close(outputs[m], reference(x), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(outputs[0], outputs[1])  # the particles were drawn apart


@pytest.mark.parametrize("factory", [conv_bn, Recurrent], ids=["conv-batchnorm", "gru"])
def test_svgd_classification_trains_any_model(factory):
    model = factory().to(DTYPE)
    particles = Particles(model, 2, CategoricalLikelihood())
    x_shape = (2, 8, 1, 6, 6) if factory is conv_bn else (2, 8, 7, 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*x_shape, generator=g, dtype=DTYPE)
    y = torch.randint(0, 4, (2, 8), generator=g)
    batch = TaskBatch(x, y, x, y)
    learner = learner_for(particles, lr=0.01)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    first = learner.meta_step(batch, optimizer)
    for _ in range(5):
        last = learner.meta_step(batch, optimizer)
    assert first["skipped"] == 0 and last["loss_after"] < first["loss_after"]


# -- bad input ---------------------------------------------------------------------------------------------------


class NoReset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.weight


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_particle_count_must_be_a_positive_integer(count):
    with pytest.raises(ConfigError, match="particles: must be an integer >= 1"):
        Particles(small_mlp(), count, GaussianLikelihood())


def test_particles_must_be_distinct():
    with pytest.raises(ModelError, match="cannot draw distinct particles"):
        Particles(NoReset(), 2, GaussianLikelihood())
    assert Particles(NoReset(), 1, GaussianLikelihood()).count == 1


def test_bfa_needs_a_probabilistic_loss():
    learner = MetaLearner(small_mlp(), loss=nn.functional.mse_loss, estimator="bfa")
    with pytest.raises(ConfigError, match="predictive likelihood needs a probabilistic loss"):
        learner.backward(regression_batch())


def test_svgd_refused_by_estimators_that_assume_gradient_steps():
    particles = Particles(small_mlp(), 2, GaussianLikelihood())
    with pytest.raises(ConfigError, match="assumes gradient inner steps"):
        learner_for(particles, estimator="hessian_free")


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_likelihood_and_prior_options_are_checked(value):
    with pytest.raises(ConfigError, match="noise_std: must be a number > 0"):
        GaussianLikelihood(value)
    with pytest.raises(ConfigError, match="prior_std"):
        SVGD(prior_std=value)


# -- the BMAML sinusoid family and the active-learning loop -------------------------------------------------------


def test_sinusoid_family_with_frequency_and_noise():
    from torchmaml.data import SinusoidTasks

    plain, wide = SinusoidTasks(), SinusoidTasks(phase=(0.0, 2 * math.pi), frequency=(0.5, 2.0), noise=0.01)
    g = torch.Generator().manual_seed(0)
    amplitude = torch.rand(3, generator=g) * 4.9 + 0.1  # the draws of the MAML family, written out
    phase = torch.rand(3, generator=g) * math.pi
    x = torch.rand(3, 10, 1, generator=g) * 10 - 5
    batch = plain.sample(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.support_x, x)
    torch.testing.assert_close(batch.support_y, amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1)))
    functions = wide.sample_functions(2000, torch.Generator().manual_seed(1))
    assert float(functions.frequency.min()) >= 0.5 and float(functions.frequency.max()) <= 2.0
    assert float(functions.phase.max()) > math.pi  # the wider phase range is used
    x = torch.zeros(2000, 50, 1)
    noisy = wide.observe(x, functions, torch.Generator().manual_seed(2))
    clean = wide.target(x, functions.amplitude, functions.phase, functions.frequency)
    relative = (noisy - clean) / functions.amplitude.view(-1, 1, 1)
    assert float(relative.std()) == pytest.approx(0.01, rel=0.02)


def test_active_learning_labels_the_most_uncertain_pool_point():
    from torchmaml.bayesian.active import active_learning_curve, predictive_variance

    particles = Particles(small_mlp(), 4, GaussianLikelihood(0.1))
    learner = learner_for(particles, estimator="unrolled", update=None, lr=0.05)
    batch = regression_batch(tasks=1, support=3, query=20)
    support = (batch.support_x[0], batch.support_y[0])
    pool = (batch.query_x[0][:10], batch.query_y[0][:10])
    test = (batch.query_x[0][10:], batch.query_y[0][10:])
    fast = learner.adapt(*support, steps=2)
    variance = predictive_variance(learner, fast, pool[0])
    with torch.no_grad():
        outputs = fast(pool[0])["outputs"].squeeze(-1)  # [M, 10]
    torch.testing.assert_close(variance, 0.01 + outputs.var(0, unbiased=False))  # noise + spread of the means
    curve = active_learning_curve(learner, support, pool, test, 2, 2, "variance", torch.Generator())
    first_choice = int(variance.argmax())
    refit = learner.adapt(
        torch.cat([support[0], pool[0][first_choice : first_choice + 1]]),
        torch.cat([support[1], pool[1][first_choice : first_choice + 1]]),
        steps=2,
    )
    with torch.no_grad():
        expected = (refit(test[0])["outputs"].mean(0) - test[1]).pow(2).mean()
    assert curve.shape == (3,)
    torch.testing.assert_close(curve[1], expected)


def test_a_learned_noise_starts_from_noise_init_std():
    learned = build_learner(load_config("sinusoid-bmaml", ["noise_init_std=0.1"]))
    log_std = dict(learned.named_parameters())["model.noise.log_std"]
    torch.testing.assert_close(log_std, torch.full((5,), math.log(0.1), dtype=log_std.dtype))
    fixed = build_learner(load_config("sinusoid-bmaml", ["noise_std=0.5"]))
    assert not any("noise" in name for name, _ in fixed.named_parameters())
    with pytest.raises(ConfigError, match="noise_init_std"):
        load_config("sinusoid-bmaml", ["noise_init_std=0"])
