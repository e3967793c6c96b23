"""Scenes for semantic, instance and panoptic segmentation: stuff regions plus 1-5 possibly
occluding shapes, and their COCO instance annotations and panoptic id maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from glid.data.datasets.synthetic_meta import (
    SYNTH_STUFF_DATASET_IDS,
    SYNTH_THING_CLASSES,
    SYNTH_THING_DATASET_IDS,
)
from glid.data.synthetic.canvas import stuff_background
from glid.data.synthetic.shapes import (
    Shape,
    annotatable,
    mask_bbox,
    mask_to_polygons,
    sample_shape,
    shape_mask,
)

__all__ = ["Scene", "compose_scene", "instance_annotations", "panoptic_ids"]

_MIN_OBJECT_AREA = 40  # pixels; smaller visible parts make unreliable polygons


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Returns a boolean mask of pixels whose 4-neighbourhood holds another label."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


@dataclass
class Scene:
    """A composed scene.

    Attributes:
        image: uint8 (H, W, 3) RGB image.
        semantic: uint8 (H, W) ids over SYNTH_SEM_SEG_CLASSES, 255 = unlabeled.
        instances: int32 (H, W) map, 0 = no thing, k = ``shapes[k - 1]`` (visible part).
        shapes: the things, in drawing order (later ones occlude earlier ones).
    """

    image: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray
    shapes: list[Shape]


def _layout_ok(instances: np.ndarray, full_areas: Sequence[int], ids: Sequence[int]) -> bool:
    """Checks that instances ``ids`` keep a large enough, polygon-friendly visible part."""
    for k in ids:
        full = full_areas[k - 1]
        visible = instances == k
        if visible.sum() < max(_MIN_OBJECT_AREA, 0.3 * full):
            return False
        if not annotatable(visible, _MIN_OBJECT_AREA):
            return False
    return True


def compose_scene(rng: np.random.Generator, hw: tuple[int, int], max_tries: int = 20) -> Scene:
    """Composes stuff regions and 1-5 possibly occluding shapes into a labelled scene."""
    canvas, stuff = stuff_background(rng, hw)
    semantic = (stuff + len(SYNTH_THING_CLASSES)).astype(np.uint8)
    semantic[_boundary(stuff)] = 255  # unlabeled seams between stuff regions, as in ADE20K
    instances = np.zeros(hw, np.int32)
    shapes: list[Shape] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(1, 6))):
        for _ in range(max_tries):
            shape = sample_shape(rng, hw)
            mask = shape_mask(shape, hw)
            new_id = len(shapes) + 1
            touched = [int(k) for k in np.unique(instances[mask]) if k] + [new_id]
            candidate = instances.copy()
            candidate[mask] = new_id
            if _layout_ok(candidate, [*full_areas, int(mask.sum())], touched):
                break
        else:
            continue
        instances = candidate
        shapes.append(shape)
        full_areas.append(int(mask.sum()))
        canvas.paint(mask, shape.color, rng)
    for k, shape in enumerate(shapes, start=1):
        semantic[instances == k] = shape.label
    return Scene(canvas.render(rng), semantic, instances, shapes)


def instance_annotations(scene: Scene, image_id: int, first_ann_id: int) -> list[dict]:
    """Returns the COCO instance annotations (visible parts, polygons) of a scene's things."""
    anns = []
    for k, shape in enumerate(scene.shapes, start=1):
        visible = scene.instances == k
        anns.append(
            {
                "id": first_ann_id + len(anns),
                "image_id": image_id,
                "category_id": SYNTH_THING_DATASET_IDS[shape.label],
                "segmentation": mask_to_polygons(visible),
                "area": int(visible.sum()),
                "bbox": mask_bbox(visible),
                "iscrowd": 0,
            }
        )
    return anns


def panoptic_ids(scene: Scene) -> tuple[np.ndarray, list[dict]]:
    """Returns the panoptic id map (0 = void) and the segments_info of a scene.

    Segment ids are ``category_id * 1000 + instance index`` so that ids use several channels.
    """
    ids = np.zeros(scene.semantic.shape, np.int64)
    segments = []
    num_things = len(SYNTH_THING_CLASSES)
    for s, cat_id in enumerate(SYNTH_STUFF_DATASET_IDS):
        sel = (scene.semantic == num_things + s) & (scene.instances == 0)
        if sel.any():
            segments.append(_segment(cat_id * 1000, cat_id, False, sel))
            ids[sel] = cat_id * 1000
    for k, shape in enumerate(scene.shapes, start=1):
        sel = scene.instances == k
        cat_id = SYNTH_THING_DATASET_IDS[shape.label]
        segments.append(_segment(cat_id * 1000 + k, cat_id, True, sel))
        ids[sel] = cat_id * 1000 + k
    return ids, segments


def _segment(seg_id: int, cat_id: int, isthing: bool, mask: np.ndarray) -> dict:
    """Returns one COCO panoptic ``segments_info`` entry."""
    return {
        "id": seg_id,
        "category_id": cat_id,
        "isthing": int(isthing),
        "iscrowd": 0,
        "bbox": mask_bbox(mask),
        "area": int(mask.sum()),
    }
