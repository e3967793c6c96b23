"""Learning-rate schedules: detectron2's, plus warm-up + poly decay (Tab. 7), each checked
against the run's length (:func:`check_schedule`)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import (
    ParamScheduler,
    PolynomialDecayParamScheduler,
    StepWithFixedGammaParamScheduler,
)

__all__ = ["build_lr_scheduler", "check_schedule"]

logger = logging.getLogger(__name__)


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
    if s.MAX_ITER < 1:
        raise ValueError(f"SOLVER.MAX_ITER must be at least 1, got {s.MAX_ITER}")
    if s.LR_SCHEDULER_NAME == "WarmupPolyLR":
        main = PolynomialDecayParamScheduler(1.0, s.POLY_LR_POWER)
    elif s.LR_SCHEDULER_NAME == "WarmupStepWithFixedGammaLR":
        main = _HoldLastValue(
            StepWithFixedGammaParamScheduler(
                base_value=1.0, num_decays=s.NUM_DECAYS, gamma=s.GAMMA, num_updates=s.MAX_ITER
            )
        )
    else:
        scheduler = d2_build_lr_scheduler(cfg, optimizer)
        check_schedule(cfg, scheduler._multiplier)
        return scheduler
    schedule = WarmupParamScheduler(
        main,
        s.WARMUP_FACTOR,
        min(s.WARMUP_ITERS / s.MAX_ITER, 1.0),
        s.WARMUP_METHOD,
        s.RESCALE_INTERVAL,
    )
    check_schedule(cfg, schedule)
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=s.MAX_ITER)


def check_schedule(cfg, multiplier: ParamScheduler) -> list[str]:
    """Warns (and returns the warnings) when the schedule does not fit the run: a warm-up
    longer than ``SOLVER.MAX_ITER`` (the learning rate never reaches ``BASE_LR``), or a
    learning rate that is 0 before the last iteration (the rest of the run does not train).
    ``multiplier`` maps ``iteration / MAX_ITER`` to the factor on ``BASE_LR``, as detectron2's
    ``LRMultiplier`` calls it."""
    s = cfg.SOLVER
    max_iter = s.MAX_ITER
    found = []
    if s.WARMUP_ITERS > max_iter:
        found.append(
            f"SOLVER.WARMUP_ITERS={s.WARMUP_ITERS} is longer than the run "
            f"(SOLVER.MAX_ITER={max_iter}): the learning rate is still warming up at the last "
            f"iteration, at {multiplier((max_iter - 1) / max_iter):.3g} x SOLVER.BASE_LR, and "
            f"{s.LR_SCHEDULER_NAME}'s decay never runs"
        )
    zero_from = _first_iteration_of_zero_tail(multiplier, max_iter)
    if zero_from is not None and zero_from < max_iter - 1:
        found.append(
            f"the learning rate of {s.LR_SCHEDULER_NAME} is 0 from iteration {zero_from} on: "
            f"the last {max_iter - zero_from} of SOLVER.MAX_ITER={max_iter} iterations do not "
            f"train (SOLVER.GAMMA={s.GAMMA}, STEPS={tuple(s.STEPS)}, "
            f"BASE_LR={s.BASE_LR}, BASE_LR_END={s.BASE_LR_END})"
        )
    for message in found:
        logger.warning(message)
    return found


def _first_iteration_of_zero_tail(multiplier: ParamScheduler, max_iter: int) -> int | None:
    """The first iteration from which the multiplier is 0 up to the last one (``max_iter - 1``),
    or None if the last iteration trains. Sampled, then exact over the last sampled stretch."""

    def lr(i: int) -> float:
        return multiplier(i / max_iter)

    if lr(max_iter - 1) > 0:
        return None
    samples = np.unique(np.linspace(0, max_iter - 1, min(max_iter, 4097)).astype(int))
    nonzero = [int(i) for i in samples if lr(int(i)) > 0]
    start = nonzero[-1] + 1 if nonzero else 0
    return next(i for i in range(start, max_iter) if lr(i) <= 0)
