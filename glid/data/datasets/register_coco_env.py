"""Register your own COCO-format datasets without Python, from an environment variable.

detectron2's ``register_coco_instances`` must be called from Python, and a config can only name
datasets. So GLID reads ``GLID_COCO_DATASETS`` when ``glid`` is imported (in ``train_net.py``,
``demo/demo.py`` and every process they start)::

    export GLID_COCO_DATASETS="my_train=/d/train.json,/d/train;my_val=/d/val.json,/d/val"
    python train_net.py --config-file configs/coco_det_glid.yaml \
        DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)' MODEL.GLID.NUM_CLASSES 3

Entries are separated by ``;``, each ``name=json_file,image_root``; relative paths are taken from
the current directory. Each name is registered with ``register_coco_instances`` (metadata
``evaluator_type="coco"``, so ``COCOEvaluator`` gives box AP); the class names and the
contiguous class ids come from the JSON's ``categories`` when it is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["COCO_DATASETS_ENV", "parse_coco_datasets", "register_coco_datasets_from_env"]

COCO_DATASETS_ENV = "GLID_COCO_DATASETS"


def parse_coco_datasets(spec: str) -> list[tuple[str, str, str]]:
    """``"name=json,image_root;..."`` -> ``[(name, json_file, image_root), ...]`` (absolute
    paths). Empty entries are skipped; a malformed entry raises ValueError naming it."""
    entries = []
    for entry in spec.split(";"):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, paths = entry.partition("=")
        parts = [p.strip() for p in paths.split(",")]
        if not sep or not name.strip() or len(parts) != 2 or not all(parts):
            raise ValueError(
                f"{COCO_DATASETS_ENV}: entry {entry!r} must be 'name=json_file,image_root' "
                "(entries separated by ';')"
            )
        entries.append((name.strip(), os.path.abspath(parts[0]), os.path.abspath(parts[1])))
    return entries


def register_coco_datasets_from_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Register every dataset of ``environ[GLID_COCO_DATASETS]``; returns their names.

    A name registered before with the same files is kept (importing twice is safe); a name taken
    by another dataset raises ValueError.
    """
    names = []
    for name, json_file, image_root in parse_coco_datasets(environ.get(COCO_DATASETS_ENV, "")):
        if name in DatasetCatalog:
            meta = MetadataCatalog.get(name)
            if meta.get("json_file", None) != json_file:
                raise ValueError(
                    f"{COCO_DATASETS_ENV}: dataset name {name!r} is already registered "
                    f"(json_file={meta.get('json_file', None)!r}); choose another name"
                )
        else:
            register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return names


register_coco_datasets_from_env()
