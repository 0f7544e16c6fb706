"""Runs from Python: ``torchmaml.load_run(RUN_DIR)`` and ``torchmaml export RUN_DIR --out FILE``.

Checkpoints carry a checksum header, so ``torch.load`` cannot open them directly; these functions verify and
unpack them. ``load_run`` gives back the trained ``MetaLearner`` and the run's ``TrainConfig``;
``export_run`` writes the trained network's ``state_dict`` as a plain file that needs nothing of torchmaml:
``.pt`` (``torch.load(path, weights_only=True)``) or ``.safetensors`` (``safetensors.torch.load_file``).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from torchmaml.config import TrainConfig
from torchmaml.errors import TorchMAMLError
from torchmaml.learner import MetaLearner
from torchmaml.run.files import write_atomic

__all__ = ["export_run", "load_run"]


def load_run(run_dir: str | Path, kind: str = "maml") -> tuple[MetaLearner, TrainConfig]:
    """The trained learner of a run folder and its configuration: ``learner, config = load_run("runs/x")``.

    The weights are the best-on-validation checkpoint when the run kept one, else the final one (the ones
    ``torchmaml evaluate`` uses). ``kind="pretrained"`` loads the joint-training baseline of a sinusoid run.
    ``learner.adapt(support_x, support_y)`` then gives an adapted ``nn.Module``.
    """
    from torchmaml.report import load_learner
    from torchmaml.rundir import RunDir
    from torchmaml.species import of_run

    root = Path(run_dir)
    if not (root / "config.toml").exists():
        raise TorchMAMLError(f"{root} is not a run folder (no config.toml); train one with torchmaml train")
    if of_run(root) != "supervised":
        raise TorchMAMLError(f"{root} is a meta-RL run; load its policy with torchmaml.rl (see docs/rl.md)")
    run = RunDir(root)
    config = run.config_for_this_machine()
    if not run.checkpoint(kind).exists() and not run.best_checkpoint(kind).exists():
        raise TorchMAMLError(
            f"{root} has no trained {kind} weights yet (no {run.checkpoint(kind).name}); "
            f"finish it with torchmaml train --resume {root}"
        )
    learner, _ = load_learner(run, config, kind)
    return learner, config


def export_run(run_dir: str | Path, out: str | Path, kind: str = "maml") -> Path:
    """Write the run's trained network weights (``learner.model.state_dict()``) to ``out``.

    ``.safetensors`` needs ``pip install "torchmaml[safetensors]"``; any other suffix is a ``torch.save``
    file (``.pt``). Learned inner rates (``inner_lr_mode`` other than fixed) are not network weights and are
    left out; ``load_run`` gives them.
    """
    out = Path(out)
    learner, _ = load_run(run_dir, kind)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in learner.model.state_dict().items()}
    if out.suffix == ".safetensors":
        from torchmaml.extras import require

        require("safetensors", "safetensors")
        from safetensors.torch import save

        data = save(state)
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    write_atomic(out, data)  # never through a link; one line if the folder cannot hold it
    return out
