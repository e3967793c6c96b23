"""Swin Transformer encoder (timm) wrapped as a detectron2 ``Backbone``.

Outputs ``res2..res5`` (strides 4/8/16/32), each after its own LayerNorm as in Swin's detection
and segmentation models. A learnable encoder mask token replaces the patch embeddings of masked
units during masked image modeling (SimMIM-style), so the hierarchical encoder sees a full grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["D2SwinTransformer", "build_glid_swin_backbone"]


class D2SwinTransformer(Backbone):
    """Swin encoder returning a dict of NCHW feature maps.

    Args:
        embed_dim: channels of stage 1 (doubles every stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (in tokens).
        patch_size: stride of the patch embedding.
        mlp_ratio: MLP hidden size / channels.
        drop_path_rate: stochastic-depth rate, linearly increasing over blocks.
        pretrain_img_size: size the relative-position tables and windows are built for; any
            input whose sides are multiples of 32 is accepted.
        out_features: which of ``res2..res5`` to return.
        use_checkpoint: recompute blocks in backward (saves memory).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        pretrain_img_size: int = 224,
        out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin needs 4 stages, got depths={depths}, num_heads={num_heads}")
        self.swin = SwinTransformer(
            img_size=pretrain_img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            strict_img_size=False,
            num_classes=0,
        )
        # The classifier-side final norm is replaced by one LayerNorm per output stage.
        self.swin.norm = nn.Identity()
        self.use_checkpoint = use_checkpoint
        names = ("res2", "res3", "res4", "res5")
        for name in out_features:
            if name not in names:
                raise ValueError(f"unknown Swin output {name!r}; choose from {names}")
        self._out_features = list(out_features)
        channels = [embed_dim * 2**i for i in range(4)]
        self._out_feature_channels = dict(zip(names, channels))
        self._out_feature_strides = {n: patch_size * 2**i for i, n in enumerate(names)}
        self.output_norms = nn.ModuleDict(
            {n: nn.LayerNorm(self._out_feature_channels[n]) for n in out_features}
        )
        # [MASK] token of the encoder (MIM); zero-init like SimMIM, then trunc-normal.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.num_features = channels[-1]

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode images.

        Args:
            x: (B, 3, H, W) normalized images, H and W multiples of 32.
            mask: optional (B, h, w) bool/0-1 map of masked units (any h, w dividing H/4, W/4,
                e.g. one cell per 32x32 unit); masked patch embeddings become the mask token.

        Returns:
            ``{"res2": (B, C, H/4, W/4), ..., "res5": (B, 8C, H/32, W/32)}`` (the requested ones).
        """
        if x.dim() != 4 or x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"Swin input must be (B, C, H, W) with H, W multiples of 32, got {tuple(x.shape)}"
            )
        tokens = self.swin.patch_embed(x)  # (B, H/4, W/4, C), NHWC
        if mask is not None:
            tokens = self._apply_mask_token(tokens, mask)
        outputs = {}
        for name, stage in zip(("res2", "res3", "res4", "res5"), self.swin.layers):
            if self.use_checkpoint and self.training:
                tokens = checkpoint(stage, tokens, use_reentrant=False)
            else:
                tokens = stage(tokens)
            if name in self.output_norms:
                outputs[name] = self.output_norms[name](tokens).permute(0, 3, 1, 2).contiguous()
        return outputs

    def _apply_mask_token(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = tokens.shape
        if mask.dim() != 3 or mask.shape[0] != b or h % mask.shape[1] or w % mask.shape[2]:
            raise ValueError(
                f"mask must be (B={b}, h, w) with h, w dividing the patch grid {h}x{w}, "
                f"got {tuple(mask.shape)}"
            )
        m = F.interpolate(mask[:, None].float(), size=(h, w), mode="nearest").permute(0, 2, 3, 1)
        return torch.where(m > 0.5, self.mask_token.to(tokens.dtype), tokens)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_glid_swin_backbone(cfg, input_shape: ShapeSpec) -> D2SwinTransformer:
    """Build the Swin encoder from ``cfg.MODEL.SWIN``."""
    s = cfg.MODEL.SWIN
    return D2SwinTransformer(
        embed_dim=s.EMBED_DIM,
        depths=tuple(s.DEPTHS),
        num_heads=tuple(s.NUM_HEADS),
        window_size=s.WINDOW_SIZE,
        patch_size=s.PATCH_SIZE,
        mlp_ratio=s.MLP_RATIO,
        drop_path_rate=s.DROP_PATH_RATE,
        pretrain_img_size=s.PRETRAIN_IMG_SIZE,
        out_features=tuple(s.OUT_FEATURES),
        use_checkpoint=s.USE_CHECKPOINT,
    )
