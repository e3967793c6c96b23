"""LARS: SGD with momentum whose weight updates are rescaled by a layer-wise trust ratio.

The optimizer of MAE's linear-probing protocol (You et al. 2017, "Large Batch Training of
Convolutional Networks", as used by MAE). For every parameter ``w`` with gradient ``g``:

    d = g + weight_decay * w                    if w.ndim > 1, else d = g
    d = d * trust_coefficient * ||w|| / ||d||   if w.ndim > 1 and both norms are > 0
    m = momentum * m + d                        (m starts at 0, so the first m is d)
    w = w - lr * m

Parameters with ``ndim <= 1`` (biases, norm scales and shifts) get neither weight decay nor the
trust ratio: they take plain SGD-with-momentum steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["LARS"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a per-tensor trust ratio for weights (ndim > 1).

    Args:
        params: parameters or param-group dicts; every hyperparameter below can be set per group.
        lr: learning rate.
        weight_decay: L2 coefficient added to the gradient of weights (ndim > 1) only.
        momentum: momentum factor (no dampening, no Nesterov).
        trust_coefficient: the trust ratio is ``trust_coefficient * ||w|| / ||d||``.

    The momentum buffer of a parameter is ``state[p]["momentum_buffer"]`` (same name as
    ``torch.optim.SGD``), so ``state_dict`` / ``load_state_dict`` resume exactly.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        if lr < 0.0:
            raise ValueError(f"LARS: lr must be >= 0, got {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}")
        if momentum < 0.0:
            raise ValueError(f"LARS: momentum must be >= 0, got {momentum}")
        if trust_coefficient <= 0.0:
            raise ValueError(f"LARS: trust_coefficient must be > 0, got {trust_coefficient}")
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _trust_ratio(weight: torch.Tensor, update: torch.Tensor, coefficient: float):
        """``coefficient * ||weight|| / ||update||`` (0-dim tensor), or 1 when a norm is 0."""
        weight_norm = torch.linalg.vector_norm(weight)
        update_norm = torch.linalg.vector_norm(update)
        both_positive = (weight_norm > 0) & (update_norm > 0)
        # The division is guarded so that the branch not taken cannot produce inf / nan.
        ratio = coefficient * weight_norm / torch.where(both_positive, update_norm, 1.0)
        return torch.where(both_positive, ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    update = update * self._trust_ratio(p, update, group["trust_coefficient"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss
