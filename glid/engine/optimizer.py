"""AdamW with GLID's parameter groups and whole-model gradient clipping."""

from __future__ import annotations

import itertools

import torch
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

__all__ = ["build_optimizer", "NO_DECAY_PARAM_NAMES"]

# Parameters that are embeddings, tokens or position tables: no weight decay
# (SOLVER.WEIGHT_DECAY_EMBED), like norms (SOLVER.WEIGHT_DECAY_NORM).
NO_DECAY_PARAM_NAMES = (
    "relative_position_bias_table",
    "absolute_pos_embed",
    "mask_token",
    "mask_query",
    "cls_query",
    "grid_points",
    "level_embed",
)


def _full_model_clipping(optimizer_cls: type, clip_norm: float, norm_type: float) -> type:
    """A subclass of ``optimizer_cls`` whose ``step`` first clips the gradient norm of all its
    parameters together (one norm over the whole model)."""

    class FullModelGradientClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, clip_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelClip{optimizer_cls.__name__}"
    return FullModelGradientClippingOptimizer


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (``SOLVER.OPTIMIZER``) with: encoder lr x ``BACKBONE_MULTIPLIER``; no weight decay
    on norms, embeddings, tokens and position tables; optional full-model gradient clipping."""
    s = cfg.SOLVER
    no_decay = {"weight_decay": s.WEIGHT_DECAY_EMBED}
    params = get_default_optimizer_params(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        lr_factor_func=lambda name: s.BACKBONE_MULTIPLIER if name.startswith("backbone.") else 1.0,
        overrides={name: dict(no_decay) for name in NO_DECAY_PARAM_NAMES},
    )
    optimizer_type = s.OPTIMIZER.upper()
    if optimizer_type == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {"betas": tuple(s.BETAS)}
    elif optimizer_type == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM, "nesterov": s.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={s.OPTIMIZER!r} is not supported; use ADAMW or SGD")
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_cls = _full_model_clipping(optimizer_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:  # detectron2's per-parameter "value" / "norm" clipping (no-op when disabled)
        optimizer_cls = maybe_add_gradient_clipping(cfg, optimizer_cls)
    return optimizer_cls(params, lr=s.BASE_LR, **kwargs)
