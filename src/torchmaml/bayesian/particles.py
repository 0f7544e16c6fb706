"""``Particles``: ``M`` copies of any model, stacked, evaluated together; the meta-parameters of Bayesian MAML.

Bayesian MAML (Kim, Yoon et al. 2018) keeps ``M`` particles ``Theta = (theta_1..theta_M)`` of a task's posterior,
each a full parameter set of the user's network, and meta-learns their initial values ``Theta_0``. ``Particles``
holds ``Theta`` as ordinary ``nn.Module`` parameters with a leading particle axis (``members.<name>`` is
``[M, *shape]`` for the model's parameter ``<name>``; ``noise.log_std`` is ``[M]`` for a learned Gaussian noise) and
evaluates all particles at once:

    particles(x) = {"outputs": [model(theta_m, x) for m = 1..M] stacked, **the likelihood's per-particle values}

(``torch.func.vmap`` over the particle axis where tasks are vectorised; one particle at a time, each in the
execution context of the task, where tasks run one at a time, so that a convolutional network keeps its fast
kernels, and for layers whose batching rules vmap lacks).
Because it is a plain module, ``MetaLearner(particles, loss=particles.likelihood, ...)`` meta-learns it with any
estimator, strategy or schedule, and an inner update (``torchmaml.bayesian.SVGD``) turns its inner loop into
Bayesian inference. Particle 1 is the model's own initialisation, the others are drawn by the ``reset_parameters()``
of the model's layers (from the global random generator). Frozen parameters and buffers are shared by all
particles: they come from the model given, as constants.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import vmap

from torchmaml.bayesian.likelihood import Likelihood, ParticlePrediction
from torchmaml.context import VECTORISED, ExecutionContext
from torchmaml.errors import ConfigError, ModelError
from torchmaml.functional import FunctionalModel, Params
from torchmaml.models.layers import ContextDependent


class Particles(ContextDependent, nn.Module):
    """``count`` particles of ``model`` with the likelihood ``likelihood`` (module docstring).

    Args:
        model: any ``nn.Module`` the meta-learner accepts; left unmodified.
        count: the number ``M >= 1`` of particles.
        likelihood: ``GaussianLikelihood`` (regression) or ``CategoricalLikelihood`` (classification).
    """

    def __init__(self, model: nn.Module, count: int, likelihood: Likelihood) -> None:
        super().__init__()
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"particles: must be an integer >= 1, got {count!r}")
        if not hasattr(likelihood, "particle_parameters"):
            raise ConfigError(
                f"likelihood: must be a torchmaml.bayesian likelihood (GaussianLikelihood or CategoricalLikelihood), "
                f"got {type(likelihood).__name__}"
            )
        self.count = count
        self.likelihood = likelihood
        structure = copy.deepcopy(model)
        object.__setattr__(self, "_structure", structure)  # not a submodule: its trainable weights are overridden
        self._functional = FunctionalModel(structure)
        self._names = [name for name, p in model.named_parameters() if p.requires_grad]
        if not self._names:
            raise ModelError("model has no trainable parameters: all have requires_grad=False; unfreeze some")
        members = [model] + [_redrawn(model) for _ in range(count - 1)]
        values = [dict(member.named_parameters()) for member in members]
        stacked = {name: torch.stack([v[name].detach() for v in values]) for name in self._names}
        if count > 1 and all(torch.equal(t[1:], t[0].expand_as(t[1:])) for t in stacked.values()):
            raise ModelError(
                "cannot draw distinct particles: the model's layers define no reset_parameters(); add one to your "
                "layers, or set different weights on the Particles' members.* parameters before training"
            )
        self.members = _parameter_tree(stacked)
        like = stacked[self._names[0]]  # the likelihood's parameters take the model's dtype and device
        noise = {name: value.to(like).expand(count).clone() for name, value in likelihood.particle_parameters().items()}
        self.noise = _parameter_tree(noise)
        self.loops_over_particles = self._functional.has_fused_batch_norm or self._functional.has_recurrent

    @property
    def model(self) -> nn.Module:
        """The network one particle is (its trainable weights are each particle's ``members.*`` slices)."""
        return self._structure

    def particle(self, index: int) -> Params:
        """The weights of particle ``index`` by the model's parameter names (detached)."""
        return {name: _get(self.members, name)[index].detach() for name in self._names}

    def specialise(self, context: ExecutionContext) -> None:
        """Evaluate the particles in ``context`` (``ContextDependent``: the view ``FunctionalModel`` makes for it)."""
        self.context = context.at_step(None)

    def forward(self, *args: Any, **kwargs: Any) -> ParticlePrediction:
        stacked = {name: _get(self.members, name) for name in self._names}
        extras = {name: _get(self.noise, name) for name, _ in self.noise.named_parameters()}
        context = getattr(self, "context", VECTORISED)

        def one(params: Params) -> Any:
            return self._functional.apply_in(context, params, args, kwargs)

        if self.loops_over_particles or not context.vectorised:
            outputs = torch.stack([one({n: t[m] for n, t in stacked.items()}) for m in range(self.count)])
        else:
            outputs = vmap(one, randomness="different")(stacked)
        return {"outputs": outputs, **extras}

    def _apply(self, fn: Any, recurse: bool = True) -> Particles:  # .to(), .double(), ... reach the structure too
        super()._apply(fn, recurse)
        self._structure._apply(fn, recurse)
        return self

    def nested_modules(self) -> list[nn.Module]:
        """The modules evaluated for every particle (``FunctionalModel`` picks the task strategy from their kinds)."""
        return list(self._functional.view(VECTORISED).modules())


def _redrawn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose layers re-drew their parameters (``reset_parameters()``)."""
    member = copy.deepcopy(model)
    for module in member.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return member


def _parameter_tree(tensors: Params) -> nn.Module:
    """A tree of plain ``nn.Module`` containers holding ``tensors`` as parameters under their dotted names."""
    root = nn.Module()
    for name, value in tensors.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value))
    return root


def _get(root: nn.Module, name: str) -> torch.Tensor:
    """The tensor at dotted ``name`` under ``root`` (what ``functional_call`` substituted, when it did)."""
    node: Any = root
    for part in name.split("."):
        node = getattr(node, part)
    return node
