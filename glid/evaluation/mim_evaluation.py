"""Evaluation of masked-image-modeling pre-training: the reconstruction loss on held-out images
(the same masks every time: they are drawn from the image ids) and reconstruction images."""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

__all__ = ["MIMEvaluator", "reconstruction_panel"]

logger = logging.getLogger(__name__)


def reconstruction_panel(
    image: np.ndarray, reconstruction: np.ndarray, unit_mask: np.ndarray
) -> np.ndarray:
    """Side by side: the input, the input with its masked units greyed out, the reconstruction
    (masked units predicted, the rest the input). All (H, W, 3) uint8 RGB; ``unit_mask`` is the
    (gh, gw) bool unit mask."""
    h, w = image.shape[:2]
    gh, gw = unit_mask.shape
    pixel_mask = np.kron(unit_mask, np.ones((h // gh, w // gw), dtype=bool))
    masked = image.copy()
    masked[pixel_mask] = 127
    gap = np.full((h, 4, 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, masked, gap, reconstruction], axis=1)


class MIMEvaluator(DatasetEvaluator):
    """Mean of the per-image MIM loss (``mim_loss`` of the task's inference) over the dataset,
    and ``num_visualizations`` panels (:func:`reconstruction_panel`) written to
    ``<output_dir>/reconstructions/`` by the main process.

    Returns ``{"mim": {"loss": mean loss, "num_images": n}}``.
    """

    def __init__(
        self,
        output_dir: str | None,
        num_visualizations: int,
        image_format: str = "RGB",
        distributed: bool = True,
    ):
        self.output_dir = output_dir
        self.num_visualizations = num_visualizations
        self.image_format = image_format
        self.distributed = distributed
        self.reset()

    def reset(self) -> None:
        self._losses: list[float] = []
        self._written = 0

    def _to_rgb(self, chw: torch.Tensor) -> np.ndarray:
        hwc = chw.permute(1, 2, 0).numpy()
        return hwc[:, :, ::-1] if self.image_format == "BGR" else hwc

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for x, out in zip(inputs, outputs):
            self._losses.append(float(out["mim_loss"]))
            if self.output_dir and comm.is_main_process():
                if self._written < self.num_visualizations:
                    self._write_panel(x, out)

    def _write_panel(self, x: dict, out: dict) -> None:
        recon = out["reconstruction"].detach().float().cpu().round().clamp(0, 255).to(torch.uint8)
        image = x["image"][:, : recon.shape[1], : recon.shape[2]]
        panel = reconstruction_panel(
            self._to_rgb(image), self._to_rgb(recon), out["mim_mask"].cpu().numpy()
        )
        folder = os.path.join(self.output_dir, "reconstructions")
        os.makedirs(folder, exist_ok=True)
        name = os.path.splitext(os.path.basename(str(x.get("file_name", self._written))))[0]
        Image.fromarray(np.ascontiguousarray(panel)).save(
            os.path.join(folder, f"{self._written:03d}_{name}.png")
        )
        self._written += 1

    def evaluate(self):
        losses = self._losses
        if self.distributed:
            comm.synchronize()
            losses = list(itertools.chain(*comm.gather(losses, dst=0)))
            if not comm.is_main_process():
                return None
        if not losses:
            raise RuntimeError("MIMEvaluator got no images: is the test dataset empty?")
        if self.output_dir and self._written:
            logger.info(
                "Wrote %d reconstructions to %s",
                self._written,
                os.path.join(self.output_dir, "reconstructions"),
            )
        return OrderedDict(
            {"mim": {"loss": float(np.mean(losses)), "num_images": float(len(losses))}}
        )
