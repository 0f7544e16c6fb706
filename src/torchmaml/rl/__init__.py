"""Meta-reinforcement learning: MAML for policies (Finn et al. 2017, §5.3) with a TRPO outer step.

    from torchmaml import rl
    config = rl.load_config("navigation2d", ["iterations=100"])
    rl.train(config, "runs/nav")
    report = rl.evaluate("runs/nav")        # evaluation.json, returns.png, adaptation.png
    print(report["table"])

Modules, one job each: ``navigation`` and ``half_cheetah`` (task environments, gymnasium API; half-cheetah
needs ``gymnasium[mujoco]`` and is imported on demand), ``sampler`` (vectorised, seeded rollouts),
``advantages`` (linear feature baseline, GAE), ``policy`` (Gaussian policies as pure functions),
``objectives`` (policy-gradient surrogates, DiCE, the differentiable inner step), ``trpo``, ``maml_trpo``
(the algorithm, top to bottom), ``train``, ``evaluate``, ``plots``, ``config``.

Needs ``pip install "torchmaml[rl]"`` (gymnasium; ``[mujoco]`` for half-cheetah). Without gymnasium only
``torchmaml.rl.config`` works; the other names raise one line naming the extra.
"""

from __future__ import annotations

from typing import Any

from torchmaml.extras import available
from torchmaml.rl.config import RLConfig, build_config, load_config, preset_names

if available("gymnasium"):
    from torchmaml.rl.episodes import Episodes
    from torchmaml.rl.evaluate import evaluate
    from torchmaml.rl.navigation import BatchedNavigation2D, Navigation2DEnv
    from torchmaml.rl.policy import GaussianMLPPolicy
    from torchmaml.rl.sampler import BatchedNavigationSampler, VectorEnvSampler
    from torchmaml.rl.train import train


def __getattr__(name: str) -> Any:
    if name in __all__:  # listed but not imported: gymnasium is missing
        from torchmaml.extras import require

        require("gymnasium", "rl")
    raise AttributeError(f"module 'torchmaml.rl' has no attribute {name!r}")


__all__ = [
    "BatchedNavigation2D",
    "BatchedNavigationSampler",
    "Episodes",
    "GaussianMLPPolicy",
    "Navigation2DEnv",
    "RLConfig",
    "VectorEnvSampler",
    "build_config",
    "evaluate",
    "load_config",
    "preset_names",
    "train",
]
