"""``Episodes``: a batch of trajectories, the unit that flows between sampler, baseline and objectives.

Every tensor has the task axis first, ``[T, N, H, ...]`` (tasks, trajectories per task, time steps), so a
per-task function runs over the batch as one ``torch.func.vmap`` call. ``mask[..., t]`` is 1 while the
episode runs and 0 after it terminated (2D navigation ends when the goal is reached); masked steps hold
whatever the environment returned and must be ignored.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Episodes(NamedTuple):
    """Observations ``s_t``, actions ``a_t``, rewards ``r_t = r(s_t, a_t)`` and the validity mask."""

    observations: torch.Tensor  # [T, N, H, obs_dim]
    actions: torch.Tensor  # [T, N, H, act_dim]
    rewards: torch.Tensor  # [T, N, H]
    mask: torch.Tensor  # [T, N, H], 1.0 inside the episode

    def returns(self) -> torch.Tensor:
        """Undiscounted return ``sum_t r_t`` of every trajectory: ``[T, N]``."""
        return (self.rewards * self.mask).sum(-1)

    def num_steps(self) -> int:
        """Environment steps inside episodes, over the whole batch."""
        return int(self.mask.sum().item())
