"""Registers ADE20K instance and panoptic segmentation (the files of
``datasets/prepare_ade20k_pan_seg.py`` / ``prepare_ade20k_ins_seg.py``, the same layout as
Mask2Former's scripts) under ``$DETECTRON2_DATASETS/ADEChallengeData2016/``:

======================== ==================================================== ======================
name                     files                                                evaluator_type
======================== ==================================================== ======================
``ade20k_panoptic_{s}``  ``ade20k_panoptic_{s}/*.png`` + ``ade20k_panoptic_  ``ade20k_panoptic_seg``
                         {s}.json``, ``annotations_detectron2/{split}/*.png``
``ade20k_instance_{s}``  ``ade20k_instance_{s}.json`` (COCO, RLE masks)       ``coco``
======================== ==================================================== ======================

(``{s}`` in train, val; ``{split}`` the matching training / validation folder.) Registration is
lazy; loading a dataset whose files are missing raises a FileNotFoundError naming the file and
the script that writes it.

Panoptic dicts are detectron2's "standard" ones plus ``sem_seg_file_name``: ``segments_info``
category ids are contiguous 0..149 (= the JSON's ids = the semantic PNG values), with
``isthing``. As in Mask2Former, ``thing_dataset_id_to_contiguous_id`` holds the 100 things and
``stuff_dataset_id_to_contiguous_id`` all 150 classes (so the semantic evaluator maps every class
back); unlike Mask2Former, ``thing_classes`` lists all 150 names like ``stuff_classes``, so that
both are indexed by the contiguous id (detectron2's Visualizer looks names up that way); which
classes are things says ``thing_dataset_id_to_contiguous_id``. Instance dicts have contiguous
ids 0..99 over the things (``thing_classes`` of 100 names).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from glid.data.datasets.ade20k_meta import (
    ADE20K_150_CLASSES,
    ADE20K_150_COLORS,
    ADE20K_SPLITS,
    ADE20K_THING_IDS,
)
from glid.data.datasets.synthetic_meta import default_root

__all__ = [
    "ADE20K_DIRNAME",
    "ade20k_dataset_names",
    "ade20k_instance_metadata",
    "ade20k_panoptic_metadata",
    "load_ade20k_instance_json",
    "load_ade20k_panoptic_json",
    "register_all_ade20k",
]

logger = logging.getLogger(__name__)

ADE20K_DIRNAME = "ADEChallengeData2016"
_PAN_SCRIPT = "python datasets/prepare_ade20k_pan_seg.py"
_INS_SCRIPT = "python datasets/prepare_ade20k_ins_seg.py"


def ade20k_panoptic_metadata() -> dict:
    """Class names, colours and id maps of the panoptic datasets (see the module docstring)."""
    names, colors = list(ADE20K_150_CLASSES), [list(c) for c in ADE20K_150_COLORS]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": list(colors),
        "thing_dataset_id_to_contiguous_id": {i: i for i in ADE20K_THING_IDS},
        "stuff_dataset_id_to_contiguous_id": {i: i for i in range(len(names))},
    }


def ade20k_instance_metadata() -> dict:
    """The 100 thing classes: names, colours and dataset id (0-based ADE20K class) -> 0..99."""
    return {
        "thing_classes": [ADE20K_150_CLASSES[i] for i in ADE20K_THING_IDS],
        "thing_colors": [list(ADE20K_150_COLORS[i]) for i in ADE20K_THING_IDS],
        "thing_dataset_id_to_contiguous_id": {d: k for k, d in enumerate(ADE20K_THING_IDS)},
    }


def load_ade20k_panoptic_json(
    json_file: str, image_dir: str, panoptic_dir: str, semantic_dir: str, meta: dict
) -> list[dict]:
    """A COCO panoptic JSON of ADE20K -> detectron2 "standard" panoptic dicts.

    Returns:
        Dicts with ``file_name`` (``image_dir/<name>.jpg``), ``image_id`` (the JSON's, a string
        like ``"ADE_train_00000001"``), ``height``, ``width``, ``pan_seg_file_name``,
        ``sem_seg_file_name`` and ``segments_info`` (contiguous ``category_id``, ``isthing``).
    """
    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    sizes = {img["id"]: (img["height"], img["width"]) for img in data.get("images", [])}
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    dicts = []
    for ann in data["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        segments = []
        for seg in ann["segments_info"]:
            cat = seg["category_id"]
            if cat not in things and cat not in stuff:
                raise ValueError(f"{json_file}: image {ann['image_id']}: unknown category {cat}")
            contiguous = things[cat] if cat in things else stuff[cat]
            segments.append(dict(seg, category_id=contiguous, isthing=cat in things))
        record = {
            "file_name": os.path.join(image_dir, stem + ".jpg"),
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_dir, ann["file_name"]),
            "sem_seg_file_name": os.path.join(semantic_dir, stem + ".png"),
            "segments_info": segments,
        }
        if ann["image_id"] in sizes:
            record["height"], record["width"] = sizes[ann["image_id"]]
        dicts.append(record)
    if not dicts:
        raise ValueError(f"{json_file} lists no annotated images")
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        if not os.path.isfile(dicts[0][key]):
            raise FileNotFoundError(f"{dicts[0][key]} (listed by {json_file}) does not exist")
    return dicts


def load_ade20k_instance_json(json_file: str, image_dir: str) -> list[dict]:
    """A COCO instances JSON of ADE20K (category ids = 0-based ADE20K classes of the 100
    things, RLE masks) -> detectron2 dicts with contiguous ``category_id`` 0..99.

    The JSON's category names are not used (Mask2Former's files name the classes after the full
    ADE20K index); its category ids must be the 100 thing classes.
    """
    with open(json_file, encoding="utf-8") as f:
        ids = sorted(c["id"] for c in json.load(f)["categories"])
    if ids != sorted(ADE20K_THING_IDS):
        raise ValueError(
            f"{json_file}: category ids must be the 100 ADE20K thing classes "
            f"(0-based: {ADE20K_THING_IDS[:4]}...), got {ids[:4]}... ({len(ids)} ids)"
        )
    id_map = ade20k_instance_metadata()["thing_dataset_id_to_contiguous_id"]
    dicts = load_coco_json(json_file, image_dir)
    for record in dicts:
        for obj in record["annotations"]:
            obj["category_id"] = id_map[obj["category_id"]]  # load_coco_json set bbox_mode
    return dicts


def _checked(loader: Callable[[], list[dict]], required: Sequence[str], script: str) -> list[dict]:
    """Runs ``loader`` after checking that the ``required`` paths exist."""
    for path in required:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist. ADE20K needs the ADEChallengeData2016 release "
                f"(images/, annotations/, annotations_instance/) under $DETECTRON2_DATASETS; then "
                f"run `{script}` (see datasets/README.md, section ADE20K)."
            )
    return loader()


def ade20k_dataset_names(prefix: str = "ade20k") -> list[str]:
    """The names :func:`register_all_ade20k` registers for ``prefix``."""
    return [f"{prefix}_{kind}_{s}" for kind in ("panoptic", "instance") for s in ADE20K_SPLITS]


def register_all_ade20k(root: str | None = None, prefix: str = "ade20k") -> list[str]:
    """Registers ``{prefix}_panoptic_{train,val}`` and ``{prefix}_instance_{train,val}`` over
    ``<root>/ADEChallengeData2016`` (nothing is read). Names already registered are kept.

    Args:
        root: datasets root; default ``$DETECTRON2_DATASETS`` or ``datasets``.
        prefix: name prefix (tests register a temporary root under another one).
    """
    d = os.path.join(default_root() if root is None else root, ADE20K_DIRNAME)
    for split, folder in ADE20K_SPLITS.items():
        images = os.path.join(d, "images", folder)
        instance_json = os.path.join(d, f"ade20k_instance_{split}.json")

        name = f"{prefix}_panoptic_{split}"
        if name not in DatasetCatalog:
            pan_dir = os.path.join(d, f"ade20k_panoptic_{split}")
            pan_json = os.path.join(d, f"ade20k_panoptic_{split}.json")
            sem_dir = os.path.join(d, "annotations_detectron2", folder)
            meta = ade20k_panoptic_metadata()
            loader = functools.partial(
                load_ade20k_panoptic_json, pan_json, images, pan_dir, sem_dir, meta
            )
            required = (images, pan_json, pan_dir, sem_dir)
            DatasetCatalog.register(
                name, functools.partial(_checked, loader, required, _PAN_SCRIPT)
            )
            MetadataCatalog.get(name).set(
                image_root=images,
                panoptic_root=pan_dir,
                panoptic_json=pan_json,
                sem_seg_root=sem_dir,
                json_file=instance_json,
                evaluator_type="ade20k_panoptic_seg",
                ignore_label=255,
                label_divisor=1000,
                **meta,
            )

        name = f"{prefix}_instance_{split}"
        if name not in DatasetCatalog:
            loader = functools.partial(load_ade20k_instance_json, instance_json, images)
            DatasetCatalog.register(
                name, functools.partial(_checked, loader, (images, instance_json), _INS_SCRIPT)
            )
            MetadataCatalog.get(name).set(
                image_root=images,
                json_file=instance_json,
                evaluator_type="coco",
                **ade20k_instance_metadata(),
            )
    return ade20k_dataset_names(prefix)


register_all_ade20k()
