"""Top-down pose data: person instances of a keypoint dataset and the geometry of their crops.

A top-down pose model sees one person per input: a crop of fixed size (256x192) around the
person's box. This module turns image-level dataset dicts into person-level ones and provides
the affine geometry that maps the image into a crop and the crop's keypoints back.

Coordinates are continuous, detectron2's convention: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``
and its centre is ``(j + 0.5, i + 0.5)`` (detectron2's COCO loader adds 0.5 to the keypoint
indices of the JSON; ``COCOEvaluator`` subtracts it again). An affine map ``M`` (2x3) takes a
point ``p`` to ``M[:, :2] @ p + M[:, 2]`` in these coordinates on both sides, so a crop that is
flipped, scaled or rotated keeps its pixels exactly aligned with its keypoints.

Person dicts carry the image's ``file_name``, ``image_id``, ``height``, ``width`` and

* ``person_box``: [x0, y0, x1, y1] absolute (the crop is built around it);
* ``person_score``: 1 for ground-truth boxes, the detector's score otherwise;
* ``box_source``: ``"ground truth"`` or the detection file's path;
* ``person_keypoints``: (K, 3) [x, y, v] (ground truth only; v = 0 unlabelled, 1 occluded,
  2 visible).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter

import numpy as np
from detectron2.structures import BoxMode

__all__ = [
    "affine_points",
    "box_to_center_scale",
    "crop_affine",
    "half_body_center_scale",
    "invert_affine",
    "person_instances",
    "person_instances_from_detections",
    "warp_to_crop",
]

logger = logging.getLogger(__name__)


def box_to_center_scale(
    box: np.ndarray, aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and size (w, h) of the crop region of an xyxy box.

    The box is widened or heightened to ``aspect_ratio`` (crop width / height) about its centre,
    then both sides are multiplied by ``padding`` (mmpose's 1.25).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    w, h = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w * padding, h * padding])


def crop_affine(
    center: np.ndarray,
    scale: np.ndarray,
    output_size: tuple[int, int],
    rotation: float = 0.0,
    flip: bool = False,
) -> np.ndarray:
    """(2, 3) map from image to crop coordinates.

    The region of size ``scale`` (w, h) centred at ``center`` fills the crop of ``output_size``
    (h, w), its content turned by ``rotation`` degrees (counter-clockwise as displayed, y down);
    with ``flip`` the crop is mirrored left-right.
    """
    out_h, out_w = output_size
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    rot = np.array([[cos, sin], [-sin, cos]])
    linear = np.diag([out_w / scale[0], out_h / scale[1]]) @ rot
    if flip:
        linear = np.diag([-1.0, 1.0]) @ linear
    offset = np.array([out_w / 2.0, out_h / 2.0]) - linear @ np.asarray(center, dtype=np.float64)
    return np.concatenate([linear, offset[:, None]], axis=1)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a (2, 3) affine map."""
    linear_inv = np.linalg.inv(matrix[:, :2])
    return np.concatenate([linear_inv, -(linear_inv @ matrix[:, 2])[:, None]], axis=1)


def affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 2) points mapped by a (2, 3) affine ``matrix``."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """The crop of ``output_size`` (h, w) of an (H, W, C) image under the image-to-crop map
    ``matrix`` (bilinear; outside the image: 0)."""
    import cv2  # here: `import glid` must not load OpenCV through GLID (tests/test_import_light)

    # OpenCV's coordinates put pixel centres at integers: p_cv = p - 0.5 on both sides.
    linear = matrix[:, :2]
    offset = matrix[:, 2] + linear @ np.array([0.5, 0.5]) - 0.5
    cv_matrix = np.concatenate([linear, offset[:, None]], axis=1)
    out_h, out_w = output_size
    return cv2.warpAffine(
        image,
        cv_matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def half_body_center_scale(
    keypoints: np.ndarray,
    upper_body_ids: list[int],
    prefer_upper: bool,
    aspect_ratio: float,
    padding: float = 1.5,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Crop region of the labelled keypoints of the upper body (``prefer_upper``) or the lower
    body, the other half when the preferred one has fewer than 3 labelled keypoints, or None
    when neither has 3 (mmpose's half-body transform; callers draw ``prefer_upper`` at random)."""
    labelled = keypoints[:, 2] > 0
    upper = np.zeros(len(keypoints), dtype=bool)
    upper[upper_body_ids] = True
    halves = [labelled & upper, labelled & ~upper]
    if not prefer_upper:
        halves.reverse()
    chosen = next((h for h in halves if h.sum() >= 3), None)
    if chosen is None:
        return None
    points = keypoints[chosen, :2]
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return box_to_center_scale(np.array([x0, y0, x1, y1]), aspect_ratio, padding)


def _clipped_xyxy(annotation: dict, height: int, width: int) -> np.ndarray:
    box = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS)
    box = np.asarray(box, dtype=np.float64)
    box[0::2] = box[0::2].clip(0, width)
    box[1::2] = box[1::2].clip(0, height)
    return box


def _image_fields(record: dict) -> dict:
    return {k: record[k] for k in ("file_name", "image_id", "height", "width") if k in record}


def person_instances(dataset_dicts: list[dict], num_keypoints: int) -> list[dict]:
    """One dict per annotated person that has at least one labelled keypoint and a box of
    positive size (crowd regions skipped), with its ground-truth box (score 1) and keypoints."""
    persons = []
    for record in dataset_dicts:
        for annotation in record.get("annotations", []):
            if annotation.get("iscrowd", 0) or "keypoints" not in annotation:
                continue
            keypoints = np.asarray(annotation["keypoints"], dtype=np.float64).reshape(-1, 3)
            if len(keypoints) != num_keypoints:
                raise ValueError(
                    f"{record['file_name']}: a person has {len(keypoints)} keypoints, "
                    f"MODEL.GLID.POSE.NUM_KEYPOINTS is {num_keypoints}"
                )
            if not (keypoints[:, 2] > 0).any():
                continue
            box = _clipped_xyxy(annotation, record["height"], record["width"])
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            persons.append(
                {
                    **_image_fields(record),
                    "person_box": box.tolist(),
                    "person_score": 1.0,
                    "box_source": "ground truth",
                    "person_keypoints": keypoints.tolist(),
                }
            )
    return persons


def person_instances_from_detections(
    dataset_dicts: list[dict],
    detections_file: str,
    person_category_id: int = 1,
    score_thresh: float = 0.0,
) -> list[dict]:
    """One dict per detected person box of a COCO detection-results JSON (a list of
    ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``) on the images of
    ``dataset_dicts``: boxes of ``person_category_id`` with ``score >= score_thresh``.

    Raises:
        FileNotFoundError / ValueError naming the file when it is missing, not such a list, or
        has no person box on these images. Boxes of other images are counted in the log.
    """
    if not os.path.isfile(detections_file):
        raise FileNotFoundError(f"person detections file {detections_file} does not exist")
    with open(detections_file) as f:
        detections = json.load(f)
    if not isinstance(detections, list):
        raise ValueError(
            f"{detections_file}: expected a JSON list of COCO detection results, got "
            f"{type(detections).__name__}"
        )
    images = {record["image_id"]: record for record in dataset_dicts}
    persons, skipped = [], Counter()
    for i, det in enumerate(detections):
        missing = {"image_id", "category_id", "bbox", "score"} - set(det)
        if missing:
            raise ValueError(f"{detections_file}: result {i} lacks {sorted(missing)}")
        if det["category_id"] != person_category_id:
            skipped["other category"] += 1
            continue
        if det["score"] < score_thresh:
            skipped["below the score threshold"] += 1
            continue
        record = images.get(det["image_id"])
        if record is None:
            skipped["image not in the dataset"] += 1
            continue
        box = _clipped_xyxy(
            {"bbox": det["bbox"], "bbox_mode": BoxMode.XYWH_ABS}, record["height"], record["width"]
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            skipped["empty box"] += 1
            continue
        persons.append(
            {
                **_image_fields(record),
                "person_box": box.tolist(),
                "person_score": float(det["score"]),
                "box_source": detections_file,
            }
        )
    if not persons:
        raise ValueError(
            f"{detections_file}: no person box (category_id {person_category_id}, score >= "
            f"{score_thresh}) on the {len(images)} images of the dataset; skipped: {dict(skipped)}"
        )
    logger.info(
        "%d person boxes from %s on %d images; skipped: %s",
        len(persons),
        detections_file,
        len({p["image_id"] for p in persons}),
        dict(skipped) or "none",
    )
    return persons
