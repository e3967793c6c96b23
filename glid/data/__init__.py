"""GLID data: dataset mappers, the built-in generated dataset and dataset registration.

Importing ``glid.data`` registers the ``glid_synth_*`` datasets (lazily; see
:mod:`glid.data.datasets.register_synthetic`).
"""

from glid.data import dataset_mappers
from glid.data.datasets import (
    load_depth_pairs,
    load_image_folder,
    register_all_synthetic,
    synthetic_dataset_names,
)
from glid.data.synthetic import (
    SYNTH_SEM_SEG_CLASSES,
    SYNTH_STUFF_CLASSES,
    SYNTH_THING_CLASSES,
    generate_synthetic_dataset,
)

__all__ = [
    "SYNTH_SEM_SEG_CLASSES",
    "SYNTH_STUFF_CLASSES",
    "SYNTH_THING_CLASSES",
    "dataset_mappers",
    "generate_synthetic_dataset",
    "load_depth_pairs",
    "load_image_folder",
    "register_all_synthetic",
    "synthetic_dataset_names",
]
