"""Registers ImageNet-1k (``imagenet_train``, ``imagenet_val``) in the ImageFolder layout.

::

    $DETECTRON2_DATASETS/imagenet/
      train/<wnid>/*.JPEG     1000 class folders (n01440764, ...)
      val/<wnid>/*.JPEG       the 50,000 validation images in the same 1000 class folders

Registration is lazy: it records paths only. ``DatasetCatalog.get(name)`` lists the folders
(image sizes are not read: the mapper fills them in), sets the metadata ``classes`` (the sorted
train folders: class id = position, torchvision's rule) and raises a FileNotFoundError naming
the missing directory and the expected layout. Validation uses train's class list; its folders
must be exactly train's, otherwise a ValueError names the differences (a flat ``val/`` of
images, as distributed, must first be sorted into class folders: see ``datasets/README.md``).
"""

from __future__ import annotations

import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from glid.data.datasets.register_synthetic import IMAGE_EXTENSIONS, load_image_folder
from glid.data.datasets.synthetic_meta import default_root

__all__ = ["IMAGENET_SPLITS", "imagenet_dataset_names", "load_imagenet", "register_imagenet"]

logger = logging.getLogger(__name__)

IMAGENET_SPLITS = ("train", "val")
_LAYOUT = (
    "expected the ImageFolder layout imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG "
    "(validation images sorted into the same class folders as train; see datasets/README.md)"
)


def _class_folders(split_dir: str) -> list[str]:
    """The sorted sub-directory names of ``split_dir``; FileNotFoundError when it is missing."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"{split_dir} does not exist: {_LAYOUT}")
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _has_loose_images(split_dir: str) -> bool:
    return any(
        e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in os.scandir(split_dir)
    )


def _imagenet_classes(imagenet_dir: str, split: str) -> list[str]:
    """Train's sorted class folders; for val, checks that its folders are the same."""
    train_dir = os.path.join(imagenet_dir, "train")
    if split == "train":
        return _class_folders(train_dir)
    split_dir = os.path.join(imagenet_dir, split)
    found = _class_folders(split_dir)
    if not os.path.isdir(train_dir):
        logger.warning(
            "%s is missing: class ids of %s follow its own sorted folders, assumed to be train's",
            train_dir,
            split_dir,
        )
        return found
    classes = _class_folders(train_dir)
    if found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        hint = (
            f"; {split_dir} holds loose images: sort them into class folders first"
            if not found and _has_loose_images(split_dir)
            else ""
        )
        raise ValueError(
            f"{split_dir}: class folders differ from {train_dir}'s: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} ({len(missing)}), extra {extra[:10]}"
            f"{' ...' if len(extra) > 10 else ''} ({len(extra)}){hint}. {_LAYOUT}"
        )
    return classes


def _load(imagenet_dir: str, split: str) -> tuple[list[str], list[dict]]:
    classes = _imagenet_classes(imagenet_dir, split)
    dicts = load_image_folder(os.path.join(imagenet_dir, split), classes, read_sizes=False)
    if not dicts:
        raise FileNotFoundError(f"no images under {os.path.join(imagenet_dir, split)}: {_LAYOUT}")
    return classes, dicts


def load_imagenet(imagenet_dir: str, split: str) -> list[dict]:
    """Loads one split of ``imagenet_dir`` (the folder holding ``train/`` and ``val/``).

    Returns:
        Dicts with ``file_name``, ``class_id`` (index in train's sorted class folders) and
        ``image_id``; no ``height``/``width`` (reading 1.28M headers takes long; the mapper
        fills them in).
    """
    return _load(imagenet_dir, split)[1]


def _load_and_set_classes(name: str, imagenet_dir: str, split: str) -> list[dict]:
    """:func:`load_imagenet`, and the class list into ``name``'s metadata."""
    classes, dicts = _load(imagenet_dir, split)
    MetadataCatalog.get(name).set(classes=classes)  # detectron2 refuses a changed value
    return dicts


def imagenet_dataset_names(prefix: str = "imagenet") -> list[str]:
    """The names :func:`register_imagenet` registers for ``prefix``."""
    return [f"{prefix}_{split}" for split in IMAGENET_SPLITS]


def register_imagenet(root: str | None = None, prefix: str = "imagenet") -> list[str]:
    """Registers ``{prefix}_train`` and ``{prefix}_val`` over ``<root>/imagenet`` (nothing is
    read). Names already registered are kept, so calling this twice is safe.

    Args:
        root: datasets root; defaults to ``$DETECTRON2_DATASETS`` or ``datasets``.
        prefix: dataset name prefix (tests register a temporary root under another one).

    Returns:
        The dataset names for ``prefix``.
    """
    imagenet_dir = os.path.join(default_root() if root is None else root, "imagenet")
    for split, name in zip(IMAGENET_SPLITS, imagenet_dataset_names(prefix)):
        if name in DatasetCatalog:
            logger.debug("%s is already registered; keeping it", name)
            continue
        DatasetCatalog.register(
            name, functools.partial(_load_and_set_classes, name, imagenet_dir, split)
        )
        MetadataCatalog.get(name).set(
            evaluator_type="classification", image_root=os.path.join(imagenet_dir, split)
        )
    return imagenet_dataset_names(prefix)


register_imagenet()
