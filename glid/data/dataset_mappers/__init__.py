"""Dataset mappers (dataset dict -> model input), registered by name; see :mod:`.build`."""

from __future__ import annotations

from .base_mapper import GLIDDatasetMapper
from .build import DATASET_MAPPER_REGISTRY, build_dataset_mapper, dataset_mapper_name
from .classification_mapper import ImageClassificationDatasetMapper
from .depth_mapper import DepthDatasetMapper
from .detection_mapper import DetectionDatasetMapper
from .instance_mapper import InstanceSegmentationDatasetMapper, PanopticSegmentationDatasetMapper
from .pose_mapper import TopDownPoseDatasetMapper
from .semantic_mapper import SemanticSegmentationDatasetMapper

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "DepthDatasetMapper",
    "DetectionDatasetMapper",
    "GLIDDatasetMapper",
    "ImageClassificationDatasetMapper",
    "InstanceSegmentationDatasetMapper",
    "PanopticSegmentationDatasetMapper",
    "SemanticSegmentationDatasetMapper",
    "TopDownPoseDatasetMapper",
    "build_dataset_mapper",
    "dataset_mapper_name",
]
