"""Writes the generated dataset to disk in the real datasets' formats (COCO JSON, panoptic and
semantic PNGs, depth PNGs + split files, class folders), plus the manifest; entry point
:func:`generate_synthetic_dataset`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time

import cv2
import numpy as np
from panopticapi.utils import id2rgb

from glid.data.datasets.synthetic_meta import (
    COCO_PERSON_KEYPOINT_NAMES,
    COCO_PERSON_SKELETON,
    DATASET_DIRNAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SPLITS,
    SYNTH_STUFF_CLASSES,
    SYNTH_STUFF_COLORS,
    SYNTH_STUFF_DATASET_IDS,
    SYNTH_THING_CLASSES,
    SYNTH_THING_COLORS,
    SYNTH_THING_DATASET_IDS,
    default_root,
    synthetic_dir,
)
from glid.data.synthetic.classification import compose_classification_image
from glid.data.synthetic.depth import compose_depth_scene
from glid.data.synthetic.keypoints import compose_keypoint_scene
from glid.data.synthetic.scenes import compose_scene, instance_annotations, panoptic_ids

logger = logging.getLogger(__name__)

__all__ = ["generate_synthetic_dataset", "read_manifest"]


_STREAMS = {"scene": 0, "keypoints": 1, "depth": 2, "classification": 3}


def _rng(seed: int, stream: str, split: str, index: int) -> np.random.Generator:
    """Returns the generator of one image, independent of all other images."""
    return np.random.default_rng([seed, _STREAMS[stream], SPLITS.index(split), index])


def _write_image(path: str, array: np.ndarray) -> None:
    """Writes an RGB (H, W, 3) or single-channel array; the format follows the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])  # OpenCV wants BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.endswith(".jpg") else []
    if not cv2.imwrite(path, array, params):
        raise OSError(f"could not write {path}")


def _write_json(path: str, obj: dict) -> None:
    """Writes a JSON file, creating its directory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, separators=(",", ":")))  # one-shot dumps uses the C encoder


def _coco_file(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict:
    """Assembles a COCO-format JSON object."""
    return {
        "info": {"description": "GLID synthetic dataset", "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _image_entry(image_id: int, file_name: str, hw: tuple[int, int]) -> dict:
    """Returns a COCO ``images`` entry."""
    return {"id": image_id, "file_name": file_name, "height": hw[0], "width": hw[1]}


def _thing_categories() -> list[dict]:
    """Returns the COCO categories of the things."""
    return [
        {"id": cid, "name": name, "supercategory": "shape", "isthing": 1, "color": list(color)}
        for cid, name, color in zip(
            SYNTH_THING_DATASET_IDS, SYNTH_THING_CLASSES, SYNTH_THING_COLORS
        )
    ]


def _stuff_categories() -> list[dict]:
    """Returns the COCO panoptic categories of the stuff classes."""
    return [
        {"id": cid, "name": name, "supercategory": "stuff", "isthing": 0, "color": list(color)}
        for cid, name, color in zip(
            SYNTH_STUFF_DATASET_IDS, SYNTH_STUFF_CLASSES, SYNTH_STUFF_COLORS
        )
    ]


def _write_scene_split(out: str, split: str, count: int, seed: int, hw: tuple[int, int]) -> None:
    """Writes images, semantic PNGs, COCO instances and COCO panoptic of one split."""
    images, instances, panoptic = [], [], []
    for index in range(count):
        image_id, stem = index + 1, f"{index + 1:06d}"
        scene = compose_scene(_rng(seed, "scene", split, index), hw)
        _write_image(os.path.join(out, "images", split, stem + ".jpg"), scene.image)
        _write_image(os.path.join(out, "sem_seg", split, stem + ".png"), scene.semantic)
        ids, segments = panoptic_ids(scene)
        rgb = id2rgb(ids).astype(np.uint8)
        _write_image(os.path.join(out, f"panoptic_{split}", stem + ".png"), rgb)
        images.append(_image_entry(image_id, stem + ".jpg", hw))
        instances += instance_annotations(scene, image_id, len(instances) + 1)
        panoptic.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
        )
    ann_dir = os.path.join(out, "annotations")
    _write_json(
        os.path.join(ann_dir, f"instances_{split}.json"),
        _coco_file(images, instances, _thing_categories()),
    )
    _write_json(
        os.path.join(ann_dir, f"panoptic_{split}.json"),
        _coco_file(images, panoptic, _thing_categories() + _stuff_categories()),
    )


def _write_keypoint_split(out: str, split: str, count: int, seed: int, hw: tuple[int, int]) -> None:
    """Writes the person-keypoint images and their COCO JSON of one split."""
    images, anns = [], []
    for index in range(count):
        image_id, name = index + 1, f"{index + 1:06d}.jpg"
        rng = _rng(seed, "keypoints", split, index)
        image, people = compose_keypoint_scene(rng, hw, image_id, len(anns) + 1)
        _write_image(os.path.join(out, "keypoint_images", split, name), image)
        images.append(_image_entry(image_id, name, hw))
        anns += people
    category = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
        "skeleton": [list(edge) for edge in COCO_PERSON_SKELETON],
    }
    path = os.path.join(out, "annotations", f"person_keypoints_{split}.json")
    _write_json(path, _coco_file(images, anns, [category]))


def _write_depth_split(out: str, split: str, count: int, seed: int, hw: tuple[int, int]) -> None:
    """Writes RGB/depth pairs and the split file ``depth/{split}.txt`` of one split."""
    lines = []
    for index in range(count):
        stem = f"{split}/{index + 1:06d}"
        image, depth_mm, focal = compose_depth_scene(_rng(seed, "depth", split, index), hw)
        _write_image(os.path.join(out, "depth", stem + "_rgb.jpg"), image)
        _write_image(os.path.join(out, "depth", stem + "_depth.png"), depth_mm)
        lines.append(f"{stem}_rgb.jpg {stem}_depth.png {focal:.4f}\n")
    with open(os.path.join(out, "depth", f"{split}.txt"), "w", encoding="utf-8") as f:
        f.writelines(lines)


def _write_classification_split(
    out: str, split: str, count: int, seed: int, hw: tuple[int, int]
) -> None:
    """Writes ``classification/{split}/<class>/NNNNNN.jpg``, classes in round-robin order."""
    for name in SYNTH_THING_CLASSES:
        os.makedirs(os.path.join(out, "classification", split, name), exist_ok=True)
    for index in range(count):
        label = index % len(SYNTH_THING_CLASSES)
        image = compose_classification_image(_rng(seed, "classification", split, index), hw, label)
        name = SYNTH_THING_CLASSES[label]
        _write_image(
            os.path.join(out, "classification", split, name, f"{index + 1:06d}.jpg"), image
        )


def _manifest(seed: int, num_train: int, num_val: int, image_size: tuple[int, int]) -> dict:
    """Returns the manifest that identifies one generated dataset."""
    return {
        "name": DATASET_DIRNAME,
        "version": FORMAT_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [int(image_size[0]), int(image_size[1])],
    }


def read_manifest(dataset_dir: str) -> dict | None:
    """Returns the manifest of a generated dataset, or None if absent or unreadable."""
    try:
        with open(os.path.join(dataset_dir, MANIFEST_NAME), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _move_into_place(tmp: str, out: str, manifest: dict) -> None:
    """Replaces ``out`` by the finished ``tmp`` directory.

    Renames only, so readers never see a half-written dataset; if another process finished the
    same dataset first, its copy is kept.
    """
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=f".{DATASET_DIRNAME}.old-", dir=os.path.dirname(out))
        os.rename(out, os.path.join(old, "d"))
    try:
        os.rename(tmp, out)
    except OSError:
        if read_manifest(out) != manifest:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_synthetic_dataset(
    root: str | None = None,
    *,
    seed: int = 0,
    num_train: int = 160,
    num_val: int = 40,
    image_size: tuple[int, int] = (128, 128),
    force: bool = False,
) -> str:
    """Generates the synthetic dataset under ``<root>/glid_synth`` unless it is already there.

    Args:
        root: datasets root; defaults to ``$DETECTRON2_DATASETS`` or ``datasets``.
        seed: random seed; the output is a deterministic function of all arguments.
        num_train: number of images per task in the train split.
        num_val: number of images per task in the val split.
        image_size: (height, width) of every image, each at least 32.
        force: regenerate even if a dataset with the same manifest exists.

    Returns:
        The dataset directory ``<root>/glid_synth``.
    """
    if min(num_train, num_val) < 1:
        raise ValueError(f"need at least one image per split, got {num_train=}, {num_val=}")
    hw = (int(image_size[0]), int(image_size[1]))
    if min(hw) < 32:
        raise ValueError(f"image_size must be at least 32x32, got {image_size}")
    root = default_root() if root is None else root
    out = synthetic_dir(root)
    manifest = _manifest(seed, num_train, num_val, hw)
    if not force and read_manifest(out) == manifest:
        logger.info("Synthetic dataset %s is up to date", out)
        return out
    start = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{DATASET_DIRNAME}.tmp-", dir=root)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is meant to be shared
    try:
        for split, count in zip(SPLITS, (num_train, num_val)):
            for write in (
                _write_scene_split,
                _write_keypoint_split,
                _write_depth_split,
                _write_classification_split,
            ):
                write(tmp, split, count, seed, hw)
        _write_json(os.path.join(tmp, MANIFEST_NAME), manifest)
        _move_into_place(tmp, out, manifest)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Generated synthetic dataset %s in %.1fs", out, time.perf_counter() - start)
    return out
