"""The interface every meta-gradient estimator shares.

An estimator is a function of one task: given the meta-parameters (a pytree ``{"params": w, "lrs": ...}``)
and one task (a ``Task`` dictionary: ``support_x``, ``support_y``, ``query_x``, ``query_y`` and, when the
batch has them, ``hessian_x``, ``hessian_y``; no task axis), it returns its estimate ``G_i`` of the
gradient of that task's meta-loss ``L_i(adapt(w, support_i), query_i)`` with respect to every
meta-parameter, and a few scalar metrics. ``torchmaml.execution`` runs it over a whole batch of tasks
(vectorised or looped) and averages: ``G = (1/B) sum_i G_i``; the strategy puts the execution context it
runs the task in (``torchmaml.context``) into the task's ``InnerProblem``, which evaluates the model in it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from torchmaml.context import VECTORISED, ExecutionContext
from torchmaml.functional import FunctionalModel, Params
from torchmaml.inner import InnerLR, InnerUpdate, LossFn, inner_step, inner_trajectory, step_lr

if TYPE_CHECKING:
    from torchmaml.learner import MetaLearner
    from torchmaml.tasks import TaskBatch

MetaParams = dict[str, Params]
Task = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InnerProblem:
    """What the inner loop needs: the model as a function, the loss, the number of steps, the rule that
    turns the learned-rate tensors (``meta["lrs"]``) into the per-step inner learning rates, the names of
    the parameters the inner loop adapts (``None``: all; ANIL: the head), and the multi-step loss weights
    ``v_1..v_K`` (``None``: only the last step's query loss counts). ``track_loss_before``: also report the
    query loss at ``w`` (metric ``loss_before``), one extra forward pass over the query set that the
    meta-gradient does not need. ``context``: the execution context the model is evaluated in (set by the
    execution strategy, :meth:`in_context`; the default is correct anywhere). ``update``: the direction of the
    inner steps (``torchmaml.inner.InnerUpdate``, e.g. SVGD for a particle ensemble; ``None``: the gradient)."""

    model: FunctionalModel
    loss_fn: LossFn
    steps: int
    rates: Callable[[Params], InnerLR]
    adapted: frozenset[str] | None = None
    step_weights: tuple[float, ...] | None = None
    track_loss_before: bool = True
    context: ExecutionContext = VECTORISED
    update: InnerUpdate | None = None

    def in_context(self, context: ExecutionContext) -> InnerProblem:
        """This problem with the model evaluated in ``context``."""
        return self if context == self.context else dataclasses.replace(self, context=context)

    def trajectory(
        self, meta: MetaParams, x: torch.Tensor, y: torch.Tensor, *, first_order: bool = False
    ) -> list[Params]:
        """The inner trajectory ``[w_0, ..., w_K]`` from ``meta["params"]`` on ``(x, y)`` (inner gradients as the
        context's ``differentiation`` says)."""
        return inner_trajectory(
            self.model,
            meta["params"],
            x,
            y,
            self.loss_fn,
            self.rates(meta["lrs"]),
            self.steps,
            first_order=first_order,
            adapted=self.adapted,
            context=self.context,
            update=self.update,
        )

    def step(self, params: Params, lrs: Params, x: torch.Tensor, y: torch.Tensor, step: int) -> Params:
        """Inner step ``step`` (0-based) from ``params``, at the rate the learned-rate tensors ``lrs`` give."""
        rate = step_lr(self.rates(lrs), step)
        return inner_step(
            self.model,
            params,
            x,
            y,
            self.loss_fn,
            rate,
            step,
            adapted=self.adapted,
            context=self.context,
            update=self.update,
        )

    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """``f(w; (x, y))``, the task loss of the model at ``params`` (evaluated at inner step ``step``: the
        trajectory index of ``params``, for per-step layers; ``None`` is the final step)."""
        return self.loss_fn(self.model(params, x, self.context.at_step(step)), y)


class Estimator:
    """What an estimator can do, declared on its class and queried by the configuration and the learner
    (so a new estimator states its abilities here instead of being named in validators).

    Attributes:
        differentiates_inner_loop: its gradient flows through the inner steps' rates, so learned inner rates
            (Meta-SGD, MAML++ LSLR, AlphaMAML) receive a gradient.
        supports_step_weights: it can weight the query losses of every inner step (MAML++ multi-step loss).
        supports_per_step_layers: it evaluates the model at each inner step's index, as layers with per-step
            weights need (MAML++ per-step batch norm).
        theory_step_constant: the published constant ``c`` of the theory-guided outer step size
            ``beta = c / (4 L + 2 rho alpha E||grad f||)`` for this estimator (Fallah et al. 2019), or ``None``.
        hessian_set: whether it takes the Hessian on an independent set ``D_h`` (the batch's
            ``hessian_x``/``hessian_y``): ``"unused"``, ``"optional"`` (``D_in`` when absent) or ``"required"``.
        supports_inner_update: its inner steps may take another direction than the gradient
            (``InnerProblem.update``: SVGD); estimators whose formula assumes gradient steps declare ``False``.
        own_adaptation: the name of the adaptation it trains the initialisation for, when that is not plain
            gradient steps at the inner rates (iMAML: ``"proximal"``); :meth:`adapt` performs it, and
            ``torchmaml evaluate`` scores it beside the gradient steps. ``None``: gradient steps.
        auto_compile_after: the eager meta-gradients ``compile = "auto"`` runs before it compiles this estimator,
            where its eager call is costlier than the default count assumes (``torchmaml.compilation``); ``None``:
            the default count.
    """

    differentiates_inner_loop: ClassVar[bool] = False
    supports_step_weights: ClassVar[bool] = False
    supports_per_step_layers: ClassVar[bool] = False
    theory_step_constant: ClassVar[float | None] = None
    hessian_set: ClassVar[str] = "unused"
    supports_inner_update: ClassVar[bool] = False
    own_adaptation: ClassVar[str | None] = None
    auto_compile_after: ClassVar[int | None] = None

    def adapt(self, problem: InnerProblem, meta: MetaParams, task: Task, steps: int) -> Params:
        """The task's parameters after ``steps`` steps of the estimator's own adaptation (``own_adaptation``) from
        ``meta["params"]`` on the support set. Estimators that adapt with gradient steps have none."""
        raise NotImplementedError(f"{type(self).__name__} adapts with plain gradient steps")

    def adaptations(self, problem: InnerProblem, meta: MetaParams, task: Task, counts: Sequence[int]) -> list[Params]:
        """The task's parameters after each step count of ``counts`` of the estimator's own adaptation: ``adapt``
        once per count. An estimator whose adaptation is iterative overrides it to adapt once."""
        return [self.adapt(dataclasses.replace(problem, steps=count), meta, task, count) for count in counts]

    def prepare(self, learner: MetaLearner, batch: TaskBatch) -> None:
        """Called by ``MetaLearner.backward`` before the meta-gradient of ``batch``: an estimator that tracks
        something along the run (HF-MAML's estimated ``rho``) updates it here. Nothing by default."""

    def state_dict(self) -> dict[str, Any]:
        """What the estimator tracks along a run (kept in checkpoints, so a resume continues it). None by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s value."""

    def diagnose(self, metrics: Mapping[str, float]) -> str | None:
        """A one-line warning about this iteration's batch-averaged ``metrics`` (e.g. an inner solve that did
        not converge), or ``None``; ``SolverWatch`` decides when to show it."""
        return None


class SolverWatch:
    """Shows an estimator's ``diagnose`` warning once ``patience`` meta-steps in a row were flagged (a poor
    solve on one batch is noise; one that persists is a setting to change), then again only after a meta-step
    that was not flagged."""

    def __init__(self, patience: int = 10) -> None:
        self.patience, self.streak = patience, 0

    def observe(self, warning: str | None) -> None:
        self.streak = self.streak + 1 if warning is not None else 0
        if self.streak == self.patience:
            warnings.warn(f"{warning} ({self.patience} meta-steps in a row)", RuntimeWarning, stacklevel=3)


class TaskGradient(Protocol):
    """``(problem, meta, task) -> (G_i, metrics_i)`` for a single task."""

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]: ...
