"""``MetaLearner``: a model, its inner-loop learning rate, and a meta-gradient estimator.

    learner = MetaLearner(model, loss=F.mse_loss, inner_lr=0.01, inner_steps=1, estimator="unrolled")
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    opt.zero_grad()
    metrics = learner.backward(TaskBatch(sx, sy, qx, qy))  # G into .grad, like loss.backward()
    opt.step()                                             # or learner.meta_step(batch, opt) in one call
    fast = learner.adapt(support_x, support_y, steps=10)   # a plain nn.Module copy; the original is untouched

``backward`` computes ``G = (1/B) sum_i G_i`` with the chosen estimator, vectorised over the tasks of the
batch, and adds it to ``.grad`` of the meta-parameters, so clipping, gradient scaling, accumulation over
several batches and data-parallel wrappers work as with any loss. For the "adapt, then backpropagate the query
loss" habit, ``adapt_differentiable`` returns fast weights whose query loss backpropagates to the
meta-parameters.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from torchmaml.compilation import MetaGradientRunner
from torchmaml.context import ONE_TASK_AT_A_TIME, VECTORISED, ExecutionContext
from torchmaml.distributed import ProcessGroup, task_mean
from torchmaml.errors import ConfigError, ModelError, first_line
from torchmaml.estimators import InnerProblem, MetaParams, Metrics, SolverWatch, Task, estimators_with, get_estimator
from torchmaml.execution import map_tasks_in_context, resolve_strategy
from torchmaml.functional import BATCH_NORM_TYPES, FunctionalModel, Params, model_arguments
from torchmaml.inner import InnerLR, InnerUpdate, LossFn, inner_trajectory
from torchmaml.learning_rates import make_inner_lr
from torchmaml.models.conv4 import MetaBatchNorm2d
from torchmaml.tasks import TaskBatch


class MetaLearner(nn.Module):
    """Meta-learns the initial weights of ``model`` (and any learnable inner rates).

    Args:
        model: any ``nn.Module`` whose forward can be evaluated by ``torch.func.functional_call``: MLPs, CNNs
            with batch/group/layer norm, RNN/GRU/LSTM, transformers, dropout, embeddings, several inputs (a
            ``TaskBatch`` field that is a tuple or dict) and tuple/dict outputs (the loss receives them). Its
            trainable parameters (``requires_grad=True``) are meta-learned; frozen ones are constants. Batch
            norm always normalises with the current batch's statistics while meta-learning (see
            ``torchmaml.functional``).
        loss: ``loss(prediction, target) -> scalar tensor`` with mean reduction, e.g. ``F.mse_loss``.
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
            adapts; ``None`` adapts all trainable ones. ANIL adapts only the head; the rest is shared and
            meta-learned.
        compile: run the meta-gradient through ``torch.compile``: ``True`` from the first call, ``False``
            never, ``"auto"`` (default) from a call count fixed in advance (about one compilation's worth of
            eager calls), for the vectorised strategies only (see ``torchmaml.compilation``). Compilation makes
            small models' meta-iterations several times faster; it needs a C++ compiler, and falls back to
            eager execution with a warning when it fails.
        process_group: a ``torch.distributed`` process group (e.g. ``dist.group.WORLD``) over which
            :meth:`backward` averages: each rank passes its own tasks (``torchmaml.distributed.shard``) and every
            rank gets the meta-gradient and metrics of all of them, weighted by task counts
            (``torchmaml.distributed``). ``None`` (default): this process's batch only.
        inner_update: the direction of the inner steps, ``w - alpha * update(w, grad f, N)``
            (``torchmaml.inner.InnerUpdate``): ``torchmaml.bayesian.SVGD`` adapts a ``Particles`` ensemble by Stein
            variational gradient descent (Bayesian MAML). ``None`` (default): gradient descent. Used in training,
            :meth:`adapt` and the evaluation alike.

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
        process_group: ProcessGroup | None = None,
        inner_update: InnerUpdate | None = None,
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
        if not any(p.requires_grad for p in model.parameters()):
            raise ModelError("model has no trainable parameters: all have requires_grad=False; unfreeze some")
        self.model = model
        self.loss = loss
        self.inner_steps = inner_steps
        self.estimator = get_estimator(estimator, estimator_options)
        self._solver_watch = SolverWatch()
        self.step_weights: tuple[float, ...] | None = None
        self._functional = FunctionalModel(model)
        self.strategy = resolve_strategy(strategy, self._functional)
        self.chunk_size = chunk_size
        self._meta_gradient_runner = MetaGradientRunner(
            compile, self.strategy, auto_after=getattr(self.estimator, "auto_compile_after", None)
        )
        self.adapted = _select_parameters(model, adapt_only)
        trainable = self._functional.parameters()
        adapted_params = {n: p for n, p in trainable.items() if self.adapted is None or n in self.adapted}
        self.inner_rate = make_inner_lr(inner_lr_mode, inner_lr, adapted_params, inner_steps)
        self.process_group = process_group
        self.inner_update = inner_update
        if inner_update is not None and not getattr(self.estimator, "supports_inner_update", True):
            raise ConfigError(
                f"estimator {estimator!r} assumes gradient inner steps; an inner_update (SVGD) needs one of "
                f"{', '.join(estimators_with('supports_inner_update'))}"
            )

    # -- the meta-gradient ------------------------------------------------------------------------

    @property
    def compiled(self) -> bool:
        """Whether meta-gradients now run through ``torch.compile`` (``compile=True``, or ``"auto"`` once the
        eager calls have reached the count fixed in advance; see ``torchmaml.compilation``)."""
        return self._meta_gradient_runner.compiled

    @property
    def meta_gradient_calls(self) -> int:
        """Meta-gradients computed so far; ``compile="auto"`` switches at a call count fixed in advance, so a
        trainer saves this in its checkpoints and sets it back on resume (``torchmaml.compilation``)."""
        return self._meta_gradient_runner.calls

    @meta_gradient_calls.setter
    def meta_gradient_calls(self, calls: int) -> None:
        self._meta_gradient_runner.calls = calls

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
            update=self.inner_update,
        )

    def meta_gradient(self, batch: TaskBatch, loss_before: bool = False) -> tuple[MetaParams, Metrics]:
        """The estimator's meta-gradient averaged over ``batch``, and averaged metrics (tensors): ``loss_after``
        and, with ``loss_before=True``, the query loss at ``w`` (an extra forward pass over the query set,
        which the gradient does not need)."""
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

    def backward(
        self, batch: TaskBatch, *, loss_before: bool = False, grad_scaler: torch.amp.GradScaler | None = None
    ) -> dict[str, float]:
        """Add the meta-gradient of ``batch`` to ``.grad`` of the meta-parameters, like ``loss.backward()``.

        ``.grad`` accumulates (call ``optimizer.zero_grad()`` first, or not, to accumulate over several batches);
        frozen parameters get none. With a ``torch.amp.GradScaler`` what is added is multiplied by its scale, as
        ``scaler.scale(loss).backward()`` would; ``scaler.step(optimizer)`` then unscales it and skips steps with
        non-finite gradients, and ``scaler.update()`` adjusts the scale.

        Returns plain floats: ``loss_after`` (query loss after the inner steps, averaged over the batch), with
        ``loss_before=True`` also ``loss_before`` (the query loss at ``w``; an extra forward pass), and
        ``finite``: 0.0 if the meta-loss or the meta-gradient was not finite (it is added all the same, as
        ``loss.backward()`` would). With a ``process_group``, all of these are over every rank's tasks.
        """
        prepare = getattr(self.estimator, "prepare", None)  # a user's TaskGradient may have none
        if prepare is not None:
            prepare(self, batch)
        grads, metrics = self.meta_gradient(batch, loss_before)
        if self.process_group is not None:
            grads, metrics = task_mean((grads, metrics), batch.num_tasks, self.process_group)
        finite = _all_finite(grads, metrics["loss_after"])
        scale = None if grad_scaler is None else grad_scaler.scale(torch.ones((), device=batch.device))
        self._accumulate_grads(grads, scale)
        floats = {name: float(value) for name, value in metrics.items()}
        diagnose = getattr(self.estimator, "diagnose", None)  # a user's TaskGradient may have none
        self._solver_watch.observe(diagnose(floats) if diagnose is not None else None)
        return {**floats, "finite": float(finite)}

    def meta_step(
        self, batch: TaskBatch, optimizer: torch.optim.Optimizer, loss_before: bool = False
    ) -> dict[str, float]:
        """One outer update: ``optimizer.zero_grad()``, :meth:`backward`, ``optimizer.step()``.

        Returns plain floats: ``loss_after`` and, with ``loss_before=True``, ``loss_before`` (as
        :meth:`backward`), and ``skipped``: 1.0 if the meta-loss or the meta-gradient was not finite, in which
        case nothing was changed (divergence guard).
        """
        optimizer.zero_grad(set_to_none=True)
        metrics = self.backward(batch, loss_before=loss_before)
        finite = metrics.pop("finite") == 1.0
        if finite:
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
        return {**metrics, "skipped": float(not finite)}

    def _accumulate_grads(self, grads: MetaParams, scale: torch.Tensor | None = None) -> None:
        named = {f"model.{k}": v for k, v in grads["params"].items()}
        named.update({f"inner_rate.{k}": v for k, v in grads["lrs"].items()})
        for name, param in self.named_parameters():
            if name not in named:
                continue
            value = named[name].detach() if scale is None else named[name].detach() * scale
            value = value.to(param.dtype)
            param.grad = value if param.grad is None else param.grad + value

    # -- adaptation -------------------------------------------------------------------------------

    def _rates(self, steps: int, inner_lr: float | None) -> InnerLR:
        if inner_lr is not None:
            return [inner_lr] * steps
        return self._problem(steps).rates(self.rate_tensors())

    def adapt(
        self,
        support_x: Any,
        support_y: Any,
        steps: int | None = None,
        inner_lr: float | None = None,
        adaptation: str | None = None,
    ) -> nn.Module:
        """Adapt to one task from its support set; return a detached, deployable copy of the model.

        ``support_x``/``support_y`` hold one task's examples, ``[N, ...]`` (no task axis). The learner's own
        model is never modified. ``adaptation`` is how:

        - ``"gradient"``: ``steps`` plain gradient steps (default: the training ``inner_steps``) at ``inner_lr``
          (default: the learner's fixed or learned rate);
        - ``"own"``: the estimator's own adaptation (``Estimator.own_adaptation``; iMAML: the proximal solve),
          with ``steps`` solver steps (default: the training solve's);
        - ``None`` (default): ``"own"`` when the estimator has one, since the initialisation was trained for
          it (iMAML's may diverge under plain gradient steps), else ``"gradient"``.

        The copy is a plain ``nn.Module`` for prediction: its parameters do not require grad, so no loss on it
        can backpropagate to the meta-parameters (a ``.backward()`` through it raises instead of silently
        giving no meta-gradient). For fast weights that do backpropagate, use :meth:`adapt_differentiable`.
        Batch-norm layers get the support set's statistics at the adapted weights as running statistics:
        in ``eval()`` mode the copy predicts each example on its own, normalised like the support set; in
        ``train()`` mode it normalises with the statistics of the batch it is given (MAML's transductive way).
        """
        own = getattr(self.estimator, "own_adaptation", None)
        if adaptation not in (None, "own", "gradient"):
            raise ConfigError(f"adaptation: must be 'own', 'gradient' or None, got {adaptation!r}")
        if adaptation == "own" and own is None:
            raise ConfigError(f"estimator {type(self.estimator).__name__} adapts with plain gradient steps")
        if own is not None and adaptation != "gradient":
            if inner_lr is not None:
                raise ConfigError(f"inner_lr: sets gradient steps, not the {own} adaptation; add adaptation='gradient'")
            adapted = self._own_adaptation(support_x, support_y, steps)
        else:
            adapted = self.adaptation_trajectory(support_x, support_y, self._check_steps(steps), inner_lr)[-1]
        fast = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, param in fast.named_parameters():
                if name in adapted:
                    param.copy_(adapted[name])
        fast.requires_grad_(False)
        set_support_statistics(fast, support_x)
        return fast

    @torch.no_grad()
    def _own_adaptation(self, support_x: Any, support_y: Any, steps: int | None) -> Params:
        """The estimator's own adaptation of one task (``steps``: its solver steps; ``None``: the training
        solve's)."""
        self._check_support(support_x, support_y)
        meta = {"params": self._functional.parameters(), "lrs": self.rate_tensors()}
        task = {"support_x": support_x, "support_y": support_y}
        problem = self._problem(self.inner_steps).in_context(ONE_TASK_AT_A_TIME)
        if steps is None:
            return self.estimator.solve(problem, meta, task)[0]
        return self.estimator.adapt(problem, meta, task, self._check_steps(steps))

    def adapt_differentiable(
        self, support_x: Any, support_y: Any, steps: int | None = None, *, first_order: bool = False
    ) -> AdaptedModel:
        """Fast weights for one task whose losses backpropagate to the meta-parameters (the learn2learn idiom).

            fast = learner.adapt_differentiable(support_x, support_y)
            loss(fast(query_x), query_y).backward()     # adds this task's meta-gradient to .grad

        The inner steps are taken with ``create_graph=True`` (``first_order=True`` drops the second-order
        terms, FO-MAML), so the gradient reaching ``.grad`` of the model's parameters (and of learned inner
        rates) equals :meth:`meta_gradient`'s exact second-order one for that task. The returned module
        evaluates the model at the adapted weights; it holds the graph of the inner loop until it is freed.
        """
        steps = self._check_steps(steps)
        params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        lrs = dict(self.inner_rate.named_parameters())
        with torch.enable_grad():
            rates = self._problem(steps).rates(lrs)
            autograd = ExecutionContext(differentiation="autograd")
            trajectory = self._trajectory(params, support_x, support_y, rates, steps, first_order, autograd)
        return AdaptedModel(self._functional, trajectory[-1])

    def _check_steps(self, steps: int | None) -> int:
        steps = self.inner_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"steps: must be an integer >= 0, got {steps!r}")
        return steps

    def adaptation_trajectory(
        self, support_x: Any, support_y: Any, steps: int, inner_lr: float | None = None
    ) -> list[Params]:
        """``[w_0, ..., w_steps]`` on one task, first-order (nothing kept for an outer gradient)."""
        steps = self._check_steps(steps)
        if inner_lr is not None and not _positive_number(inner_lr):
            raise ConfigError(f"inner_lr: must be a finite number > 0, got {inner_lr!r}")
        self._check_support(support_x, support_y)
        params = self._functional.parameters()
        rates = self._rates(steps, inner_lr)
        return self._trajectory(params, support_x, support_y, rates, steps, first_order=True)

    @staticmethod
    def _check_support(support_x: Any, support_y: Any) -> None:
        examples_x, examples_y = (tree_leaves(t)[0].shape[0] for t in (support_x, support_y))
        if examples_x != examples_y:
            raise ConfigError(f"support_x has {examples_x} examples but support_y has {examples_y}")

    def _trajectory(
        self,
        params: Params,
        x: Any,
        y: Any,
        rates: InnerLR,
        steps: int,
        first_order: bool,
        context: ExecutionContext = VECTORISED,
    ) -> list[Params]:
        """The model's inner trajectory from ``params`` on one task's ``(x, y)`` (``inner.inner_trajectory``)."""
        return inner_trajectory(
            self._functional,
            params,
            x,
            y,
            self.loss,
            rates,
            steps,
            first_order=first_order,
            adapted=self.adapted,
            context=context,
            update=self.inner_update,
        )

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

        def task_scores(task: Task, context: ExecutionContext) -> torch.Tensor:
            sx, sy, qx, qy = task["support_x"], task["support_y"], task["query_x"], task["query_y"]
            trajectory = self._trajectory(params, sx, sy, rates, steps, first_order=True, context=context)
            scores = [metric(self._functional(point, qx, context.at_step(s)), qy) for s, point in enumerate(trajectory)]
            return torch.stack(scores)

        return map_tasks_in_context(task_scores, batch, self.strategy, self.chunk_size)

    def own_adaptation_metric(
        self,
        batch: TaskBatch,
        steps: Sequence[int],
        metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``metric(prediction, query_y)`` of every task after each step count of ``steps`` of the estimator's own
        adaptation (``Estimator.own_adaptation``, e.g. iMAML's proximal solve, solved once up to ``max(steps)``):
        ``[B, len(steps)]``."""
        if getattr(self.estimator, "own_adaptation", None) is None:  # a user's TaskGradient may have none
            raise ConfigError(f"estimator {type(self.estimator).__name__} adapts with plain gradient steps")
        self._check_batch(batch)
        meta = {"params": self._functional.parameters(), "lrs": self.rate_tensors()}

        def task_scores(task: Task, context: ExecutionContext) -> torch.Tensor:
            problem = self._problem(max(steps)).in_context(context)
            scores = []
            for adapted in self.estimator.adaptations(problem, meta, task, steps):
                prediction = self._functional(adapted, task["query_x"], context.at_step(None))
                scores.append(metric(prediction, task["query_y"]))
            return torch.stack(scores)

        with torch.no_grad():
            return map_tasks_in_context(task_scores, batch, self.strategy, self.chunk_size)

    # -- input checks -----------------------------------------------------------------------------

    def _check_batch(self, batch: TaskBatch) -> None:
        """One forward pass on the first support example set, so a model/loss mismatch is reported here
        with a clear message instead of deep inside a vectorised call; class labels are range-checked on every
        batch."""
        if getattr(self, "_checked_shapes", None) == _shape_key(batch):
            self._check_labels(batch)
            return
        params = self._functional.parameters()
        device = next(iter(params.values())).device
        if batch.device != device:
            raise ModelError(f"the TaskBatch is on {batch.device} but the model is on {device}")
        first = tree_map(lambda t: t[0], batch.tensors())
        try:  # the generators are forked so that the check draws nothing the meta-gradient would (dropout)
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type != "cpu" else []):
                prediction = self._functional(params, first["support_x"])
                updated = self._functional.updated_buffers(params, first["support_x"])
        except RuntimeError as error:
            raise ModelError(
                f"the model cannot take one task's support_x of shape {_shapes(first['support_x'])}: "
                f"{first_line(error)}"
            ) from None
        target = first["support_y"]
        if (
            isinstance(prediction, torch.Tensor)
            and isinstance(target, torch.Tensor)
            and target.is_floating_point()
            and prediction.shape != target.shape
        ):
            raise ModelError(
                f"the model's output has shape {tuple(prediction.shape)} per task but the targets have shape "
                f"{tuple(target.shape)}; make them equal (a loss would broadcast them silently)"
            )
        try:
            with torch.no_grad():
                value = self.loss(prediction, target)
        except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as error:
            raise ModelError(
                f"the model's output {_shapes(prediction)} does not fit the loss with targets "
                f"{_shapes(target)}: {first_line(error)}"
            ) from None
        if not isinstance(value, torch.Tensor):
            raise ModelError(
                f"the loss must return a scalar tensor, got {type(value).__name__}; compute it with torch "
                "operations on the prediction (a Python number carries no gradient)"
            )
        if value.dim() != 0:
            raise ModelError(f"the loss must return a scalar (mean reduction), got shape {tuple(value.shape)}")
        if updated:
            warnings.warn(
                f"the model's forward updates the buffer(s) {', '.join(updated)} in place; while meta-learning every "
                "forward pass gets fresh copies of the buffers, so these updates are discarded (make them "
                "parameters, or update them outside the meta-learner)",
                stacklevel=3,
            )
        self._classes = _class_count(prediction, target)
        self._checked_shapes = _shape_key(batch)
        self._check_labels(batch)

    def _check_labels(self, batch: TaskBatch) -> None:
        """Integer class labels must lie in ``[0, classes)`` where the model outputs ``[N, classes]`` logits."""
        classes = getattr(self, "_classes", None)
        if classes is None:
            return
        fields = [name for name in ("support_y", "query_y", "hessian_y") if getattr(batch, name) is not None]
        ranges = torch.stack([torch.stack([getattr(batch, n).min(), getattr(batch, n).max()]) for n in fields])
        for name, (low, high) in zip(fields, ranges.tolist(), strict=True):  # one device sync for all of them
            if low < 0 or high >= classes:
                raise ModelError(
                    f"TaskBatch.{name} holds class labels in [{low}, {high}] but the model outputs {classes} "
                    f"classes; labels must lie in [0, {classes - 1}]"
                )


class AdaptedModel(nn.Module):
    """The model at fast weights that carry the inner loop's graph (:meth:`MetaLearner.adapt_differentiable`).

    ``fast(x)`` is ``model(x)`` at the adapted weights; a loss on it backpropagates through the inner steps to
    the meta-parameters. ``params`` holds the adapted weights by name.
    """

    def __init__(self, functional: FunctionalModel, params: Params) -> None:
        super().__init__()
        self._functional = functional
        self.params = params

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._functional.apply(self.params, *args, **kwargs)


def set_support_statistics(model: nn.Module, support_x: Any) -> None:
    """Give every batch-norm layer of ``model`` the statistics of ``support_x`` as its running statistics.

    One forward pass over the support set in which each batch-norm layer normalises with its batch's statistics
    (other layers, e.g. dropout, in eval mode), recording per channel the mean and the biased variance of its
    input: exactly what the layer computed in training. In ``eval()`` mode the layer then normalises any input
    as it normalised the support set; a ``torch.nn`` batch norm gets ``momentum=0`` so that forward passes in
    ``train()`` mode leave these statistics as they are. ``model``'s train/eval flags are left as they were.
    """
    layers = [m for m in model.modules() if isinstance(m, (*BATCH_NORM_TYPES, MetaBatchNorm2d))]
    if not layers:
        return
    statistics: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(layer: nn.Module, inputs: tuple, _output: Any) -> torch.Tensor | None:
        x = inputs[0]
        axes = [axis for axis in range(x.dim()) if axis != 1]
        mean, var = x.mean(dim=axes), x.var(dim=axes, unbiased=False)
        statistics[layer] = (mean, var)
        if isinstance(layer, BATCH_NORM_TYPES):  # in eval mode it would use its running statistics
            return F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)
        return None

    modes = {m: m.training for m in model.modules()}
    hooks = [layer.register_forward_hook(record) for layer in layers]
    try:
        model.eval()
        with torch.no_grad():
            args, kwargs = model_arguments(support_x)
            model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    for layer, (mean, var) in statistics.items():
        layer.running_mean = mean
        layer.running_var = var
        if isinstance(layer, BATCH_NORM_TYPES):  # kept as they are by forward passes in train mode too
            layer.track_running_stats, layer.momentum = True, 0.0


def _select_parameters(model: nn.Module, selectors: Sequence[str] | None) -> frozenset[str] | None:
    """The trainable parameter names matched by ``selectors`` (exact names or module prefixes; all trainable ones
    for ``None``); ``None`` when that is every parameter of the model."""
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if selectors is None:
        return None if len(trainable) == sum(1 for _ in model.parameters()) else frozenset(trainable)
    if isinstance(selectors, str):
        selectors = [selectors]
    chosen = frozenset(n for n in trainable for s in selectors if n == s or n.startswith(f"{s}."))
    if not chosen:
        raise ConfigError(
            f"adapt_only: {list(selectors)} matches no parameter; the model has {', '.join(trainable)}"
            + ("" if len(trainable) == sum(1 for _ in model.parameters()) else " (trainable ones)")
        )
    return chosen


def _all_finite(grads: MetaParams, loss: torch.Tensor) -> bool:
    checks = [loss.isfinite()] + [g.isfinite().all() for gs in grads.values() for g in gs.values()]
    return bool(torch.stack(checks).all())


def _class_count(prediction: Any, target: Any) -> int | None:
    """The number of classes when ``prediction`` is ``[N, C]`` logits for ``[N]`` integer labels, else ``None``."""
    if not (isinstance(prediction, torch.Tensor) and isinstance(target, torch.Tensor)):
        return None
    if prediction.dim() == 2 and target.dim() == 1 and not target.is_floating_point() and target.dtype != torch.bool:
        return prediction.shape[1]
    return None


def _shapes(tree: Any) -> str:
    shapes = [tuple(leaf.shape) for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _shape_key(batch: TaskBatch) -> tuple:
    fields = batch.tensors().items()
    return tuple((name, tuple(t.shape[1:]), t.dtype, t.device) for name, tree in fields for t in tree_leaves(tree))
