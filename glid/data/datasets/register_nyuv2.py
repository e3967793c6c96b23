"""Registers NYUv2 depth in the layout depth papers use (BTS, AdaBins, BinsFormer):

```
<root>/nyu_depth_v2/
  sync/<scene>/rgb_NNNNN.jpg, sync_depth_NNNNN.png          training pairs (uint16, mm)
  official_splits/test/<scene>/rgb_NNNNN.jpg, sync_depth_NNNNN.png    the 654 Eigen test images
  nyudepthv2_train_files_with_gt.txt   "/<scene>/rgb_NNNNN.jpg /<scene>/sync_depth_NNNNN.png focal"
  nyudepthv2_test_files_with_gt.txt    the same, relative to official_splits/test/
```

``{prefix}_train`` reads ``sync/`` with the train split file (BTS's ~24K-frame "sync" set, or
the 795 labeled images written there by ``datasets/prepare_nyuv2.py``); ``{prefix}_test`` reads
``official_splits/test/`` with the test split file. Registration is lazy; loading raises a
FileNotFoundError naming the missing file and how to prepare it. Metadata: evaluator_type
"depth", depth_scale 1000 (PNG units per metre), min_depth 1e-3, max_depth 10 (m), eigen_crop.
"""

from __future__ import annotations

import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from glid.data.datasets.register_synthetic import DEPTH_METADATA, load_depth_pairs
from glid.data.datasets.synthetic_meta import default_root

__all__ = ["NYUV2_SPLITS", "load_nyuv2", "nyuv2_dataset_names", "register_nyuv2"]

logger = logging.getLogger(__name__)

# split -> (image / depth root relative to nyu_depth_v2/, split file name)
NYUV2_SPLITS = {
    "train": ("sync", "nyudepthv2_train_files_with_gt.txt"),
    "test": (os.path.join("official_splits", "test"), "nyudepthv2_test_files_with_gt.txt"),
}
NYUV2_METADATA = dict(DEPTH_METADATA, evaluator_type="depth", eigen_crop=True)

_HOW_TO = (
    "prepare NYUv2 with `python datasets/prepare_nyuv2.py --mat nyu_depth_v2_labeled.mat "
    "--splits splits.mat` (the 795 / 654 labeled images) or download BTS's sync training set "
    "and official test split (see datasets/README.md, NYUv2)"
)


def load_nyuv2(nyu_dir: str, split: str) -> list[dict]:
    """The dicts of one split (``train`` or ``test``) under ``nyu_dir`` (``.../nyu_depth_v2``)."""
    subdir, split_name = NYUV2_SPLITS[split]
    split_file = os.path.join(nyu_dir, split_name)
    data_root = os.path.join(nyu_dir, subdir)
    for path in (split_file, data_root):
        if not os.path.exists(path):
            raise FileNotFoundError(f"NYUv2 {split}: {path} does not exist; {_HOW_TO}")
    try:
        return load_depth_pairs(split_file, root=data_root)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"NYUv2 {split}: a file listed in {split_file} is missing ({e}); {_HOW_TO}"
        ) from e


def nyuv2_dataset_names(prefix: str = "nyuv2_depth") -> list[str]:
    """The names :func:`register_nyuv2` registers for ``prefix``."""
    return [f"{prefix}_{split}" for split in NYUV2_SPLITS]


def register_nyuv2(root: str | None = None, prefix: str = "nyuv2_depth") -> list[str]:
    """Registers ``{prefix}_train`` and ``{prefix}_test`` over ``<root>/nyu_depth_v2`` (nothing
    is read). Names already registered are kept.

    Args:
        root: datasets root; defaults to ``$DETECTRON2_DATASETS`` or ``datasets``.
        prefix: dataset name prefix (tests register a temporary root under another one).
    """
    nyu_dir = os.path.join(default_root() if root is None else root, "nyu_depth_v2")
    for split, name in zip(NYUV2_SPLITS, nyuv2_dataset_names(prefix)):
        if name in DatasetCatalog:
            logger.debug("%s is already registered; keeping it", name)
            continue
        DatasetCatalog.register(name, functools.partial(load_nyuv2, nyu_dir, split))
        subdir, split_name = NYUV2_SPLITS[split]
        MetadataCatalog.get(name).set(
            image_root=os.path.join(nyu_dir, subdir),
            split_file=os.path.join(nyu_dir, split_name),
            **NYUV2_METADATA,
        )
    return nyuv2_dataset_names(prefix)


register_nyuv2()
