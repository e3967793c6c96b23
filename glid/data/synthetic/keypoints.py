"""Person keypoints: front-facing stick figures (COCO's 17 keypoints), foreground occluders and
their COCO person-keypoint annotations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from glid.data.synthetic.canvas import Canvas, sample_color, stuff_background
from glid.data.synthetic.shapes import fill_holes, mask_bbox, mask_to_polygons

__all__ = ["compose_keypoint_scene"]


def _person_keypoints(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Samples a front-facing stick-figure pose.

    Returns:
        (17, 2) keypoints in continuous pixel coordinates, COCO order, and the figure unit
        (pixels per body unit; the figure spans about 1.4 units from head top to ankles).
    """
    h, w = hw
    unit = rng.uniform(0.45, 0.85) * h / 1.4
    hip = np.array([rng.uniform(0.12, 0.88) * w, rng.uniform(0.45, 0.8) * h])
    kp = np.zeros((17, 2))
    kp[0] = (0.0, -0.79)
    kp[1:5] = [(0.04, -0.83), (-0.04, -0.83), (0.075, -0.80), (-0.075, -0.80)]
    kp[5:7] = [(0.14, -0.6), (-0.14, -0.6)]
    kp[11:13] = [(0.08, 0.0), (-0.08, 0.0)]
    for side, sign in ((0, 1.0), (1, -1.0)):  # person's left is image right (facing us)
        upper, bend = rng.uniform(0.1, 2.6), rng.uniform(-1.2, 1.2)
        kp[7 + side] = kp[5 + side] + 0.27 * _direction(sign, upper)
        kp[9 + side] = kp[7 + side] + 0.24 * _direction(sign, upper + bend)
        thigh, knee = rng.uniform(0.0, 0.45), rng.uniform(-0.3, 0.3)
        kp[13 + side] = kp[11 + side] + 0.26 * _direction(sign, thigh)
        kp[15 + side] = kp[13 + side] + 0.25 * _direction(sign, thigh + knee)
    lean = rng.uniform(-0.15, 0.15)
    c, s = math.cos(lean), math.sin(lean)
    return kp @ np.array([[c, s], [-s, c]]) * unit + hip, unit


def _direction(sign: float, angle: float) -> np.ndarray:
    """Unit vector at ``angle`` from straight down, mirrored horizontally by ``sign``."""
    return np.array([sign * math.sin(angle), math.cos(angle)])


def _person_masks(kp: np.ndarray, unit: float, hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Rasterises a stick figure into (body, head) boolean masks."""
    body = np.zeros(hw, np.uint8)
    thick = max(2, int(round(0.09 * unit)))

    def pt(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0])), int(round(p[1]))

    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16)):
        cv2.line(body, pt(kp[a]), pt(kp[b]), 1, thick)
    cv2.fillPoly(body, [np.round(kp[[5, 6, 12, 11]]).astype(np.int32)], 1)
    neck = (kp[5] + kp[6]) / 2
    cv2.line(body, pt(neck), pt(kp[0]), 1, thick)
    head = np.zeros(hw, np.uint8)
    cv2.circle(head, pt(kp[0] + (0.0, -0.02 * unit)), max(3, int(round(0.115 * unit))), 1, -1)
    return body.astype(bool) & ~head.astype(bool), head.astype(bool)


@dataclass
class _Person:
    keypoints: np.ndarray
    full_area: int


def _keypoint_visibility(kp: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    """Returns (17, 3) COCO keypoints [x, y, v] as pixel indices: v=2 visible, 1 occluded, 0 out."""
    h, w = owner.shape
    out = np.zeros((17, 3), np.int64)
    for i, (x, y) in enumerate(np.floor(kp).astype(np.int64)):
        if 0 <= x < w and 0 <= y < h:
            out[i] = (x, y, 2 if owner[y, x] == k else 1)
    return out


def compose_keypoint_scene(
    rng: np.random.Generator, hw: tuple[int, int], image_id: int, first_ann_id: int
) -> tuple[np.ndarray, list[dict]]:
    """Draws 1-2 stick figures (and maybe a foreground occluder) and their COCO annotations."""
    canvas, _ = stuff_background(rng, hw)
    owner = np.zeros(hw, np.int32)
    people: list[_Person] = []
    for _ in range(int(rng.integers(1, 3))):
        for attempt in range(10):
            kp, unit = _person_keypoints(rng, hw)
            body, head = _person_masks(kp, unit, hw)
            candidate = owner.copy()
            candidate[body | head] = len(people) + 1
            trial = [*people, _Person(kp, int((body | head).sum()))]
            if _people_ok(candidate, trial) or (not people and attempt == 9):
                break  # the first person is kept even if it never passes the checks
        else:
            continue
        owner = candidate
        people.append(trial[-1])
        clothes = sample_color(rng, rng.uniform(0, 360), (0.5, 0.9), (0.4, 0.9))
        canvas.paint(body, clothes, rng)
        canvas.paint(head, sample_color(rng, 25.0, (0.3, 0.6), (0.6, 0.95), 5.0), rng, noise=4.0)
        if unit >= 25:  # eyes as dark dots once the head is big enough to show them
            eyes = np.zeros(hw, bool)
            for ex, ey in np.floor(kp[1:3]).astype(int):
                eyes[np.clip(ey, 0, hw[0] - 1), np.clip(ex, 0, hw[1] - 1)] = True
            canvas.paint(eyes & head, (30, 30, 30), rng, noise=2.0, shade=0.0)
    _maybe_occlude(rng, canvas, owner, people)
    anns = []
    for k, person in enumerate(people, start=1):
        anns.append(_person_annotation(person, owner, k, image_id, first_ann_id + k - 1))
    return canvas.render(rng), anns


def _people_ok(owner: np.ndarray, people: Sequence[_Person]) -> bool:
    """True if every person keeps a visible area and at least 3 labelled keypoints."""
    for k, person in enumerate(people, start=1):
        visible = int((owner == k).sum())
        kps = _keypoint_visibility(person.keypoints, owner, k)
        if visible < max(60, 0.35 * person.full_area) or (kps[:, 2] > 0).sum() < 3:
            return False
    return True


def _maybe_occlude(
    rng: np.random.Generator, canvas: Canvas, owner: np.ndarray, people: Sequence[_Person]
) -> None:
    """With probability 0.35 paints a foreground block up from the bottom edge (a 'table')."""
    if rng.random() >= 0.35:
        return
    h, w = owner.shape
    x0 = int(rng.uniform(0.0, 0.6) * w)
    x1 = min(w, x0 + int(rng.uniform(0.3, 0.7) * w))
    block = np.zeros((h, w), bool)
    block[int(rng.uniform(0.7, 0.9) * h) :, x0:x1] = True
    candidate = np.where(block, 0, owner)
    color = sample_color(rng, 30.0, (0.3, 0.6), (0.3, 0.6))
    if _people_ok(candidate, people):
        owner[:] = candidate
        canvas.paint(block, color, rng, shade=0.25)


def _person_annotation(
    person: _Person, owner: np.ndarray, k: int, image_id: int, ann_id: int
) -> dict:
    """Returns the COCO person-keypoints annotation of person ``k``."""
    kps = _keypoint_visibility(person.keypoints, owner, k)
    mask = fill_holes(owner == k)
    x, y, bw, bh = mask_bbox(mask)
    x0, y0, x1, y1 = x, y, x + bw, y + bh
    for kx, ky in kps[kps[:, 2] > 0, :2]:  # occluded keypoints may lie outside the visible part
        x0, y0, x1, y1 = min(x0, kx), min(y0, ky), max(x1, kx + 1), max(y1, ky + 1)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": mask_to_polygons(mask),
        "area": int(mask.sum()),
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "iscrowd": 0,
        "keypoints": kps.ravel().tolist(),
        "num_keypoints": int((kps[:, 2] > 0).sum()),
    }
