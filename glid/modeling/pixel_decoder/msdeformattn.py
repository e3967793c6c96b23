"""Mask2Former-style pixel decoder: deformable-attention encoder over strides 8/16/32 plus an
FPN lateral path to stride 4 (GLID's Tab. 2, second row).

The multi-scale deformable attention runs in ``glid.layers.ms_deform_attn`` (our fused op);
autocast is left to the op itself, so the rest of the decoder runs in the autocast dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from glid.layers import ms_deform_attn

from ..position_encoding import PositionEmbeddingSine
from .build import PIXEL_DECODER_REGISTRY

__all__ = ["MSDeformAttn", "MSDeformAttnEncoderLayer", "MSDeformAttnPixelDecoder"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR): every query attends to
    ``num_points`` learned offsets around its reference point on each of ``num_levels`` maps.

    Args:
        dim: channels (split over heads).
        num_levels: feature levels L.
        num_heads: heads M.
        num_points: sampling points P per head and level.
    """

    def __init__(
        self, dim: int = 256, num_levels: int = 3, num_heads: int = 8, num_points: int = 4
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_levels, self.num_heads, self.num_points = num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on rays in M directions, 1..P steps out; uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.num_heads, 1, 1, 2) * steps
        grid = grid.expand(-1, self.num_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """Attend.

        Args:
            query: (N, Lq, C) queries (with position embedding added).
            reference_points: (N, Lq, L, 2) normalized (x, y) per level.
            value_input: (N, S, C) flattened maps of all levels.
            spatial_shapes: (L, 2) int64 (H, W) per level; best on the CPU (the op then reads it
                without a host-device sync).
            level_start_index: (L,) int64 start of each level in S, on the CPU likewise.

        Returns:
            (N, Lq, C).
        """
        n, lq, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value_input).view(n, value_input.shape[1], m, -1)
        # Locations and weights at least fp32 even under autocast (never below the value's
        # precision, e.g. float64): a half-precision location is off by up to ~0.1 pixel on an
        # 80-pixel level. Under autocast the op samples the low-precision value with them.
        dtype = torch.promote_types(value.dtype, torch.float32)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2).to(dtype)
        weights = self.attention_weights(query).view(n, lq, m, lv * p)
        weights = weights.softmax(-1, dtype=dtype).view(n, lq, m, lv, p)
        normalizer = _offset_normalizer(spatial_shapes, offsets)  # (W, H) per level
        ref = reference_points.to(dtype)[:, :, None, :, None, :]
        locations = ref + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then FFN."""

    def __init__(
        self,
        dim: int,
        num_levels: int,
        num_heads: int,
        num_points: int,
        dim_feedforward: int,
        dropout: float,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim_feedforward),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, dim),
        )
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, src, pos, reference_points, spatial_shapes, level_start_index
    ) -> torch.Tensor:
        attended = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index
        )
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.dropout(self.ffn(src)))


def _offset_normalizer(spatial_shapes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(L, 2) = (W, H) per level, in ``like``'s dtype and on its device. From a host table on
    another device it is written entry by entry (fills taking the sizes as launch arguments):
    no host-to-device copy, which may wait for the device. Under torch.compile a plain copy (a
    traceable op; reading the table would break the graph)."""
    wh = spatial_shapes.flip(-1)
    if wh.device == like.device or torch.compiler.is_compiling():
        return wh.to(device=like.device, dtype=like.dtype)
    out = like.new_empty(wh.shape)
    for lvl, (w, h) in enumerate(wh.tolist()):
        out[lvl, 0].fill_(w)
        out[lvl, 1].fill_(h)
    return out


def encoder_reference_points(
    spatial_shapes: list[tuple[int, int]], batch: int, device
) -> torch.Tensor:
    """Centre of every pixel of every level, normalized, repeated for each level:
    (batch, S, L, 2) (x, y). Inputs are padded per batch, so every level is fully valid."""
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
    ref = torch.cat(points, 0)
    return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder over ``res3..res5`` + FPN lateral to ``res2``.

    Args:
        input_shape: the encoder's ``ShapeSpec`` per feature name.
        conv_dim: channels (``HIDDEN_DIM``).
        mask_dim: channels of the per-pixel embedding map (``MASK_DIM``).
        num_layers, num_heads, num_points, dim_feedforward, dropout: the encoder's shape.
        norm: detectron2 norm name (``"GN"``).
    """

    transformer_in_features = ("res5", "res4", "res3")  # low resolution first

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        norm: str = "GN",
    ):
        super().__init__()
        missing = [n for n in ("res2", *self.transformer_in_features) if n not in input_shape]
        if missing:
            raise ValueError(f"MSDeformAttn pixel decoder needs encoder features {missing}")
        num_levels = len(self.transformer_in_features)
        self.input_proj = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(input_shape[n].channels, conv_dim, 1), nn.GroupNorm(32, conv_dim)
                )
                for n in self.transformer_in_features
            ]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.level_embed = nn.Parameter(torch.empty(num_levels, conv_dim))
        nn.init.normal_(self.level_embed)
        self.pos_embed = PositionEmbeddingSine(conv_dim // 2)
        self.layers = nn.ModuleList(
            [
                MSDeformAttnEncoderLayer(
                    conv_dim, num_levels, num_heads, num_points, dim_feedforward, dropout
                )
                for _ in range(num_layers)
            ]
        )
        self.lateral_conv = Conv2d(
            input_shape["res2"].channels, conv_dim, 1, bias=False, norm=get_norm(norm, conv_dim)
        )
        self.output_conv = Conv2d(
            conv_dim,
            conv_dim,
            3,
            padding=1,
            bias=False,
            norm=get_norm(norm, conv_dim),
            activation=F.relu,
        )
        self.mask_features = Conv2d(conv_dim, mask_dim, 1)
        for conv in (self.lateral_conv, self.output_conv, self.mask_features):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        g = cfg.MODEL.GLID
        m = g.MSDEFORMATTN
        return {
            "input_shape": input_shape,
            "conv_dim": g.HIDDEN_DIM,
            "mask_dim": g.MASK_DIM,
            "num_layers": m.NUM_LAYERS,
            "num_heads": m.NUM_HEADS,
            "num_points": m.NUM_POINTS,
            "dim_feedforward": m.DIM_FEEDFORWARD,
            "dropout": m.DROPOUT,
            "norm": m.NORM,
        }

    # Encoder outputs that only the mask branch reads.
    mask_branch_inputs = ("res2",)

    def mask_branch(self) -> list[nn.Module]:
        """The modules that only compute the per-pixel embedding map (the FPN step to res2)."""
        return [self.lateral_conv, self.output_conv, self.mask_features]

    def forward(
        self, features: dict[str, torch.Tensor], with_mask_features: bool = True
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Returns ``(mask_features (B, E, H/4, W/4) or None when not wanted, [s32, s16, s8]
        each (B, D, h, w))``."""
        srcs, pos, shapes = [], [], []
        for i, (name, proj) in enumerate(zip(self.transformer_in_features, self.input_proj)):
            x = proj(features[name])
            shapes.append(tuple(x.shape[-2:]))
            srcs.append(x.flatten(2).transpose(1, 2))
            pos.append(
                self.pos_embed(x).flatten(2).transpose(1, 2) + self.level_embed[i].to(x.dtype)
            )
        src, pos = torch.cat(srcs, 1), torch.cat(pos, 1)
        # The level table stays on the host: the op reads it with no host-device sync (two per
        # layer and step otherwise), which also lets the op be captured in a CUDA graph.
        spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        reference_points = encoder_reference_points(shapes, src.shape[0], src.device).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        multi_scale = [
            y.transpose(1, 2).reshape(src.shape[0], -1, h, w)
            for y, (h, w) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        if not with_mask_features:
            return None, multi_scale
        lateral = self.lateral_conv(features["res2"])
        y = lateral + F.interpolate(
            multi_scale[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.mask_features(self.output_conv(y)), multi_scale
