"""GLID model parts; importing this registers the backbone, pixel decoders, tasks and the
``GLID`` meta-architecture with detectron2's registries."""

from .backbone import D2SwinTransformer, build_glid_swin_backbone
from .criterion import SetCriterion, average_num_targets, deep_supervision
from .heads import LinearTaskHead
from .matcher import HungarianMatcher
from .meta_arch import GLID
from .pixel_decoder import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .queries import GLIDQueries, regular_grid_points
from .tasks import TASK_REGISTRY, DecoderInputs, GLIDTask, build_task, build_task_head
from .transformer_decoder import GLIDTransformerDecoder

__all__ = [
    "D2SwinTransformer",
    "build_glid_swin_backbone",
    "SetCriterion",
    "average_num_targets",
    "deep_supervision",
    "LinearTaskHead",
    "HungarianMatcher",
    "GLID",
    "PIXEL_DECODER_REGISTRY",
    "build_pixel_decoder",
    "GLIDQueries",
    "regular_grid_points",
    "TASK_REGISTRY",
    "DecoderInputs",
    "GLIDTask",
    "build_task",
    "build_task_head",
    "GLIDTransformerDecoder",
]
