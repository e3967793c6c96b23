"""ImageNet-style top-k accuracy of per-image class logits."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["ClassificationEvaluator"]

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "classification_predictions.json"


class ClassificationEvaluator(DatasetEvaluator):
    """Top-k accuracy (percent) of ``outputs[i]["classification"]`` (logits, shape (C,))
    against ``inputs[i]["class_id"]``.

    With fewer than k classes, top-k counts as top-C (always right); the key is still
    ``top{k}``. Ties among logits are broken as ``torch.topk`` breaks them.

    Args:
        dataset_name: the evaluated dataset (for the log).
        distributed: gather the predictions of all processes; only the main one returns.
        output_dir: when given, the per-image predictions (``image_id``, ``file_name``,
            ``class_id``, ``topk`` class ids, best first, and their ``scores``, softmax
            probabilities) are written to ``<output_dir>/classification_predictions.json``.
        topk: the k of the reported accuracies.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | None = None,
        topk: Sequence[int] = (1, 5),
    ):
        if not topk or min(topk) < 1:
            raise ValueError(f"topk must be positive integers, got {topk}")
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.topk = tuple(int(k) for k in topk)
        self._predictions: list[dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for x, y in zip(inputs, outputs):
            logits = y["classification"]
            if logits.dim() != 1:
                raise ValueError(
                    f"'classification' must be one image's logits (C,), got {tuple(logits.shape)}"
                )
            probs = logits.detach().float().softmax(0)
            scores, classes = probs.topk(min(max(self.topk), probs.numel()))
            self._predictions.append(
                {
                    "image_id": x.get("image_id"),
                    "file_name": x.get("file_name"),
                    "class_id": int(x["class_id"]),
                    "topk": classes.tolist(),
                    "scores": scores.tolist(),
                }
            )

    def evaluate(self) -> OrderedDict | dict:
        """``{"classification": {"top1": %, "top5": %}}`` on the main process, ``{}`` elsewhere."""
        predictions = self._predictions
        if self.distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            raise RuntimeError(
                f"ClassificationEvaluator on {self.dataset_name!r} received no predictions"
            )
        if self.output_dir:
            PathManager.mkdirs(self.output_dir)
            with PathManager.open(os.path.join(self.output_dir, PREDICTIONS_FILE), "w") as f:
                json.dump(predictions, f)
        results = OrderedDict()
        for k in self.topk:
            hits = [p["class_id"] in p["topk"][:k] for p in predictions]
            results[f"top{k}"] = 100.0 * sum(hits) / len(predictions)
        logger.info(
            "%s: %s over %d images",
            self.dataset_name,
            ", ".join(f"{k} {v:.2f}" for k, v in results.items()),
            len(predictions),
        )
        return OrderedDict(classification=results)
