"""Dataset registration; importing this package registers the GLID synthetic datasets, ImageNet
(``imagenet_{train,val}``, :mod:`.register_imagenet`) and the COCO-format datasets named in
``$GLID_COCO_DATASETS`` (see :mod:`.register_coco_env`)."""

from glid.data.datasets.register_coco_env import (
    COCO_DATASETS_ENV,
    register_coco_datasets_from_env,
)
from glid.data.datasets.register_imagenet import (
    imagenet_dataset_names,
    load_imagenet,
    register_imagenet,
)
from glid.data.datasets.register_synthetic import (
    load_depth_pairs,
    load_image_folder,
    register_all_synthetic,
    synthetic_dataset_names,
)

__all__ = [
    "COCO_DATASETS_ENV",
    "register_coco_datasets_from_env",
    "imagenet_dataset_names",
    "load_imagenet",
    "register_imagenet",
    "load_depth_pairs",
    "load_image_folder",
    "register_all_synthetic",
    "synthetic_dataset_names",
]
