"""Monocular depth metrics (Eigen et al.; BTS / AdaBins / BinsFormer evaluation)."""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["DepthEvaluator", "METRICS", "depth_metrics", "eigen_crop_mask"]

logger = logging.getLogger(__name__)

METRICS = ("delta1", "delta2", "delta3", "AbsRel", "SqRel", "RMSE", "RMSE-log", "log10", "SILog")

# Eigen et al.'s crop of NYUv2's 480x640 images (rows 45:471, columns 41:601).
EIGEN_CROP = (45, 471, 41, 601)
EIGEN_SIZE = (480, 640)


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of the Eigen crop; for another size than 480x640 the crop's
    rows and columns are scaled by height / 480 and width / 640 (rounded half up)."""
    top, bottom, left, right = EIGEN_CROP
    sy, sx = height / EIGEN_SIZE[0], width / EIGEN_SIZE[1]

    def r(v: float) -> int:
        return int(np.floor(v + 0.5))

    mask = np.zeros((height, width), dtype=bool)
    mask[r(top * sy) : r(bottom * sy), r(left * sx) : r(right * sx)] = True
    return mask


def depth_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """One image's metrics over paired valid pixels (1-D arrays, metres, all > 0): delta1/2/3
    in percent (share of pixels with max(pred/gt, gt/pred) < 1.25^k), AbsRel, SqRel, RMSE,
    RMSE-log, log10 (mean |log10 pred - log10 gt|), SILog = 100 sqrt(mean(d^2) - mean(d)^2) with
    d = ln pred - ln gt."""
    pred = pred.astype(np.float64)
    gt = gt.astype(np.float64)
    ratio = np.maximum(pred / gt, gt / pred)
    d = np.log(pred) - np.log(gt)
    return {
        "delta1": 100.0 * float((ratio < 1.25).mean()),
        "delta2": 100.0 * float((ratio < 1.25**2).mean()),
        "delta3": 100.0 * float((ratio < 1.25**3).mean()),
        "AbsRel": float((np.abs(pred - gt) / gt).mean()),
        "SqRel": float(((pred - gt) ** 2 / gt).mean()),
        "RMSE": float(np.sqrt(((pred - gt) ** 2).mean())),
        "RMSE-log": float(np.sqrt((d**2).mean())),
        "log10": float(np.abs(np.log10(pred) - np.log10(gt)).mean()),
        "SILog": 100.0 * float(np.sqrt(max((d**2).mean() - d.mean() ** 2, 0.0))),
    }


class DepthEvaluator(DatasetEvaluator):
    """Depth metrics of ``outputs[i]["depth"]`` (H, W, metres) per image, averaged over images.

    Ground truth: the 16-bit PNG ``inputs[i]["depth_file_name"]`` divided by the metadata's
    ``depth_scale``. Valid pixels: ``min_depth < gt < max_depth``, and inside the Eigen crop when
    the metadata's ``eigen_crop`` is True (:func:`eigen_crop_mask`; scaled for sizes other than
    480x640). The prediction is clipped to ``[min_depth, max_depth]`` (and resized, bilinear, to
    the ground truth's size if it differs). Images without a valid pixel are skipped (logged).

    Args:
        dataset_name: the evaluated dataset (metadata ``depth_scale``, ``min_depth``,
            ``max_depth``, optional ``eigen_crop``).
        distributed: gather the per-image metrics of all processes; only the main one returns.
    """

    def __init__(self, dataset_name: str, distributed: bool = True):
        meta = MetadataCatalog.get(dataset_name)
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.depth_scale = float(meta.get("depth_scale", 1000.0))
        self.min_depth = float(meta.get("min_depth", 1e-3))
        self.max_depth = float(meta.get("max_depth", 10.0))
        self.eigen_crop = bool(meta.get("eigen_crop", False))
        self._per_image: list[dict] = []

    def reset(self) -> None:
        self._per_image = []

    def load_gt(self, file_name: str) -> np.ndarray:
        with PathManager.open(file_name, "rb") as f:
            return np.asarray(Image.open(f), dtype=np.float64) / self.depth_scale

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for x, y in zip(inputs, outputs):
            gt = self.load_gt(x["depth_file_name"])
            pred = y["depth"].detach().float()
            if tuple(pred.shape) != gt.shape:
                pred = torch.nn.functional.interpolate(
                    pred[None, None], size=gt.shape, mode="bilinear", align_corners=False
                )[0, 0]
            self.process_arrays(pred.cpu().numpy(), gt, x.get("file_name"))

    def process_arrays(self, pred: np.ndarray, gt: np.ndarray, name=None) -> None:
        """Score one (H, W) prediction against its (H, W) ground truth in metres."""
        valid = (gt > self.min_depth) & (gt < self.max_depth)
        if self.eigen_crop:
            valid &= eigen_crop_mask(*gt.shape)
        if not valid.any():
            logger.warning(f"{self.dataset_name}: no valid depth in {name}; image skipped")
            return
        pred = np.clip(pred, self.min_depth, self.max_depth)
        self._per_image.append(depth_metrics(pred[valid], gt[valid]))

    def evaluate(self) -> OrderedDict | dict:
        """``{"depth": {metric: mean over images}}`` on the main process, ``{}`` elsewhere."""
        per_image = self._per_image
        if self.distributed:
            comm.synchronize()
            per_image = list(itertools.chain(*comm.gather(per_image, dst=0)))
            if not comm.is_main_process():
                return {}
        if not per_image:
            logger.warning(f"{self.dataset_name}: no image with valid depth was evaluated")
            return {}
        result = {k: float(np.mean([m[k] for m in per_image])) for k in METRICS}
        logger.info(f"{self.dataset_name}: depth over {len(per_image)} images: {result}")
        return OrderedDict(depth=result)
