"""BiFPN pixel decoder: weighted bidirectional fusion over strides 8/16/32 (EfficientDet).

The topology is data (:data:`BIFPN_NODES`), not unrolled code: each node resamples its inputs to
its level, fuses them with the fused fast-normalized-fusion op (+ SiLU), then applies a
depthwise-separable 3x3 conv + GroupNorm. A lateral path from ``res2`` gives the per-pixel
embedding map at stride 4, as in Mask2Former's pixel decoders.
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

__all__ = ["BiFPNPixelDecoder", "FusionNode", "BIFPN_NODES"]


@dataclass(frozen=True)
class FusionNode:
    """A BiFPN node: ``level`` indexes the pyramid (0 = stride 8); ``inputs`` index the running
    list of feature maps (first the input levels, then every earlier node's output)."""

    level: int
    inputs: tuple[int, ...]


# Levels 0, 1, 2 = strides 8, 16, 32; entries 0-2 of the running list are the inputs P3, P4, P5.
BIFPN_NODES: tuple[FusionNode, ...] = (
    FusionNode(level=1, inputs=(1, 2)),  # 3: P4 top-down
    FusionNode(level=0, inputs=(0, 3)),  # 4: P3 out
    FusionNode(level=1, inputs=(1, 3, 4)),  # 5: P4 out
    FusionNode(level=2, inputs=(2, 5)),  # 6: P5 out
)
BIFPN_OUTPUTS: tuple[int, ...] = (4, 5, 6)  # P3, P4, P5 outputs, by level


def _resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling or max-pool downsampling by an integer factor to ``size``."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h < size[0]:
        return F.interpolate(x, size=size, mode="nearest")
    stride = h // size[0]
    return F.max_pool2d(x, kernel_size=stride + 1, stride=stride, padding=stride // 2)


class SeparableConvNorm(nn.Sequential):
    """Depthwise 3x3 conv, pointwise 1x1 conv, norm."""

    def __init__(self, channels: int, norm: str):
        super().__init__(
            Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            Conv2d(channels, channels, 1, bias=False, norm=get_norm(norm, channels)),
        )


class BiFPNLayer(nn.Module):
    """One BiFPN repeat over three levels."""

    def __init__(self, channels: int, norm: str, eps: float):
        super().__init__()
        self.eps = eps
        self.fusion_weights = nn.ParameterList(
            [nn.Parameter(torch.ones(len(node.inputs))) for node in BIFPN_NODES]
        )
        self.convs = nn.ModuleList([SeparableConvNorm(channels, norm) for _ in BIFPN_NODES])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = list(feats)
        sizes = [f.shape[-2:] for f in feats]
        for node, weights, conv in zip(BIFPN_NODES, self.fusion_weights, self.convs):
            inputs = [_resample(maps[i], sizes[node.level]) for i in node.inputs]
            fused = fast_normalized_fusion(inputs, weights, eps=self.eps, activation="silu")
            maps.append(conv(fused))
        return [maps[i] for i in BIFPN_OUTPUTS]


@PIXEL_DECODER_REGISTRY.register()
class BiFPNPixelDecoder(nn.Module):
    """BiFPN over ``res3..res5`` plus a stride-4 lateral path for the per-pixel embedding map.

    Args:
        input_shape: the encoder's ``ShapeSpec`` per feature name (``res2..res5``).
        conv_dim: channels of the pyramid (``HIDDEN_DIM``).
        mask_dim: channels of the per-pixel embedding map (``MASK_DIM``).
        num_repeats: stacked BiFPN layers.
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
        num_repeats: int,
        norm: str = "GN",
        fusion_eps: float = 1e-4,
    ):
        super().__init__()
        for name in ("res2", "res3", "res4", "res5"):
            if name not in input_shape:
                raise ValueError(f"BiFPN needs encoder feature {name!r}, got {sorted(input_shape)}")
        self.in_features = ["res3", "res4", "res5"]
        self.input_proj = nn.ModuleList(
            [
                Conv2d(input_shape[n].channels, conv_dim, 1, bias=False, norm=get_norm(norm, conv_dim))
                for n in self.in_features
            ]
        )
        self.layers = nn.ModuleList([BiFPNLayer(conv_dim, norm, fusion_eps) for _ in range(num_repeats)])
        self.lateral_conv = Conv2d(
            input_shape["res2"].channels, conv_dim, 1, bias=False, norm=get_norm(norm, conv_dim)
        )
        self.output_conv = Conv2d(
            conv_dim, conv_dim, 3, padding=1, bias=False, norm=get_norm(norm, conv_dim), activation=F.relu
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
            "num_repeats": g.BIFPN.NUM_REPEATS,
            "norm": g.BIFPN.NORM,
            "fusion_eps": g.BIFPN.FUSION_EPS,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns ``(mask_features (B, E, H/4, W/4), [s32, s16, s8] each (B, D, h, w))``."""
        feats = [proj(features[n]) for proj, n in zip(self.input_proj, self.in_features)]
        for layer in self.layers:
            feats = layer(feats)
        lateral = self.lateral_conv(features["res2"])
        y = lateral + F.interpolate(feats[0], size=lateral.shape[-2:], mode="nearest")
        mask_features = self.mask_features(self.output_conv(y))
        return mask_features, feats[::-1]
