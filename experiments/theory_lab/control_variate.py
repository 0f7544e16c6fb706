"""A zero-mean control variate that makes the bias of one-step meta-gradient estimators measurable.

For task ``i`` at ``w`` with population gradient ``g = grad f_i(w)``, Hessian ``H``, adapted point ``u = w - alpha g``,
query gradient ``q = grad f_i(u)`` and Hessian ``Q`` there, a support set gives ``ghat = g + delta`` and a Hessian
set ``Hhat = H + Delta``. With the population query set, to first order in the sampling noise

    FO-MAML:               G_i = grad f_i(w - alpha ghat)               = q - alpha Q delta + O(noise^2)
    MAML / three-batch:    G_i = (I - alpha Hhat) grad f_i(w - alpha ghat) = grad F_i - alpha Delta q
                                                                           - alpha (I - alpha H) Q delta + O(noise^2)

(``Hhat`` on the support set for ``unrolled``, on the independent Hessian set for ``three_batch`` and HF-MAML).
The first-order terms ``c_i`` have mean exactly zero (``delta`` and ``Delta`` are zero-mean given the task, and
everything they multiply is fixed by the task), so ``E[G_i - c_i] = E[G_i]``, while ``G_i - c_i - grad F_i`` only
keeps the second-order noise, of the same ``1/D_in`` order as the bias itself: the bias is then resolved by a
number of draws that does not grow with ``D_in``. Every product is an exact Hessian-vector product.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.func import grad

from torchmaml.errors import ConfigError
from torchmaml.estimators.hvp import hessian_vector_product
from torchmaml.execution import map_tasks
from torchmaml.learner import MetaLearner
from torchmaml.tasks import TaskBatch
from torchmaml.theory.gradients import flatten

HessianBatch = Literal["none", "support", "independent"]


def control_variates(
    learner: MetaLearner, batch: TaskBatch, hessian_batch: HessianBatch, chunk_size: int = 256
) -> torch.Tensor:
    """``c_i`` for every task of ``batch`` (sampled support and Hessian sets, population query set), ``[B, P]``.

    ``hessian_batch``: ``"none"`` (FO-MAML), ``"support"`` (``unrolled``) or ``"independent"`` (``three_batch``,
    HF-MAML). One inner step with a scalar rate.
    """
    if learner.inner_steps != 1 or learner.rate_tensors() or learner.adapted is not None:
        raise ConfigError("the bias control variate needs one inner step with a fixed scalar rate on all parameters")
    params, alpha = learner.functional.parameters(), learner.inner_rate_value()

    def loss_on(x, y):
        return lambda p: learner.loss(learner.functional(p, x), y)

    def one_task(task):
        population = loss_on(task["query_x"], task["query_y"])
        support = loss_on(task["support_x"], task["support_y"])
        g = grad(population)(params)
        delta = {n: d - g[n] for n, d in grad(support)(params).items()}
        adapted = {n: p - alpha * g[n] for n, p in params.items()}
        curved = hessian_vector_product(population, adapted, delta)
        if hessian_batch == "none":
            return -alpha * flatten(curved)
        back = hessian_vector_product(population, params, curved)
        term = {n: curved[n] - alpha * back[n] for n in curved}
        query = grad(population)(adapted)
        sampled = support if hessian_batch == "support" else loss_on(task["hessian_x"], task["hessian_y"])
        noisy, exact = hessian_vector_product(sampled, params, query), hessian_vector_product(population, params, query)
        return -alpha * flatten({n: term[n] + noisy[n] - exact[n] for n in term})

    return torch.cat([map_tasks(one_task, chunk, learner.strategy) for chunk in batch.chunks(chunk_size)])
