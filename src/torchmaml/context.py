"""The execution context: how the meta-learner is evaluating a model at this moment, passed explicitly.

A model's function never depends on the context; which kernels compute it, and which inner step's weights
a per-step layer uses, do:

- ``vectorised``: whether tasks may run under ``torch.func.vmap`` (the ``"vmap"``/``"chunked"`` strategies,
  and the default, safe anywhere), or run one at a time (``"loop"``), where fused kernels whose vmap batching
  rules are wrong for higher-order gradients (batch norm, functorch#534) may be used;
- ``differentiation``: how the estimator differentiates the model: ``"torch.func"`` transforms, or plain
  ``"autograd"`` (``torch.autograd.grad`` outside any transform), where custom ``autograd.Function`` layers are
  cheap;
- ``step``: the inner step the model is evaluated at (layers with per-step weights, such as MAML++'s per-step
  batch norm), or ``None`` outside the inner loop (a deployed, adapted model: the last step's weights).

The execution strategies (``torchmaml.execution``) create it, the estimators receive it in their
``InnerProblem`` and hand it to the model (``FunctionalModel.__call__(params, x, context)``), which evaluates
the module through a copy whose context-dependent layers were built for that context
(``torchmaml.models.layers``). No layer reads global or thread-local state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Differentiation = Literal["torch.func", "autograd"]
DIFFERENTIATIONS: tuple[Differentiation, ...] = ("torch.func", "autograd")


@dataclass(frozen=True)
class ExecutionContext:
    """Where and how a model is evaluated (module docstring). The default is vectorisable, differentiated by
    ``torch.func``, outside the inner loop: correct anywhere."""

    vectorised: bool = True
    differentiation: Differentiation = "torch.func"
    step: int | None = None

    def at_step(self, step: int | None) -> ExecutionContext:
        """This context at inner step ``step``."""
        return self if step == self.step else dataclasses.replace(self, step=step)

    def differentiated_by(self, differentiation: Differentiation) -> ExecutionContext:
        """This context with gradients taken by ``differentiation``."""
        return dataclasses.replace(self, differentiation=differentiation)


VECTORISED = ExecutionContext()
ONE_TASK_AT_A_TIME = ExecutionContext(vectorised=False)
