"""Meta-test: average return after 0, 1, ..., K adaptation steps on held-out tasks, with 95% CIs.

As in Finn et al. (2017, §5.3): ``eval_tasks`` (40) tasks drawn with ``eval_seed``, ``trajectories`` (20)
rollouts per task and step; each step is a policy-gradient step on the rollouts just sampled (step sizes
``eval_lrs``: 0.1 then 0.05, the paper's). The per-task value is the mean return of its rollouts, and the
report is ``mean +- 1.96 std / sqrt(n)`` over tasks (``torchmaml.statistics``). Compared models:

- ``maml``: the meta-trained initialisation;
- ``pretrained``: TRPO on all tasks without adaptation (if the run trained it), then fine-tuned;
- ``random``: the random initialisation MAML started from, fine-tuned.

The baselines' constant step size is picked from ``pretrained_lr_grid`` on separate validation tasks (the paper
tuned them by hand). Every model sees the same tasks and the same noise (common random numbers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from torchmaml.checkpoint import atomic_write_bytes, load_checkpoint
from torchmaml.evaluate import AdaptationResult, format_table
from torchmaml.functional import FunctionalModel, Params
from torchmaml.rl.config import RLConfig
from torchmaml.rl.maml_trpo import sample_phases
from torchmaml.rl.plots import plot_learning_curve, plot_navigation, plot_returns
from torchmaml.rl.sampler import Sampler
from torchmaml.rl.train import MAML, PRETRAINED, build_policy, load_run_config, make_sampler
from torchmaml.run import seeds
from torchmaml.run.files import WriteError
from torchmaml.run.metrics_log import read_records
from torchmaml.run.seeds import rl_evaluation_stream
from torchmaml.rundir import RunDir
from torchmaml.statistics import mean_estimate

VALIDATION_TASKS = 20


def evaluate(out_dir: str | Path, policy: nn.Module | None = None) -> dict:
    """Evaluate the run in ``out_dir``; writes ``evaluation.json``, ``returns.png``, ``learning_curve.png`` and,
    for navigation, ``adaptation.png``. Returns the report written to ``evaluation.json``. ``policy``: the module
    given to ``train``, if any (its initial parameters are the "random" baseline)."""
    out = Path(out_dir)
    run = RunDir(out)
    config = load_run_config(out)
    steps = config.eval_steps
    with make_sampler(config) as sampler:
        module = policy if policy is not None else build_policy(config, sampler.observation_dim, sampler.action_dim)
        model = FunctionalModel(module)
        models: dict[str, tuple[Params, list[float]]] = {
            MAML: (load_checkpoint(run.checkpoint(MAML))["policy"], config.eval_rates(steps))
        }
        candidates = {"random": model.parameters()}
        if run.checkpoint(PRETRAINED).exists():
            candidates = {PRETRAINED: load_checkpoint(run.checkpoint(PRETRAINED))["policy"], **candidates}
        for name, params in candidates.items():
            models[name] = (params, [_tune_step_size(sampler, model, params, config)] * steps)
        tasks = sampler.sample_tasks(
            config.eval_tasks, seeds.generator(rl_evaluation_stream(config.eval_seed, "tasks"))
        )
        results, trajectories = [], {}
        for name, (params, lrs) in models.items():
            phases = _adaptation(
                sampler, model, params, tasks, config, lrs, rl_evaluation_stream(config.eval_seed, "adaptation")
            )
            trajectories[name] = phases
            for k, returns in enumerate(phases_returns(phases)):
                estimate = mean_estimate(returns)
                results.append(AdaptationResult(name, config.trajectories, k, estimate.value, estimate.ci95))
    report = {
        "env": config.env,
        "tasks": config.eval_tasks,
        "trajectories": config.trajectories,
        "step_sizes": {name: lrs for name, (_, lrs) in models.items()},
        "results": [result.to_dict() for result in results],
        "table": format_table(results, "return"),
    }
    try:  # a read-only run folder: the table is still worth printing
        atomic_write_bytes(run.evaluation, (json.dumps(report, indent=2) + "\n").encode())
        plot_returns(report["results"], out / "returns.png")
        kinds = [MAML, PRETRAINED] if run.metrics(PRETRAINED).exists() else [MAML]
        plot_learning_curve({kind: read_records(run.metrics(kind)) for kind in kinds}, out)
        if config.env == "navigation2d":
            episodes = [phase.episodes for phase in trajectories[MAML]]
            plot_navigation(episodes, tasks[:2].numpy(), out / "adaptation.png")
    except WriteError as error:
        report["not_written"] = str(error)
    return report


def phases_returns(phases) -> list[torch.Tensor]:
    """Per adaptation step, each task's mean return over its rollouts: a list of ``[T]`` tensors."""
    return [phase.episodes.returns().mean(1) for phase in phases]


def _adaptation(
    sampler: Sampler, policy: FunctionalModel, params: Params, tasks: torch.Tensor, config: RLConfig, lrs, seed: int
):
    return sample_phases(sampler, policy, params, tasks, seeds.generator(seed), config, lrs)


def _tune_step_size(sampler: Sampler, policy: FunctionalModel, params: Params, config: RLConfig) -> float:
    """The rate of ``pretrained_lr_grid`` with the best mean return over 1..K steps on validation tasks."""
    grid = config.pretrained_lr_grid
    if len(grid) == 1 or config.eval_steps == 0:
        return grid[0]
    tasks = sampler.sample_tasks(
        VALIDATION_TASKS, seeds.generator(rl_evaluation_stream(config.eval_seed, "validation_tasks"))
    )
    scores = []
    for lr in grid:
        phases = _adaptation(
            sampler,
            policy,
            params,
            tasks,
            config,
            [lr] * config.eval_steps,
            rl_evaluation_stream(config.eval_seed, "validation_adaptation"),
        )
        scores.append(float(torch.stack(phases_returns(phases)[1:]).mean()))
    return grid[max(range(len(grid)), key=scores.__getitem__)]
