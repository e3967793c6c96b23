"""Registers the GLID synthetic datasets, plus loaders for the depth and classification layouts.

Registration is lazy: it only records paths and metadata. Data is read when
``DatasetCatalog.get(name)`` runs, which raises a FileNotFoundError naming the missing file and
how to generate it.

Datasets (``{split}`` in train, val): ``glid_synth_sem_seg_{split}``,
``glid_synth_instances_{split}``, ``glid_synth_panoptic_{split}``,
``glid_synth_keypoints_{split}``, ``glid_synth_depth_{split}``, ``glid_synth_cls_{split}``.

:func:`load_depth_pairs` and :func:`load_image_folder` take any root, so the real NYUv2 (split
file of "rgb depth [focal]" lines) and ImageNet (``<split>/<class>/<image>``) layouts reuse them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg, register_coco_instances
from detectron2.data.datasets.coco_panoptic import register_coco_panoptic
from PIL import Image

from glid.data.datasets.synthetic_meta import (
    COCO_PERSON_KEYPOINT_NAMES,
    COCO_PERSON_SKELETON,
    SPLITS,
    SYNTH_SEM_SEG_CLASSES,
    SYNTH_STUFF_COLORS,
    SYNTH_STUFF_DATASET_IDS,
    SYNTH_THING_CLASSES,
    SYNTH_THING_COLORS,
    SYNTH_THING_DATASET_IDS,
    default_root,
    synthetic_dir,
)

__all__ = [
    "DEPTH_METADATA",
    "IMAGE_EXTENSIONS",
    "load_depth_pairs",
    "load_image_folder",
    "register_all_synthetic",
    "synthetic_dataset_names",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# NYUv2 conventions: PNG units per metre and the usual evaluation range.
DEPTH_METADATA = {"depth_scale": 1000.0, "min_depth": 1e-3, "max_depth": 10.0}


# ----------------------------------------------------------------------------------------------
# Generic loaders
# ----------------------------------------------------------------------------------------------


def _image_size(path: str) -> tuple[int, int]:
    """Returns (height, width) of an image, reading only its header."""
    with Image.open(path) as im:
        return im.height, im.width


def load_depth_pairs(split_file: str, root: str | None = None) -> list[dict]:
    """Loads an NYUv2-style split file of ``rgb_path depth_path [focal]`` lines.

    Args:
        split_file: text file, one pair per line; blank lines and ``#`` comments are skipped.
        root: directory the paths are relative to (default: the split file's directory).

    Returns:
        Dicts with ``file_name``, ``depth_file_name``, ``height``, ``width``, ``image_id`` and,
        when the line has a third column, ``focal_length`` (pixels).
    """
    root = os.path.dirname(split_file) if root is None else root
    dicts = []
    with open(split_file, encoding="utf-8") as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{split_file}: expected 'rgb depth [focal]', got {line!r}")
            rgb, depth = (os.path.join(root, p.lstrip("/")) for p in fields[:2])
            height, width = _image_size(rgb)
            record = {"file_name": rgb, "depth_file_name": depth, "height": height}
            record.update(width=width, image_id=len(dicts))
            if len(fields) > 2:
                record["focal_length"] = float(fields[2])
            dicts.append(record)
    return dicts


def load_image_folder(
    root: str, classes: Sequence[str] | None = None, read_sizes: bool = True
) -> list[dict]:
    """Loads an ImageFolder layout ``root/<class_name>/<image>``.

    Args:
        root: split directory.
        classes: class names, whose positions are the class ids; default: the sorted
            sub-directory names (torchvision's rule). Every sub-directory must be listed.
        read_sizes: read ``height``/``width`` from the image headers (slow for ImageNet's
            1.28M images: pass False there and let the mapper read the size).

    Returns:
        Dicts with ``file_name``, ``class_id``, ``image_id`` and, with read_sizes,
        ``height`` and ``width``.
    """
    found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    classes = found if classes is None else list(classes)
    if set(found) - set(classes):
        raise ValueError(f"{root}: folders {sorted(set(found) - set(classes))} not in classes")
    dicts = []
    for class_id, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        if not os.path.isdir(class_dir):
            continue
        for file in sorted(os.listdir(class_dir)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(class_dir, file)
                record = {"file_name": path, "class_id": class_id, "image_id": len(dicts)}
                if read_sizes:
                    record["height"], record["width"] = _image_size(path)
                dicts.append(record)
    return dicts


# ----------------------------------------------------------------------------------------------
# Synthetic registration
# ----------------------------------------------------------------------------------------------


def _missing_data_error(path: str, root: str) -> FileNotFoundError:
    """Builds the error raised when a registered synthetic dataset has not been generated."""
    return FileNotFoundError(
        f"{path} does not exist: the GLID synthetic dataset under {root!r} has not been "
        f"generated. Generate it with `python datasets/prepare_synthetic.py --root {root}` or "
        f"`glid.data.synthetic.generate_synthetic_dataset({root!r})`."
    )


def _checked(loader: Callable[[], list[dict]], required: Sequence[str], root: str) -> list[dict]:
    """Runs ``loader`` after checking that the ``required`` paths exist."""
    for path in required:
        if not os.path.exists(path):
            raise _missing_data_error(path, root)
    return loader()


def _guard(name: str, required: Sequence[str], root: str) -> None:
    """Wraps the loader registered under ``name`` with an existence check of ``required``."""
    loader = DatasetCatalog.pop(name)
    DatasetCatalog.register(name, functools.partial(_checked, loader, tuple(required), root))


def _all_colors() -> list[list[int]]:
    """Returns the colours of SYNTH_SEM_SEG_CLASSES."""
    return [list(c) for c in SYNTH_THING_COLORS + SYNTH_STUFF_COLORS]


def _panoptic_metadata() -> dict:
    """Returns detectron2's "standard" panoptic metadata.

    As in detectron2's ``coco_panoptic_standard``, there is one contiguous id space over all
    classes (equal to the semantic ids), so thing_classes and stuff_classes both list them all.
    """
    num_things = len(SYNTH_THING_CLASSES)
    return {
        "thing_classes": list(SYNTH_SEM_SEG_CLASSES),
        "thing_colors": _all_colors(),
        "stuff_classes": list(SYNTH_SEM_SEG_CLASSES),
        "stuff_colors": _all_colors(),
        "thing_dataset_id_to_contiguous_id": {d: i for i, d in enumerate(SYNTH_THING_DATASET_IDS)},
        "stuff_dataset_id_to_contiguous_id": {
            d: num_things + i for i, d in enumerate(SYNTH_STUFF_DATASET_IDS)
        },
    }


def _keypoint_metadata() -> dict:
    """Returns the person-keypoint metadata (names, flip map, skeleton drawing rules)."""
    names = list(COCO_PERSON_KEYPOINT_NAMES)
    flip = [(n, "right_" + n[5:]) for n in names if n.startswith("left_")]
    rules = [(names[a - 1], names[b - 1], (255, 128, 0)) for a, b in COCO_PERSON_SKELETON]
    return {
        "thing_classes": ["person"],
        "thing_colors": [[220, 20, 60]],
        "keypoint_names": names,
        "keypoint_flip_map": flip,
        "keypoint_connection_rules": rules,
    }


def _register_sem_seg(name: str, d: str, split: str, root: str) -> None:
    """Registers ADE20K-style semantic segmentation (detectron2's ``load_sem_seg``)."""
    images, sem_root = os.path.join(d, "images", split), os.path.join(d, "sem_seg", split)
    loader = functools.partial(load_sem_seg, sem_root, images, gt_ext="png", image_ext="jpg")
    DatasetCatalog.register(name, functools.partial(_checked, loader, (sem_root, images), root))
    MetadataCatalog.get(name).set(
        stuff_classes=list(SYNTH_SEM_SEG_CLASSES),
        stuff_colors=_all_colors(),
        ignore_label=255,
        evaluator_type="sem_seg",
        image_root=images,
        sem_seg_root=sem_root,
    )


def _register_instances(name: str, d: str, split: str, root: str) -> None:
    """Registers COCO instances (things only, non-contiguous category ids)."""
    json_file = os.path.join(d, "annotations", f"instances_{split}.json")
    images = os.path.join(d, "images", split)
    meta = {
        "thing_classes": list(SYNTH_THING_CLASSES),
        "thing_colors": [list(c) for c in SYNTH_THING_COLORS],
        "thing_dataset_id_to_contiguous_id": {k: i for i, k in enumerate(SYNTH_THING_DATASET_IDS)},
    }
    register_coco_instances(name, meta, json_file, images)
    _guard(name, [json_file, images], root)


def _register_panoptic(name: str, d: str, split: str, root: str) -> None:
    """Registers COCO panoptic with detectron2's ``register_coco_panoptic`` ("standard")."""
    panoptic_json = os.path.join(d, "annotations", f"panoptic_{split}.json")
    panoptic_root = os.path.join(d, f"panoptic_{split}")
    images = os.path.join(d, "images", split)
    instances_json = os.path.join(d, "annotations", f"instances_{split}.json")
    register_coco_panoptic(
        name, _panoptic_metadata(), images, panoptic_root, panoptic_json, instances_json
    )
    _guard(name, [panoptic_json, panoptic_root, images], root)


def _register_keypoints(name: str, d: str, split: str, root: str) -> None:
    """Registers COCO person keypoints."""
    json_file = os.path.join(d, "annotations", f"person_keypoints_{split}.json")
    images = os.path.join(d, "keypoint_images", split)
    register_coco_instances(name, _keypoint_metadata(), json_file, images)
    _guard(name, [json_file, images], root)


def _register_depth(name: str, d: str, split: str, root: str) -> None:
    """Registers NYUv2-style depth pairs listed in ``depth/{split}.txt``."""
    split_file = os.path.join(d, "depth", f"{split}.txt")
    loader = functools.partial(load_depth_pairs, split_file)
    DatasetCatalog.register(name, functools.partial(_checked, loader, (split_file,), root))
    MetadataCatalog.get(name).set(evaluator_type="depth", split_file=split_file, **DEPTH_METADATA)


def _register_cls(name: str, d: str, split: str, root: str) -> None:
    """Registers the ImageFolder classification split."""
    image_root, classes = os.path.join(d, "classification", split), list(SYNTH_THING_CLASSES)
    loader = functools.partial(load_image_folder, image_root, classes)
    DatasetCatalog.register(name, functools.partial(_checked, loader, (image_root,), root))
    MetadataCatalog.get(name).set(
        classes=classes, evaluator_type="classification", image_root=image_root
    )


_REGISTRARS: dict[str, Callable[[str, str, str, str], None]] = {
    "sem_seg": _register_sem_seg,
    "instances": _register_instances,
    "panoptic": _register_panoptic,
    "keypoints": _register_keypoints,
    "depth": _register_depth,
    "cls": _register_cls,
}


def synthetic_dataset_names(prefix: str = "glid_synth") -> list[str]:
    """Returns the names :func:`register_all_synthetic` registers for ``prefix``."""
    return [f"{prefix}_{task}_{split}" for task in _REGISTRARS for split in SPLITS]


def register_all_synthetic(root: str | None = None, prefix: str = "glid_synth") -> list[str]:
    """Registers the synthetic datasets of ``<root>/glid_synth`` (nothing is read or generated).

    Names already in the DatasetCatalog are left as they are, so calling this twice is safe.

    Args:
        root: datasets root; defaults to ``$DETECTRON2_DATASETS`` or ``datasets``.
        prefix: dataset name prefix; e.g. tests register a temporary root under another one.

    Returns:
        All dataset names for ``prefix`` (registered now or before).
    """
    root = default_root() if root is None else root
    d = synthetic_dir(root)
    for split in SPLITS:
        for task, register in _REGISTRARS.items():
            name = f"{prefix}_{task}_{split}"
            if name in DatasetCatalog:
                logger.debug("%s is already registered; keeping it", name)
                continue
            register(name, d, split, root)
    return synthetic_dataset_names(prefix)


register_all_synthetic()
