"""Learning-rate schedules: detectron2's, plus warm-up + poly decay (Tab. 7)."""

from __future__ import annotations

import torch
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import (
    ParamScheduler,
    PolynomialDecayParamScheduler,
    StepWithFixedGammaParamScheduler,
)

__all__ = ["build_lr_scheduler"]


class _HoldLastValue(ParamScheduler):
    """``scheduler`` with ``where`` capped just below 1: fvcore's ``StepParamScheduler`` (under
    ``StepWithFixedGammaParamScheduler``) indexes past its values at ``where == 1``, which
    detectron2's trainer reaches when it steps the schedule after the last iteration."""

    def __init__(self, scheduler: ParamScheduler):
        self._scheduler = scheduler

    def __call__(self, where: float) -> float:
        return self._scheduler(min(where, 1.0 - 2 * self.WHERE_EPSILON))


def build_lr_scheduler(
    cfg, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """``SOLVER.LR_SCHEDULER_NAME``, each after ``SOLVER.WARMUP_ITERS`` iterations of linear or
    constant warm-up (detectron2's ``WarmupParamScheduler``):

    * ``WarmupPolyLR``: x (1 - t)^POLY_LR_POWER, t = iteration / MAX_ITER;
    * ``WarmupStepWithFixedGammaLR``: x GAMMA^k over NUM_DECAYS + 1 equal stretches;
    * any other of detectron2's (``WarmupMultiStepLR``: x GAMMA at each of STEPS;
      ``WarmupCosineLR``: cosine from 1 to BASE_LR_END / BASE_LR).
    """
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME == "WarmupPolyLR":
        main = PolynomialDecayParamScheduler(1.0, s.POLY_LR_POWER)
    elif s.LR_SCHEDULER_NAME == "WarmupStepWithFixedGammaLR":
        main = _HoldLastValue(
            StepWithFixedGammaParamScheduler(
                base_value=1.0, num_decays=s.NUM_DECAYS, gamma=s.GAMMA, num_updates=s.MAX_ITER
            )
        )
    else:
        return d2_build_lr_scheduler(cfg, optimizer)
    schedule = WarmupParamScheduler(
        main,
        s.WARMUP_FACTOR,
        min(s.WARMUP_ITERS / s.MAX_ITER, 1.0),
        s.WARMUP_METHOD,
        s.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=s.MAX_ITER)
