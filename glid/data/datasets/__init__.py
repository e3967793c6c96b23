"""Dataset registration; importing this package registers the GLID synthetic datasets."""

from glid.data.datasets.register_synthetic import (
    load_depth_pairs,
    load_image_folder,
    register_all_synthetic,
    synthetic_dataset_names,
)

__all__ = [
    "load_depth_pairs",
    "load_image_folder",
    "register_all_synthetic",
    "synthetic_dataset_names",
]
