"""GLID data: dataset mappers (registered by name), the built-in generated dataset's metadata
and registration.

Importing ``glid.data`` registers the ``glid_synth_*`` datasets (lazily; see
:mod:`glid.data.datasets.register_synthetic`). The generator that writes them,
:mod:`glid.data.synthetic` (OpenCV, panopticapi), is not imported here: use
``from glid.data.synthetic import generate_synthetic_dataset``.
"""

from glid.data import dataset_mappers
from glid.data.dataset_mappers import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from glid.data.datasets import (
    load_depth_pairs,
    load_image_folder,
    register_all_synthetic,
    synthetic_dataset_names,
)
from glid.data.datasets.synthetic_meta import (
    COCO_PERSON_KEYPOINT_NAMES,
    COCO_PERSON_SKELETON,
    SYNTH_SEM_SEG_CLASSES,
    SYNTH_STUFF_CLASSES,
    SYNTH_STUFF_COLORS,
    SYNTH_STUFF_DATASET_IDS,
    SYNTH_THING_CLASSES,
    SYNTH_THING_COLORS,
    SYNTH_THING_DATASET_IDS,
    default_root,
    synthetic_dir,
)
from glid.data.task_dataset import task_dataset_dicts, test_dataset_dicts

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "build_dataset_mapper",
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_SKELETON",
    "SYNTH_SEM_SEG_CLASSES",
    "SYNTH_STUFF_CLASSES",
    "SYNTH_STUFF_COLORS",
    "SYNTH_STUFF_DATASET_IDS",
    "SYNTH_THING_CLASSES",
    "SYNTH_THING_COLORS",
    "SYNTH_THING_DATASET_IDS",
    "dataset_mappers",
    "default_root",
    "load_depth_pairs",
    "load_image_folder",
    "register_all_synthetic",
    "synthetic_dataset_names",
    "synthetic_dir",
    "task_dataset_dicts",
    "test_dataset_dicts",
]
