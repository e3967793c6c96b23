"""BiFPN pixel decoder: weighted bidirectional fusion over strides 4/8/16/32 (EfficientDet).

The topology is data (:func:`bifpn_nodes`), not unrolled code: each node resamples its inputs to
its level, fuses them with the fused fast-normalized-fusion op (+ SiLU), then applies a conv +
GroupNorm. The stride-4 output becomes the per-pixel embedding map (1x1 conv to ``MASK_DIM``);
the stride 8/16/32 outputs are the multi-scale features the transformer decoder reads.

The repeats are listed by their conv type (``MODEL.GLID.BIFPN.CONV_TYPES``): ``"conv"`` is a
full 3x3 conv, ``"sep"`` EfficientDet's depthwise-separable 3x3. The default (one full repeat,
then two separable ones) puts the decoder at 4.9M parameters and 33.8 GFLOPs on Swin-B features
of a 640x640 image, Tab. 2's figures (5.0M / 33.8G).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from glid.layers import fast_normalized_fusion

from .build import PIXEL_DECODER_REGISTRY

__all__ = ["BiFPNPixelDecoder", "FusionNode", "bifpn_nodes"]

IN_FEATURES = ("res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class FusionNode:
    """A BiFPN node: ``level`` indexes the pyramid (0 = finest); ``inputs`` index the running
    list of maps (first the input levels, then every earlier node's output)."""

    level: int
    inputs: tuple[int, ...]


def bifpn_nodes(num_levels: int) -> tuple[tuple[FusionNode, ...], tuple[int, ...]]:
    """EfficientDet's BiFPN graph over ``num_levels`` levels.

    Returns the nodes (top-down path, then bottom-up path) and, per level, the index of its
    output in the running list.
    """
    nodes: list[FusionNode] = []
    top_down = {num_levels - 1: num_levels - 1}  # level -> latest top-down map
    for level in range(num_levels - 2, -1, -1):
        nodes.append(FusionNode(level, (level, top_down[level + 1])))
        top_down[level] = num_levels + len(nodes) - 1
    outputs = {0: top_down[0]}
    for level in range(1, num_levels):
        same_level = (level, top_down[level]) if level < num_levels - 1 else (level,)
        nodes.append(FusionNode(level, (*same_level, outputs[level - 1])))
        outputs[level] = num_levels + len(nodes) - 1
    return tuple(nodes), tuple(outputs[level] for level in range(num_levels))


def _resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling, or max-pool downsampling by an integer factor, to ``size``."""
    h = x.shape[-2]
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if h < size[0]:
        return F.interpolate(x, size=size, mode="nearest")
    stride = h // size[0]
    if x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad):
        # The CPU's NCHW max-pool is slow (26 ms for 256x128x128, one thread); channels-last
        # with both conversions takes 12 ms, the same values. Not in training: its backward
        # is slower that way.
        x = x.contiguous(memory_format=torch.channels_last)
        pooled = F.max_pool2d(x, kernel_size=stride + 1, stride=stride, padding=stride // 2)
        return pooled.contiguous()
    return F.max_pool2d(x, kernel_size=stride + 1, stride=stride, padding=stride // 2)


def _node_conv(conv_type: str, channels: int, norm: str) -> nn.Module:
    if conv_type == "conv":
        return Conv2d(channels, channels, 3, padding=1, bias=False, norm=get_norm(norm, channels))
    if conv_type == "sep":
        return nn.Sequential(
            Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            Conv2d(channels, channels, 1, bias=False, norm=get_norm(norm, channels)),
        )
    raise ValueError(f"BiFPN conv type must be 'conv' or 'sep', got {conv_type!r}")


class BiFPNLayer(nn.Module):
    """One BiFPN repeat."""

    def __init__(self, num_levels: int, channels: int, conv_type: str, norm: str, eps: float):
        super().__init__()
        self.nodes, self.outputs = bifpn_nodes(num_levels)
        self.eps = eps
        self.fusion_weights = nn.ParameterList(
            [nn.Parameter(torch.ones(len(n.inputs))) for n in self.nodes]
        )
        self.convs = nn.ModuleList([_node_conv(conv_type, channels, norm) for _ in self.nodes])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = list(feats)
        sizes = [f.shape[-2:] for f in feats]
        for node, weights, conv in zip(self.nodes, self.fusion_weights, self.convs):
            inputs = [_resample(maps[i], sizes[node.level]) for i in node.inputs]
            maps.append(
                conv(fast_normalized_fusion(inputs, weights, eps=self.eps, activation="silu"))
            )
        return [maps[i] for i in self.outputs]


@PIXEL_DECODER_REGISTRY.register()
class BiFPNPixelDecoder(nn.Module):
    """BiFPN over ``res2..res5``; stride-4 output -> per-pixel embedding map.

    Args:
        input_shape: the encoder's ``ShapeSpec`` per feature name (``res2..res5``).
        conv_dim: channels of the pyramid (``HIDDEN_DIM``).
        mask_dim: channels of the per-pixel embedding map (``MASK_DIM``).
        conv_types: one entry per repeat, ``"conv"`` or ``"sep"``.
        norm: detectron2 norm name (``"GN"``).
        fusion_eps: epsilon of fast normalized fusion.
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        conv_types: tuple[str, ...],
        norm: str = "GN",
        fusion_eps: float = 1e-4,
    ):
        super().__init__()
        missing = [n for n in IN_FEATURES if n not in input_shape]
        if missing:
            raise ValueError(f"BiFPN needs encoder features {missing}, got {sorted(input_shape)}")
        if not conv_types:
            raise ValueError("BiFPN needs at least one repeat (MODEL.GLID.BIFPN.CONV_TYPES)")
        self.input_proj = nn.ModuleList(
            [
                Conv2d(
                    input_shape[n].channels, conv_dim, 1, bias=False, norm=get_norm(norm, conv_dim)
                )
                for n in IN_FEATURES
            ]
        )
        self.layers = nn.ModuleList(
            [BiFPNLayer(len(IN_FEATURES), conv_dim, t, norm, fusion_eps) for t in conv_types]
        )
        self.mask_features = Conv2d(conv_dim, mask_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        g = cfg.MODEL.GLID
        return {
            "input_shape": input_shape,
            "conv_dim": g.HIDDEN_DIM,
            "mask_dim": g.MASK_DIM,
            "conv_types": tuple(g.BIFPN.CONV_TYPES),
            "norm": g.BIFPN.NORM,
            "fusion_eps": g.BIFPN.FUSION_EPS,
        }

    # Encoder outputs that only the mask branch reads (none: res2 enters the fusion).
    mask_branch_inputs = ()

    def mask_branch(self) -> list[nn.Module]:
        """The modules that only compute the per-pixel embedding map."""
        return [self.mask_features]

    def forward(
        self, features: dict[str, torch.Tensor], with_mask_features: bool = True
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Returns ``(mask_features (B, E, H/4, W/4) or None when not wanted, [s32, s16, s8]
        each (B, D, h, w))``."""
        feats = [proj(features[n]) for proj, n in zip(self.input_proj, IN_FEATURES)]
        for layer in self.layers:
            feats = layer(feats)
        mask_features = self.mask_features(feats[0]) if with_mask_features else None
        return mask_features, feats[:0:-1]
