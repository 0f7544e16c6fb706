"""Every seed a run derives from its configuration, in one place.

A run draws from several independent random streams: the initial weights, the task sampler of each phase,
the held-out and validation tasks, the stationarity monitor's batch, the theory step size's batch and, in
meta-RL, the adaptation rollouts of the evaluation. Each stream's seed is a fixed function of ``seed`` or
``eval_seed``; these functions are part of a run's identity (a resumed run repeats an uninterrupted one, and a
saved run evaluates to the same numbers, only because they never change), so they live here and nowhere else.

With ``s = seed`` and ``e = eval_seed``: the phases' task streams are ``2s`` (``maml``) and ``2s + 1``
(``pretrained``); the held-out, validation and stationarity streams ``2e``, ``2e + 1`` and ``2e + 7``; the tasks
of the active-learning experiment ``2e + 9``; the theory batches ``2s + 1000003``; meta-RL's evaluation streams
``e``, ``e + 1``, ``e + 2`` and ``e + 3``; the fixed training tasks (``train_tasks``) ``2s + 2000003``.
"""

from __future__ import annotations

import torch

PHASE_OFFSETS = {"maml": 0, "pretrained": 1}
EVALUATION_OFFSETS = {"test": 0, "validation": 1, "stationarity": 7, "active_learning": 9}
THEORY_OFFSET = 1_000_003
POOL_OFFSET = 2_000_003
RL_EVALUATION_OFFSETS = {"tasks": 0, "validation_tasks": 1, "adaptation": 2, "validation_adaptation": 3}


def model_seed(seed: int) -> int:
    """The seed of a phase's initial weights: ``seed`` itself."""
    return seed


def task_stream(seed: int, phase: str) -> int:
    """The seed of a training phase's task (and environment-noise) generator: ``2 seed + offset(phase)``."""
    return 2 * seed + PHASE_OFFSETS[phase]


def evaluation_stream(eval_seed: int, purpose: str) -> int:
    """The seed of the held-out tasks (``test``), the validation tasks (``validation``), the stationarity
    monitor's fixed batch (``stationarity``) or the active-learning tasks (``active_learning``):
    ``2 eval_seed + offset(purpose)``."""
    return 2 * eval_seed + EVALUATION_OFFSETS[purpose]


def theory_stream(seed: int) -> int:
    """The seed of the theory step size's re-estimation batches: ``2 seed + 1000003``."""
    return 2 * seed + THEORY_OFFSET


def pool_stream(seed: int) -> int:
    """The seed of the fixed set of training tasks (``train_tasks``): ``2 seed + 2000003``."""
    return 2 * seed + POOL_OFFSET


def rl_evaluation_stream(eval_seed: int, purpose: str) -> int:
    """Meta-RL evaluation: the held-out tasks (``tasks``), the step-size validation tasks
    (``validation_tasks``) and the rollouts that adapt to them: ``eval_seed + offset(purpose)``."""
    return eval_seed + RL_EVALUATION_OFFSETS[purpose]


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (a local stream: the global RNG is left untouched)."""
    return torch.Generator().manual_seed(seed)


__all__ = [
    "evaluation_stream",
    "generator",
    "model_seed",
    "pool_stream",
    "rl_evaluation_stream",
    "task_stream",
    "theory_stream",
]
