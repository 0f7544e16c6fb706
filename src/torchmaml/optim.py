"""Outer optimisers beyond ``torch.optim``: hypergradient SGD, the outer half of AlphaMAML.

AlphaMAML (Behl, Baydin, Torr 2019) tunes both rates online with hypergradient descent (Baydin et al.
2018). For the outer rate ``beta``, since ``w_t = w_{t-1} - beta g_{t-1}``, the derivative of the meta-loss
at ``w_t`` with respect to ``beta`` is ``-g_t . g_{t-1}``, so

    beta_t = beta_{t-1} + eta_beta * (g_t . g_{t-1}),      w_{t+1} = w_t - beta_t g_t,

with ``g_t`` the meta-gradient. The inner rate ``alpha`` is a learnable scalar (``inner_lr_mode="scalar"``)
whose meta-gradient is exactly the hypergradient ``dL/dalpha``; it is stepped by plain SGD with its own
hyper-learning-rate ``eta_alpha`` (a parameter group with ``hyper_lr=0`` and ``lr=eta_alpha``).
"""

from __future__ import annotations

import torch

from torchmaml.errors import ConfigError


class HypergradientSGD(torch.optim.Optimizer):
    """SGD whose learning rate follows its hypergradient: ``lr += hyper_lr * (g_t . g_{t-1})`` per group.

    The current rate of each group is ``param_groups[i]["lr"]`` (saved in ``state_dict``).
    """

    def __init__(self, params, lr: float, hyper_lr: float = 0.0) -> None:
        if not lr > 0:
            raise ConfigError(f"outer_lr: must be > 0, got {lr}")
        if hyper_lr < 0:
            raise ConfigError(f"hyper_lr: must be >= 0, got {hyper_lr}")
        super().__init__(params, {"lr": lr, "hyper_lr": hyper_lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["hyper_lr"] > 0:
                previous = [self.state[p].get("previous_grad") for p in params]
                if all(g is not None for g in previous):
                    dot = sum((p.grad * g).sum() for p, g in zip(params, previous, strict=True))
                    group["lr"] = group["lr"] + group["hyper_lr"] * float(dot)
                for p in params:
                    self.state[p]["previous_grad"] = p.grad.detach().clone()
            for p in params:
                p.add_(p.grad, alpha=-group["lr"])
        return loss
