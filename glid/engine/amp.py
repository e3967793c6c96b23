"""Mixed-precision training on the GPU and the CPU (``SOLVER.AMP``).

detectron2's ``AMPTrainer`` runs CUDA's float16 autocast only. GLID's trains under the
autocast of the model's device in ``SOLVER.AMP.PRECISION``: bfloat16 (float32's range, so no loss
scaling; on a CPU with AVX512-BF16 a training step takes less than half of float32's time) or
float16 on a GPU with detectron2's ``GradScaler``. Checkpoints keep detectron2's layout (the
trainer state holds ``grad_scaler``, empty when the scaler is off).
"""

from __future__ import annotations

import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

from glid.modeling.precision import autocast_dtype

__all__ = ["GLIDAMPTrainer", "build_train_loop"]


class GLIDAMPTrainer(AMPTrainer):
    """``AMPTrainer`` for any device: autocast of the model's device type in ``precision``;
    the gradient scaler only for float16."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype):
        self.device_type = next(model.parameters()).device.type
        scaler = torch.amp.GradScaler("cuda", enabled=precision is torch.float16)
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=precision)

    def run_step(self) -> None:
        assert self.model.training, "[GLIDAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()


def build_train_loop(cfg, model, data_loader, optimizer) -> SimpleTrainer:
    """detectron2's ``SimpleTrainer``, or a :class:`GLIDAMPTrainer` when
    ``SOLVER.AMP.ENABLED`` (its dtype from ``SOLVER.AMP.PRECISION``, checked for the device)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    dtype = autocast_dtype(cfg.SOLVER.AMP.PRECISION, "SOLVER.AMP.PRECISION", cfg.MODEL.DEVICE)
    return GLIDAMPTrainer(model, data_loader, optimizer, precision=dtype)
