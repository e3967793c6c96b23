"""GLID model parts; importing this registers the backbone, pixel decoders, tasks and the
``GLID`` meta-architecture with detectron2's registries."""

from .backbone import D2SwinTransformer, build_glid_swin_backbone
from .criterion import MaskSetCriterion, build_mask_criterion
from .heads import LinearTaskHead
from .matcher import HungarianMaskMatcher
from .meta_arch import GLID
from .pixel_decoder import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .queries import GLIDQueries, regular_grid_points
from .tasks import TASK_REGISTRY, build_task, build_task_head
from .transformer_decoder import GLIDTransformerDecoder

__all__ = [
    "D2SwinTransformer",
    "build_glid_swin_backbone",
    "MaskSetCriterion",
    "build_mask_criterion",
    "LinearTaskHead",
    "HungarianMaskMatcher",
    "GLID",
    "PIXEL_DECODER_REGISTRY",
    "build_pixel_decoder",
    "GLIDQueries",
    "regular_grid_points",
    "TASK_REGISTRY",
    "build_task",
    "build_task_head",
    "GLIDTransformerDecoder",
]
