"""Reptile: move the initialisation towards the weights that plain SGD reaches on each task.

Nichol, Achiam, Schulman (2018), "On First-Order Meta-Learning Algorithms" (arXiv:1803.02999). For task
``i`` take ``k = problem.steps`` SGD steps on the task's data ``D_i`` from ``phi_0 = w``, without a graph,

    phi_{s+1} = phi_s - alpha_s grad f_i(phi_s; D_i),

and return the "gradient"

    G_i = w - phi_k.

It is not the gradient of any meta-loss, but an outer SGD step with rate ``epsilon`` on the batch mean is
exactly Reptile's batched update ``w <- w + epsilon (1/B) sum_i (phi_i - w)``. The paper's few-shot
experiments use ``epsilon = 1`` linearly annealed to 0 over training (its Appendix A); it also notes that
``w - phi`` can be treated as a gradient and given to an adaptive optimiser such as Adam ("Reptile with
Adam"), which is what ``MetaLearner`` with ``torch.optim.Adam`` does. The paper's inner loop is Adam
(``beta1 = 0``) on minibatches; here it is SGD with the problem's inner rate on the whole of ``D_i`` (full
batch) at every step. Only the current ``phi_s`` matters, so memory does not depend on ``k``.

``D_i`` is the support and query sets together (``use_query=True``, the default: the paper trains on all of
a task's examples), or the support set only (``use_query=False``). ``loss_after`` is the query loss at
``phi_k``, which with ``use_query=True`` has been trained on that query set. Inner rates get a zero
gradient and MAML++'s multi-step loss is refused. When the inner loop adapts only some parameters (ANIL),
the others get ``G_i = 0``.

Usage::

    learner = MetaLearner(model, F.cross_entropy, inner_lr=0.1, inner_steps=5, estimator="reptile")
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)    # epsilon; torch.optim.Adam: "Reptile with Adam"

or on the command line ``--set estimator=reptile --set 'estimator_options={use_query=false}'``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_map

from torchmaml.errors import ConfigError
from torchmaml.estimators.base import Estimator, InnerProblem, MetaParams, Metrics, Task


@dataclass(frozen=True)
class Reptile(Estimator):
    """The Reptile direction ``w - phi_k`` of one task (see the module docstring).

    Args:
        use_query: train the inner steps on the support and query sets together (``True``) or on the
            support set only (``False``).
    """

    use_query: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.use_query, bool):
            raise ConfigError(f"estimator_options: use_query must be true or false, got {self.use_query!r}")

    def __call__(self, problem: InnerProblem, meta: MetaParams, task: Task) -> tuple[MetaParams, Metrics]:
        if problem.step_weights:
            raise ConfigError("estimator 'reptile' has no multi-step loss; leave step_weights unset")
        x, y = task["support_x"], task["support_y"]
        if self.use_query:
            x, y = (tree_map(_concatenated, ours, task[f"query_{side}"]) for side, ours in (("x", x), ("y", y)))
        start = {name: p.detach() for name, p in meta["params"].items()}
        adapted = problem.trajectory({"params": start, "lrs": meta["lrs"]}, x, y, first_order=True)[-1]
        with torch.no_grad():
            metrics = {"loss_after": problem.loss(adapted, task["query_x"], task["query_y"])}
            if problem.track_loss_before:
                metrics["loss_before"] = problem.loss(start, task["query_x"], task["query_y"])
        grads = {name: w - adapted[name] for name, w in start.items()}
        lr_grads = {name: torch.zeros_like(t) for name, t in meta["lrs"].items()}
        return {"params": grads, "lrs": lr_grads}, metrics


def _concatenated(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    return torch.cat([support, query])
