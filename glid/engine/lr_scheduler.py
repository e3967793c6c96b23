"""Learning-rate schedules: detectron2's, plus warm-up + poly decay (Tab. 7)."""

from __future__ import annotations

import torch
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

__all__ = ["build_lr_scheduler"]


def build_lr_scheduler(
    cfg, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """``SOLVER.LR_SCHEDULER_NAME``: ``WarmupPolyLR`` (lr x (1 - t)^POLY_LR_POWER after warm-up),
    or any of detectron2's (``WarmupMultiStepLR``: step decay; ``WarmupCosineLR``: cosine)."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    schedule = WarmupParamScheduler(
        PolynomialDecayParamScheduler(1.0, s.POLY_LR_POWER),
        s.WARMUP_FACTOR,
        min(s.WARMUP_ITERS / s.MAX_ITER, 1.0),
        s.WARMUP_METHOD,
        s.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=s.MAX_ITER)
