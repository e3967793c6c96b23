"""Registry of pixel decoders (``MODEL.GLID.PIXEL_DECODER``)."""

from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

PIXEL_DECODER_REGISTRY = Registry("GLID_PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders turn the encoder's ``res2..res5`` into
(1) multi-scale features at strides 32/16/8 (``HIDDEN_DIM`` channels, low resolution first) that
the transformer decoder reads, and (2) the per-pixel embedding map at stride 4 (``MASK_DIM``).
A registered class is built as ``cls(cfg, input_shape)``, returns
``(mask_features, [s32, s16, s8])`` from ``forward(features, with_mask_features=True)``
(``mask_features`` is ``None`` when not wanted) and lists the modules that only serve the
per-pixel map in ``mask_branch()`` and the encoder outputs only they read in
``mask_branch_inputs`` (both frozen for tasks that do not read the map).
"""


# Short config names (``MODEL.GLID.PIXEL_DECODER``) -> registered class names.
_CONFIG_NAMES = {"BiFPN": "BiFPNPixelDecoder", "MSDeformAttn": "MSDeformAttnPixelDecoder"}


def build_pixel_decoder(cfg, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by ``cfg.MODEL.GLID.PIXEL_DECODER`` (a short name above or
    any registered class name)."""
    name = cfg.MODEL.GLID.PIXEL_DECODER
    return PIXEL_DECODER_REGISTRY.get(_CONFIG_NAMES.get(name, name))(cfg, input_shape)
