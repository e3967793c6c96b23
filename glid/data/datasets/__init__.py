"""Dataset registration; importing this package registers the GLID synthetic datasets, ImageNet
(``imagenet_{train,val}``, :mod:`.register_imagenet`), ADE20K instance and panoptic
(``ade20k_{instance,panoptic}_{train,val}``, :mod:`.register_ade20k`), NYUv2 depth
(``nyuv2_depth_{train,test}``, :mod:`.register_nyuv2`) and the COCO-format
datasets named in ``$GLID_COCO_DATASETS`` (see :mod:`.register_coco_env`)."""

from glid.data.datasets.register_ade20k import (
    ade20k_dataset_names,
    load_ade20k_instance_json,
    load_ade20k_panoptic_json,
    register_all_ade20k,
)
from glid.data.datasets.register_coco_env import (
    COCO_DATASETS_ENV,
    register_coco_datasets_from_env,
)
from glid.data.datasets.register_imagenet import (
    imagenet_dataset_names,
    load_imagenet,
    register_imagenet,
)
from glid.data.datasets.register_nyuv2 import (
    load_nyuv2,
    nyuv2_dataset_names,
    register_nyuv2,
)
from glid.data.datasets.register_synthetic import (
    load_depth_pairs,
    load_image_folder,
    register_all_synthetic,
    synthetic_dataset_names,
)

__all__ = [
    "ade20k_dataset_names",
    "load_ade20k_instance_json",
    "load_ade20k_panoptic_json",
    "register_all_ade20k",
    "COCO_DATASETS_ENV",
    "register_coco_datasets_from_env",
    "imagenet_dataset_names",
    "load_imagenet",
    "register_imagenet",
    "load_nyuv2",
    "nyuv2_dataset_names",
    "register_nyuv2",
    "load_depth_pairs",
    "load_image_folder",
    "register_all_synthetic",
    "synthetic_dataset_names",
]
