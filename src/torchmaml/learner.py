"""``MetaLearner``: a model, its inner-loop learning rate, and a meta-gradient estimator.

    learner = MetaLearner(model, loss=F.mse_loss, inner_lr=0.01, inner_steps=1, estimator="unrolled")
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    metrics = learner.meta_step(TaskBatch(sx, sy, qx, qy), opt)
    fast = learner.adapt(support_x, support_y, steps=10)   # a plain nn.Module; the original is untouched

One meta-step computes ``G = (1/B) sum_i G_i`` with the chosen estimator, vectorised over the tasks of the
batch, writes it into ``.grad`` of the meta-parameters and lets the outer optimiser step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchmaml.allocator import keep_freed_memory
from torchmaml.compilation import MetaGradientRunner
from torchmaml.errors import ConfigError, ModelError, first_line
from torchmaml.estimators import InnerProblem, MetaParams, Metrics, Task, get_estimator
from torchmaml.execution import map_tasks, resolve_strategy
from torchmaml.functional import FunctionalModel, Params
from torchmaml.inner import InnerLR, LossFn, adapt
from torchmaml.learning_rates import make_inner_lr
from torchmaml.tasks import TaskBatch


class MetaLearner(nn.Module):
    """Meta-learns the initial weights of ``model`` (and any learnable inner rates).

    Args:
        model: any ``nn.Module`` whose forward can be evaluated by ``torch.func.functional_call``.
        loss: ``loss(prediction, target) -> scalar`` with mean reduction, e.g. ``F.mse_loss``.
        inner_lr: the inner step size ``alpha``.
        inner_steps: the number ``K`` of inner gradient steps used in meta-training.
        estimator: the meta-gradient estimator, by name: ``"unrolled"`` (exact second order), ``"first_order"``
            (FO-MAML), ``"three_batch"``, ``"hessian_free"`` (HF-MAML), ``"implicit"`` (iMAML), ``"reptile"``;
            see ``torchmaml.estimators``.
        strategy: how tasks are batched (``"auto"``, ``"vmap"``, ``"chunked"``, ``"loop"``; see
            ``torchmaml.execution``).
        chunk_size: tasks per vectorised call for ``strategy="chunked"``.
        estimator_options: the estimator's own options, e.g. ``{"cg_iterations": 10}`` for ``"implicit"``.
        inner_lr_mode: ``"fixed"`` (MAML), ``"scalar"`` (one learned rate), ``"meta_sgd"`` (one learned rate
            per parameter element), ``"per_layer_per_step"`` (MAML++ LSLR); see ``torchmaml.learning_rates``.
        adapt_only: names (or module prefixes, e.g. ``"head"`` or ``"4"``) of the parameters the inner loop
            adapts; ``None`` adapts all. ANIL adapts only the head; the rest is shared and meta-learned.
        compile: run the meta-gradient through ``torch.compile``: ``True`` from the first call, ``False``
            never, ``"auto"`` (default) once the eager meta-gradients have taken as long as a compilation
            costs (30 s), for the vectorised strategies only (see ``torchmaml.compilation``). Compiled, the
            sinusoid MLP's meta-iteration is ~3x faster; needs a C++ compiler, and falls back to eager
            execution with a warning when compilation fails.

    Attributes that may be changed between meta-steps (the MAML++ schedules do): ``estimator`` (a
    ``TaskGradient``, e.g. ``get_estimator("first_order")``) and ``step_weights`` (multi-step loss weights,
    one per inner step, or ``None``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        estimator: str = "unrolled",
        strategy: str = "auto",
        chunk_size: int | None = None,
        estimator_options: Mapping[str, Any] | None = None,
        inner_lr_mode: str = "fixed",
        adapt_only: Sequence[str] | None = None,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss):
            raise ConfigError(f"loss must be callable as loss(prediction, target), got {type(loss).__name__}")
        if not _positive_number(inner_lr):
            raise ConfigError(f"inner_lr: must be a finite number > 0, got {inner_lr!r}")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ConfigError(f"inner_steps: must be an integer >= 0, got {inner_steps!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"chunk_size: must be >= 1, got {chunk_size}")
        if not any(True for _ in model.parameters()):
            raise ModelError("model has no parameters to meta-learn")
        keep_freed_memory()  # glibc keeps activation buffers between meta-steps (torchmaml.allocator)
        self.model = model
        self.loss = loss
        self.inner_steps = inner_steps
        self.estimator = get_estimator(estimator, estimator_options)
        self.step_weights: tuple[float, ...] | None = None
        self._functional = FunctionalModel(model)
        self.strategy = resolve_strategy(strategy, self._functional)
        self.chunk_size = chunk_size
        self._meta_gradient_runner = MetaGradientRunner(compile, self.strategy)
        self.adapted = _select_parameters(model, adapt_only)
        adapted_params = {n: p for n, p in model.named_parameters() if self.adapted is None or n in self.adapted}
        self.inner_rate = make_inner_lr(inner_lr_mode, inner_lr, adapted_params, inner_steps)

    # -- the meta-gradient ------------------------------------------------------------------------

    @property
    def compiled(self) -> bool:
        """Whether meta-gradients now run through ``torch.compile`` (``compile=True``, or ``"auto"`` once the
        eager ones have taken as long as a compilation; see ``torchmaml.compilation``)."""
        return self._meta_gradient_runner.compiled

    @property
    def functional(self) -> FunctionalModel:
        """The model as a pure function ``f(params, x)``."""
        return self._functional

    def rate_tensors(self) -> Params:
        """The current values of the learned inner rates (empty for a fixed rate), detached."""
        return {name: p.detach() for name, p in self.inner_rate.named_parameters()}

    def inner_rate_value(self) -> float:
        """The inner rate as one number: the fixed or learned scalar ``alpha``, else the mean learned rate."""
        tensors = self.rate_tensors()
        if not tensors:
            return self.inner_rate.lr
        return float(torch.cat([t.reshape(-1) for t in tensors.values()]).mean())

    def inner_problem(self, steps: int | None = None) -> InnerProblem:
        """The inner problem with ``steps`` (default: the training ``inner_steps``) and no multi-step loss."""
        return self._problem(self.inner_steps if steps is None else steps)

    def _meta_params(self) -> MetaParams:
        return {"params": dict(self._functional.parameters()), "lrs": self.rate_tensors()}

    def _problem(
        self, steps: int, step_weights: tuple[float, ...] | None = None, track_loss_before: bool = True
    ) -> InnerProblem:
        if step_weights is not None and len(step_weights) != steps:
            raise ConfigError(f"step_weights: needs one weight per inner step ({steps}), got {len(step_weights)}")
        return InnerProblem(
            model=self._functional,
            loss_fn=self.loss,
            steps=steps,
            rates=lambda lrs: [self.inner_rate.rate(lrs, s) for s in range(steps)],
            adapted=self.adapted,
            step_weights=step_weights,
            track_loss_before=track_loss_before,
        )

    def meta_gradient(self, batch: TaskBatch, loss_before: bool = False) -> tuple[MetaParams, Metrics]:
        """The estimator's meta-gradient averaged over ``batch``, and averaged metrics (tensors): ``loss_after``
        and, with ``loss_before=True``, the query loss at ``w`` (an extra forward pass the gradient does not
        need, 15-20% of a conv4 meta-step)."""
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"meta_gradient expects a TaskBatch, got {type(batch).__name__}")
        self._check_batch(batch)
        arguments = (
            self.estimator,
            self._problem(self.inner_steps, self.step_weights, loss_before),
            self._meta_params(),
            batch,
            self.strategy,
            self.chunk_size,
        )
        return self._meta_gradient_runner(*arguments)

    def meta_step(
        self, batch: TaskBatch, optimizer: torch.optim.Optimizer, loss_before: bool = False
    ) -> dict[str, float]:
        """One outer update: zero the gradients, compute the meta-gradient, ``optimizer.step()``.

        Returns plain floats: ``loss_after`` (query loss after the inner steps) and, with ``loss_before=True``,
        ``loss_before`` (query loss at ``w``; it costs an extra forward pass), both averaged over the batch,
        and ``skipped``: 1.0 if the meta-loss or the meta-gradient was not finite, in which case nothing was
        changed (divergence guard).
        """
        grads, metrics = self.meta_gradient(batch, loss_before)
        optimizer.zero_grad(set_to_none=True)
        checks = [metrics["loss_after"].isfinite()] + [g.isfinite().all() for gs in grads.values() for g in gs.values()]
        finite = bool(torch.stack(checks).all())
        if finite:
            self._write_grads(grads)
            optimizer.step()
        return {**{name: float(value) for name, value in metrics.items()}, "skipped": float(not finite)}

    def _write_grads(self, grads: MetaParams) -> None:
        named = {f"model.{k}": v for k, v in grads["params"].items()}
        named.update({f"inner_rate.{k}": v for k, v in grads["lrs"].items()})
        for name, param in self.named_parameters():
            param.grad = named[name].detach().to(param.dtype)

    # -- adaptation -------------------------------------------------------------------------------

    def _rates(self, steps: int, inner_lr: float | None) -> InnerLR:
        if inner_lr is not None:
            return [inner_lr] * steps
        return self._problem(steps).rates(self.rate_tensors())

    def adapt(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int | None = None,
        inner_lr: float | None = None,
    ) -> nn.Module:
        """Adapt to one task from its support set; return a new, plain ``nn.Module`` (a copy).

        ``support_x``/``support_y`` hold one task's examples, ``[N, ...]`` (no task axis). ``steps``
        defaults to the training ``inner_steps``, ``inner_lr`` to the learner's (fixed or learned) rate.
        The learner's own model is never modified.
        """
        steps = self.inner_steps if steps is None else steps
        adapted = self.adaptation_trajectory(support_x, support_y, steps, inner_lr)[-1]
        fast = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, param in fast.named_parameters():
                param.copy_(adapted[name])
        return fast

    def adaptation_trajectory(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int, inner_lr: float | None = None
    ) -> list[Params]:
        """``[w_0, ..., w_steps]`` on one task, first-order (nothing kept for an outer gradient)."""
        if support_x.shape[0] != support_y.shape[0]:
            raise ConfigError(f"support_x has {support_x.shape[0]} examples but support_y has {support_y.shape[0]}")
        params = self._functional.parameters()
        rates = self._rates(steps, inner_lr)
        return adapt(self._functional, params, support_x, support_y, self.loss, rates, steps, True, self.adapted)

    def query_losses(self, batch: TaskBatch, steps: int, inner_lr: float | None = None) -> torch.Tensor:
        """Query loss of every task after ``0, 1, ..., steps`` inner steps: a ``[B, steps + 1]`` tensor.

        Nothing is kept for an outer gradient. ``inner_lr`` overrides the learned/fixed rate (used to
        fine-tune baselines with a tuned step size).
        """
        return self.query_metric(batch, steps, self.loss, inner_lr)

    @torch.no_grad()
    def query_metric(
        self,
        batch: TaskBatch,
        steps: int,
        metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        inner_lr: float | None = None,
    ) -> torch.Tensor:
        """``metric(prediction, query_y)`` of every task after ``0..steps`` inner steps: ``[B, steps + 1]``."""
        self._check_batch(batch)
        params = self._functional.parameters()
        rates = self._rates(steps, inner_lr)

        def task_scores(task: Task) -> torch.Tensor:
            sx, sy, qx, qy = task["support_x"], task["support_y"], task["query_x"], task["query_y"]
            trajectory = adapt(self._functional, params, sx, sy, self.loss, rates, steps, True, self.adapted)
            scores = []
            for step, point in enumerate(trajectory):
                with self._functional.at_step(step):
                    scores.append(metric(self._functional(point, qx), qy))
            return torch.stack(scores)

        return map_tasks(task_scores, batch, self.strategy, self.chunk_size)

    # -- input checks -----------------------------------------------------------------------------

    def _check_batch(self, batch: TaskBatch) -> None:
        """One forward pass on the first support example set, so a model/loss mismatch is reported here
        with a clear message instead of deep inside a vectorised call."""
        if getattr(self, "_checked_shapes", None) == _shape_key(batch):
            return
        params = self._functional.parameters()
        device = next(iter(params.values())).device
        if batch.support_x.device != device:
            raise ModelError(f"the TaskBatch is on {batch.support_x.device} but the model is on {device}")
        try:
            with torch.no_grad():
                prediction = self._functional(params, batch.support_x[0])
        except RuntimeError as error:
            raise ModelError(
                f"the model cannot take one task's support_x of shape {tuple(batch.support_x.shape[1:])}: "
                f"{first_line(error)}"
            ) from None
        target = batch.support_y[0]
        if target.is_floating_point() and prediction.shape != target.shape:
            raise ModelError(
                f"the model's output has shape {tuple(prediction.shape)} per task but the targets have shape "
                f"{tuple(target.shape)}; make them equal (a loss would broadcast them silently)"
            )
        try:
            with torch.no_grad():
                value = self.loss(prediction, target)
        except (RuntimeError, ValueError, IndexError) as error:
            raise ModelError(
                f"the model's output {tuple(prediction.shape)} does not fit the loss with targets "
                f"{tuple(batch.support_y.shape[1:])} ({batch.support_y.dtype}): {first_line(error)}"
            ) from None
        if value.dim() != 0:
            raise ModelError(f"the loss must return a scalar (mean reduction), got shape {tuple(value.shape)}")
        self._checked_shapes = _shape_key(batch)


def _select_parameters(model: nn.Module, selectors: Sequence[str] | None) -> frozenset[str] | None:
    """The parameter names matched by ``selectors`` (exact names or module prefixes); ``None`` for all."""
    if selectors is None:
        return None
    if isinstance(selectors, str):
        selectors = [selectors]
    names = [name for name, _ in model.named_parameters()]
    chosen = frozenset(n for n in names for s in selectors if n == s or n.startswith(f"{s}."))
    if not chosen:
        raise ConfigError(f"adapt_only: {list(selectors)} matches no parameter; the model has {', '.join(names)}")
    return chosen


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _shape_key(batch: TaskBatch) -> tuple:
    return tuple((name, tuple(t.shape[1:]), t.dtype, t.device) for name, t in batch.tensors().items())
