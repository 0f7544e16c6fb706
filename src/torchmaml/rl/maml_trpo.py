"""MAML-TRPO: meta-reinforcement learning of a policy's initial parameters (Finn et al. 2017, Algorithm 3).

One meta-iteration, for a batch of ``T`` tasks and ``N`` trajectories per task:

1. For ``k = 0 .. K-1``: roll out ``D_k`` with each task's ``w_k`` (``w_0 = w``, the meta-parameters), compute
   advantages (linear feature baseline, GAE), and take the inner policy-gradient step
   ``w_{k+1} = w_k + alpha grad J_hat(w_k; D_k)`` (values only: no gradient is kept while sampling).
2. Roll out the post-adaptation episodes ``D'`` with ``w_K``.
3. TRPO on ``w`` (``rl.trpo``): the gradient of ``mean_i meta_objective_i(w)`` (``rl.objectives``: the outer
   surrogate at ``w_K(w)``, recomputed differentiably from the stored ``D_k``, plus the sampling term for
   ``"exact"``), the Fisher matrix of the post-adaptation policies as functions of ``w`` (below), and a line
   search on that same meta-objective (its boxes are anchored at the sampling policies, so its value moves
   with ``w`` as its gradient says) under the KL limit between old and new post-adaptation policies.

With ``K = 0`` the same code is plain TRPO on tasks drawn at random: the "pretrained on all tasks" baseline.

**Fisher-vector products through the adaptation.** Let ``f(w)`` be the means and log-stds of the
post-adaptation policies ``pi_{w_K(w)}`` at the states of ``D'``. The mean KL between old and new
post-adaptation policies is ``1/2 dw^T J^T M J dw + O(dw^3)`` with ``J = df/dw`` and ``M = diag(1/sigma^2, 2)``
(per action dimension, averaged over steps and tasks); its gradient vanishes at ``w_old``, so its Hessian is
exactly ``J^T M J``. ``F v = J^T (M (J v))`` is two reverse-mode maps of ``f``'s recorded graph: second
derivatives of the inner objective only, never third (``fisher="exact"``, as the paper). ``fisher=
"post_adaptation"`` drops the adaptation's Jacobian (``dw_K/dw ~ I``) and is about ten times cheaper.

**One forward pass each.** The meta-gradient is taken with ``grad_and_value``, whose value and auxiliary
outputs are the objective at ``w_old``, the adapted ``w_K(w_old)`` and the old post-adaptation policies on
``D'``; the meta-objective hands back the policy it evaluated on ``D'``, so each line-search step reads its KL
from the objective's own forward pass. ``f`` runs forward once per step, recorded by a ``vjp``: ``J^T u`` is
that vjp and ``J v`` its transpose (``hvp.jacobian_product_of``), so no product runs ``f`` again. In sampling, the
behaviour log-probabilities of ``D_k`` and the inner step on it share a forward pass
(``objectives.sampling_step``). Each is the same computation done once, so the numbers are those of the separate
passes (``tests/test_rl_trpo.py`` checks them against each other).

**Data parallel (``process_group``).** Each of ``R`` processes samples the rollouts of its consecutive share
of ``n_r`` tasks (``sample_phases(..., share=task_range(T, r, R))``: every process draws the whole batch's
tasks and noise from the shared generator and keeps its share, so the episodes are the one-process ones).
The advantages and baseline fits are per task, hence local. Everything TRPO reads is a mean over tasks,
``(1/T) sum_i x_i = (1/T) sum_r n_r xbar_r``, reduced with one all-reduce (``distributed.task_mean``): the
gradient ``g``, the objective and the KL of each line-search step, and the reported returns. Every
Fisher-vector product ``F v`` of the conjugate gradient is ``sum_r (sum_{i in r} F_i v / T)``: each task
weighted by ``1/T`` as in one process, then summed over the processes. The sampling term's baseline needs
every task's ``V_hat`` (``distributed.gather_tasks``). Every process thus computes the same numbers (an
all-reduce gives the same sum everywhere), runs the same conjugate gradient and line search and takes the
same step: the one-process step up to the rounding of the sums' order, bit-identical across processes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.func import grad_and_value, vjp, vmap

from torchmaml.distributed import ProcessGroup, gather_tasks, rank_and_size, task_mean, task_range
from torchmaml.estimators.hvp import jacobian_product_of
from torchmaml.functional import FunctionalModel, Params
from torchmaml.pytree import flatten, unflatten
from torchmaml.rl.advantages import advantages
from torchmaml.rl.config import RLConfig
from torchmaml.rl.episodes import Episodes
from torchmaml.rl.objectives import Adapted, Estimator, Phase, adapt, log_probs, meta_objective, sampling_step
from torchmaml.rl.policy import distribution, gaussian_kl
from torchmaml.rl.sampler import Sampler, per_task
from torchmaml.rl.trpo import trpo_step


class PhaseBatch(NamedTuple):
    """One adaptation phase of a task batch: episodes ``[T, N, H, ...]``, advantages ``[T, N, H]``, the
    log-probabilities of the actions under the sampling policies ``[T, N, H]`` and the advantage
    normalisation scale ``[T]``."""

    episodes: Episodes
    advantages: torch.Tensor
    log_probs: torch.Tensor
    scale: torch.Tensor

    def phase(self) -> Phase:
        return self.episodes, self.advantages, self.log_probs


def sample_phases(
    sampler: Sampler,
    policy: FunctionalModel,
    params: Params,
    tasks: torch.Tensor,
    generator: torch.Generator,
    config: RLConfig,
    lrs: Sequence[float],
    share: range | None = None,
) -> list[PhaseBatch]:
    """Steps 1-2: ``len(lrs) + 1`` phases ``D_0, ..., D_K``, each sampled with the parameters adapted on the
    previous ones (inner steps ``lrs``). The last phase is the post-adaptation one. With ``share``, the phases
    of the tasks ``tasks[share]`` only, equal to those of the whole batch's (the generator advances as much)."""
    share = range(tasks.shape[0]) if share is None else share
    point = per_task(params, len(share))
    phases = []
    for k in range(len(lrs) + 1):
        episodes = sampler.rollout(policy, point, tasks, config.trajectories, generator, share)
        advantage, scale = advantages(
            episodes, config.discount, config.gae_lambda, config.value_baseline, config.normalize_advantages
        )
        if k < len(lrs):  # the behaviour log-probabilities and the inner step from one forward pass
            step = functools.partial(sampling_step, policy, lr=lrs[k])
            point, behaviour = vmap(step)(point, episodes, advantage)
            point = {name: p.detach() for name, p in point.items()}
        else:
            with torch.no_grad():
                behaviour = vmap(functools.partial(log_probs, policy))(point, episodes)
        phases.append(PhaseBatch(episodes, advantage, behaviour, scale))
    return phases


def meta_update(
    policy: FunctionalModel,
    params: Params,
    phases: Sequence[PhaseBatch],
    config: RLConfig,
    lrs: Sequence[float],
    estimator: Estimator,
    process_group: ProcessGroup | None = None,
) -> tuple[Params, dict[str, float]]:
    """Step 3: one TRPO step on the meta-parameters ``params``; returns the new parameters and metrics.

    With a ``process_group``, ``phases`` hold this process's share of the tasks (``sample_phases(...,
    share=...)``, shares in rank order) and every mean over tasks is taken over all processes' tasks (module
    docstring): each process returns the same parameters and metrics."""
    inner, outer = [p.phase() for p in phases[:-1]], phases[-1]
    episodes, mask = outer.episodes, outer.episodes.mask
    counts, tasks = mask.sum((1, 2)), mask.shape[0]
    task_objective = vmap(functools.partial(meta_objective, policy, lrs=lrs, estimator=estimator), (None, 0, 0, 0))
    value = _sampling_term_value(outer, process_group)

    def objective(w: Params) -> tuple[torch.Tensor, Adapted]:
        """The mean meta-objective over tasks, every task's adapted parameters ``w_K(w)`` and post-adaptation
        policy on ``D'``."""
        values, adapted = task_objective(w, inner, outer.phase(), value)
        return values.mean(), adapted

    # one pass gives the gradient, the objective at w_old and the old post-adaptation policies
    gradient, (objective_before, adapted_old) = grad_and_value(objective, has_aux=True)(params)
    old_mean, old_log_std = adapted_old.mean, adapted_old.log_std
    with torch.no_grad():
        returns = (phases[0].episodes.returns().mean(), phases[-1].episodes.returns().mean())
    objective_before, *returns = _mean_over_tasks((objective_before.detach(), *returns), tasks, process_group)
    gradient = _mean_over_tasks(flatten(gradient), tasks, process_group)

    # Fisher-vector products on every k-th post-adaptation trajectory of each task (TRPO implementations
    # subsample the same way; OpenAI baselines uses every 5th sample)
    every = slice(None, None, config.fisher_subsample)
    fisher_outputs = post_adaptation_outputs(
        policy, params, inner, adapted_old.params, episodes.observations[:, every], lrs, estimator, config.fisher
    )
    fisher_vector_product = fisher_vector_product_of(
        fisher_outputs, params, old_log_std[:, every], mask[:, every], config.cg_damping, process_group
    )

    def evaluate(step: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            value_after, adapted = objective(unflatten(flatten(params) + step, params))
            kl = gaussian_kl(old_mean, old_log_std, adapted.mean, adapted.log_std)
            kl = ((kl * mask).sum((1, 2)) / counts).mean()
        value_after, kl = _mean_over_tasks((value_after, kl), tasks, process_group)
        return float(value_after - objective_before), float(kl)

    result = trpo_step(
        gradient,
        fisher_vector_product,
        evaluate,
        config.max_kl,
        config.cg_iterations,
        config.backtrack_ratio,
        config.max_backtracks,
    )
    new_params = unflatten(flatten(params) + result.step, params)
    metrics = {
        "return_before": float(returns[0]),
        "return_after": float(returns[1]),
        "improvement": result.improvement,
        "kl": result.kl,
        "backtracks": float(result.backtracks),
        "accepted": float(result.accepted),
        "gradient_norm": float(gradient.norm()),
    }
    return new_params, metrics


def post_adaptation_outputs(
    policy: FunctionalModel,
    params: Params,
    inner: Sequence[Phase],
    adapted: Params,
    observations: torch.Tensor,
    lrs: Sequence[float],
    estimator: Estimator,
    fisher: str,
) -> Callable[[Params], tuple[torch.Tensor, torch.Tensor]]:
    """``w -> f(w)``, the means and log-stds ``[T, N, H, A]`` of the post-adaptation policies at ``observations``,
    whose Jacobian at ``params`` gives the Fisher matrix (module docstring). ``fisher="exact"``: the policies
    ``pi_{w_K(w)}``, adapted on the ``inner`` phases; ``"post_adaptation"``: ``w_K(w) ~ adapted + (w - params)``,
    ``adapted`` being ``w_K(params)`` per task."""
    policy_on_tasks = vmap(functools.partial(distribution, policy))
    if fisher == "exact":

        def outputs(w: Params) -> tuple[torch.Tensor, torch.Tensor]:
            if not inner:  # K = 0
                return policy_on_tasks(per_task(w, observations.shape[0]), observations)
            return policy_on_tasks(
                vmap(lambda task_inner: adapt(policy, w, task_inner, lrs, estimator))(inner), observations
            )

        return outputs

    def shifted(w: Params) -> tuple[torch.Tensor, torch.Tensor]:
        return policy_on_tasks({name: adapted[name] + (w[name] - params[name]) for name in params}, observations)

    return shifted


def fisher_vector_product_of(
    outputs: Callable[[Params], tuple[torch.Tensor, torch.Tensor]],
    params: Params,
    old_log_std: torch.Tensor,
    mask: torch.Tensor,
    damping: float,
    process_group: ProcessGroup | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> J^T M J v + damping v`` with ``J`` the Jacobian of ``outputs`` (means and log-stds ``[T, N, H, A]``)
    at ``params`` (module docstring).

    With ``fisher="exact"`` the outputs are those of the adapted policies ``pi_{w_K(w)}``, differentiated
    through the adaptation. ``"post_adaptation"`` takes ``dw_K/dw ~ I``: each task's Fisher matrix in its own
    adapted parameters, averaged. It is an ``O(alpha)`` approximation about ten times cheaper; the line search
    still measures the true KL through the adaptation, so the trust region holds either way.

    ``J^T u`` is a ``vjp`` of ``outputs`` at ``params`` built once, ``J v`` its transpose
    (``hvp.jacobian_product_of``): each product runs two reverse passes through the recorded graph, no forward
    pass of ``outputs``.

    ``J^T M J`` is a mean over tasks, ``M`` weighting each task by ``1/T``. With a ``process_group``, ``mask`` holds
    this process's tasks, ``T`` counts every process's tasks and the products are summed over the processes:
    each task's weight is the one-process weight, whatever the precision.
    """
    counts, tasks = mask.sum((1, 2)), mask.shape[0]
    if process_group is not None:
        tasks = int(_sum_over_ranks(torch.tensor(tasks), process_group))
    weight = (mask / (counts[:, None, None] * tasks))[..., None]
    metric = (weight * torch.exp(-2 * old_log_std), 2 * weight.expand_as(old_log_std))
    recorded, pullback = vjp(outputs, params)
    push_forward = jacobian_product_of(pullback, recorded)

    def product(v: torch.Tensor) -> torch.Tensor:
        d_mean, d_log_std = push_forward(unflatten(v, params))
        (pulled,) = pullback((metric[0] * d_mean, metric[1] * d_log_std))
        return _sum_over_ranks(flatten(pulled), process_group) + damping * v

    return product


def _sum_over_ranks(tensor: torch.Tensor, process_group: ProcessGroup | None) -> torch.Tensor:
    """``tensor`` summed over the processes of ``process_group`` (one all-reduce); ``tensor`` itself without."""
    if process_group is None:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, group=process_group)
    return total


def _mean_over_tasks(tree, tasks: int, process_group: ProcessGroup | None):
    """``tree``, this process's means over its ``tasks`` tasks, as the means over every process's tasks
    (``distributed.task_mean``); ``tree`` itself in one process."""
    return tree if process_group is None else task_mean(tree, tasks, process_group)


def _sampling_term_value(outer: PhaseBatch, process_group: ProcessGroup | None = None) -> torch.Tensor:
    """``V_hat`` of the sampling term, per task: the mean post-adaptation reward per step on the scale of the
    outer surrogate (divided by the advantage scale), minus the mean of the other tasks' values (a baseline
    independent of this task's adaptation episodes, so the estimator stays unbiased). With a
    ``process_group``, the values of this process's tasks, the baseline taken over every process's tasks."""
    episodes = outer.episodes
    value = (episodes.rewards * episodes.mask).sum((1, 2)) / episodes.mask.sum((1, 2)) / outer.scale
    share = range(value.shape[0])
    if process_group is not None:
        value = gather_tasks(value, process_group)
        share = task_range(value.shape[0], *rank_and_size(process_group))
    if value.shape[0] == 1:
        return value
    return (value - (value.sum() - value) / (value.shape[0] - 1))[share.start : share.stop]
