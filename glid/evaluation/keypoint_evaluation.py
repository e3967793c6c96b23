"""Keypoint OKS AP of top-down pose results: OKS-NMS per image, then pycocotools.

A top-down model answers one person crop at a time, so the persons of an image are only
together once evaluation gathers them: :class:`KeypointEvaluator` is detectron2's
``COCOEvaluator`` (keypoints only, the official pycocotools ``COCOeval``) that first removes,
per image, every person whose OKS with a higher-scored one exceeds ``MODEL.GLID.POSE.
OKS_NMS_THRESH`` (mmpose's OKS-NMS; OKS with the mean of the two person boxes' areas).
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
from detectron2.evaluation import COCOEvaluator

__all__ = ["COCO_PERSON_SIGMAS", "KeypointEvaluator", "keypoint_oks", "oks_nms"]

# Per-keypoint OKS constants of COCO's 17 person keypoints (pycocotools' kpt_oks_sigmas).
COCO_PERSON_SIGMAS = (
    np.array(
        [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]
    )
    / 10.0
)  # fmt: skip


def keypoint_oks(
    gt: np.ndarray, gt_visible: np.ndarray, dt: np.ndarray, area: float, sigmas: np.ndarray
) -> float:
    """COCO's object keypoint similarity of a detection with a ground-truth person that has at
    least one labelled keypoint: mean over the labelled ones of ``exp(-d^2 / (2 area (2
    sigma)^2))``.

    Args:
        gt, dt: (K, 2) keypoint positions.
        gt_visible: (K,) bool, labelled ground-truth keypoints (at least one).
        area: the ground-truth person's area.
        sigmas: (K,) per-keypoint constants.
    """
    if not gt_visible.any():
        raise ValueError("OKS needs a ground-truth person with a labelled keypoint")
    d2 = ((np.asarray(dt, np.float64) - np.asarray(gt, np.float64)) ** 2).sum(-1)
    e = d2 / (2.0 * (area + np.spacing(1)) * (2.0 * sigmas) ** 2)
    return float(np.exp(-e[gt_visible]).mean())


def oks_nms(
    keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray, thresh: float
) -> list[int]:
    """Indices kept by greedy OKS-NMS, best score first.

    Args:
        keypoints: (P, K, 2) positions of P persons of one image.
        scores: (P,) person scores.
        areas: (P,) person areas (box w x h).
        sigmas: (K,) per-keypoint constants.
        thresh: a person is dropped when its OKS with a kept one exceeds it.
    """
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    every = np.ones(keypoints.shape[1], dtype=bool)
    keep = []
    while order:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = [
            j
            for j in order
            if keypoint_oks(
                keypoints[best], every, keypoints[j], (areas[best] + areas[j]) / 2.0, sigmas
            )
            <= thresh
        ]
    return keep


class KeypointEvaluator(COCOEvaluator):
    """``COCOEvaluator`` for keypoints with OKS-NMS over each image's persons (module docstring).

    Args:
        dataset_name: a registered COCO-style keypoint dataset (image-level ground truth).
        oks_nms_thresh: OKS-NMS threshold (>= 1 keeps every person).
        kpt_oks_sigmas: per-keypoint OKS constants (empty: COCO's person sigmas).
        box_source: where the person boxes came from, written to the log with the results.
        distributed, output_dir: as ``COCOEvaluator``.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        oks_nms_thresh: float = 0.9,
        kpt_oks_sigmas: tuple[float, ...] = (),
        box_source: str = "ground truth",
        distributed: bool = True,
        output_dir: str | None = None,
    ):
        super().__init__(
            dataset_name,
            tasks=("keypoints",),
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=False,
            kpt_oks_sigmas=kpt_oks_sigmas,
        )
        self._oks_nms_thresh = float(oks_nms_thresh)
        self._sigmas = np.asarray(kpt_oks_sigmas) if len(kpt_oks_sigmas) else COCO_PERSON_SIGMAS
        self._box_source = box_source

    def _eval_predictions(self, predictions, img_ids=None):
        per_image = defaultdict(list)
        for result in itertools.chain(*[p.get("instances", []) for p in predictions]):
            per_image[result["image_id"]].append(result)
        kept, total = [], 0
        for image_id, persons in per_image.items():
            total += len(persons)
            keypoints = np.array([p["keypoints"] for p in persons]).reshape(len(persons), -1, 3)
            scores = np.array([p["score"] for p in persons])
            areas = np.array([p["bbox"][2] * p["bbox"][3] for p in persons])
            keep = oks_nms(keypoints[..., :2], scores, areas, self._sigmas, self._oks_nms_thresh)
            kept.append({"image_id": image_id, "instances": [persons[i] for i in keep]})
        self._logger.info(
            "keypoint evaluation: person boxes from %s; OKS-NMS (%g) kept %d of %d persons",
            self._box_source,
            self._oks_nms_thresh,
            sum(len(k["instances"]) for k in kept),
            total,
        )
        super()._eval_predictions(kept, img_ids=img_ids)
