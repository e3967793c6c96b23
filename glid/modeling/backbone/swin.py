"""Swin Transformer encoder (timm) wrapped as a detectron2 ``Backbone``.

Outputs ``res2..res5`` (strides 4/8/16/32), each after its own LayerNorm as in Swin's detection
and segmentation models. A learnable encoder mask token replaces the patch embeddings of masked
units during masked image modeling (SimMIM-style), so the hierarchical encoder sees a full grid.

The parameters are timm's (names, shapes and initialization, so public checkpoints load through
timm's converter), but each block's attention branch is :func:`window_attention` here
(:class:`MaskedWindowSwinBlock`) instead of timm's, for two reasons (issue 14):

- **Correct padding.** A token grid that the window does not tile (e.g. 128 tokens per side with
  window 7) is padded. timm 1.0 shifts first and pads after, then masks the shifted windows as if
  the padded grid had been shifted, and lets every token attend to the padded zeros: at such
  sizes a shifted window joins tokens from opposite image borders, and border windows average in
  the padding. Here the grid is padded first and then shifted (Swin's detection backbone), and
  the padded tokens are masked out as keys, so a border window is just a smaller window.
- **Masks computed once per size.** With ``strict_img_size=False`` timm rebuilds the shifted-window
  mask in every shifted block of every forward; here it is built once per (grid, window, shift,
  device) and cached (:func:`window_attention_mask`), and so is the token order of the windows
  (:func:`window_token_order`: one gather in, one out, instead of pad, roll, partition and their
  inverses, three copies each way). The relative-position index is timm's buffer (built once);
  the bias is gathered from its table per block and forward, as it is a parameter. Attention
  runs through ``scaled_dot_product_attention`` (on the CPU 2.5-5x faster than timm's default
  explicit softmax(QK^T)V at these window sizes, inference).

Each stage keeps timm's window and shift: ``WINDOW_SIZE``, except that a stage whose grid at
``PRETRAIN_IMG_SIZE`` is smaller than the window takes a window of that grid and no shift (e.g.
224 with window 7: stage 4 is 7x7, one unshifted window; window 8 needs 256 to keep 8 there).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.layers import resize_rel_pos_bias_table
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, window_partition
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "D2SwinTransformer",
    "MaskedWindowSwinBlock",
    "build_glid_swin_backbone",
    "resize_relative_position_bias",
    "window_attention",
    "window_attention_mask",
    "window_token_order",
]

# Attention masks kept per (grid, window, shift, device); a multi-scale detection run meets a
# few dozen grid sizes per stage. The biggest (stage 1, 1333 px, window 7) is about 13 MB.
MASK_CACHE_SIZE = 128


@functools.lru_cache(maxsize=MASK_CACHE_SIZE)
def window_attention_mask(
    height: int,
    width: int,
    window: tuple[int, int],
    shift: tuple[int, int],
    device: torch.device,
) -> torch.Tensor | None:
    """Additive attention mask of the windows of a (height, width) token grid, or ``None``.

    The grid is padded at the bottom/right to multiples of the window, then rolled up/left by
    ``shift``. A query may attend to a key of its window when both come from the same side of the
    roll's wrap-around and the key is not padding; every token may attend to itself, so no row is
    empty (padded queries' outputs are dropped, but must stay finite for backward).

    Returns:
        ``(num_windows, wh * ww, wh * ww)`` float32 of 0 / -inf, windows in
        :func:`timm.models.swin_transformer.window_partition` order; ``None`` when the window
        tiles the grid and there is no shift. Cached: treat it as read-only.
    """
    (wh, ww), (sh, sw) = window, shift
    hp, wp = math.ceil(height / wh) * wh, math.ceil(width / ww) * ww
    if hp == height and wp == width and not sh and not sw:
        return None

    def labels(size: int, padded: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(padded, device=device)
        wrapped = pos >= padded - s if s else torch.zeros_like(pos, dtype=torch.bool)
        valid = (pos + s) % padded < size  # the token's place before the roll is inside the image
        return wrapped, valid

    wrapped_h, valid_h = labels(height, hp, sh)
    wrapped_w, valid_w = labels(width, wp, sw)
    region = (wrapped_h[:, None].long() * 2 + wrapped_w[None, :].long())[None, :, :, None]
    valid = (valid_h[:, None] & valid_w[None, :])[None, :, :, None]
    region = window_partition(region, (wh, ww)).reshape(-1, wh * ww)
    valid = window_partition(valid, (wh, ww)).reshape(-1, wh * ww)
    allowed = (region[:, :, None] == region[:, None, :]) & valid[:, None, :]
    allowed |= torch.eye(wh * ww, dtype=torch.bool, device=device)
    mask = torch.zeros(allowed.shape, device=device)
    return mask.masked_fill_(~allowed, float("-inf"))


@functools.lru_cache(maxsize=MASK_CACHE_SIZE)
def window_token_order(
    height: int,
    width: int,
    window: tuple[int, int],
    shift: tuple[int, int],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each window slot takes its token from, and where each token's output is.

    The slots are those of the grid padded to multiples of the window, rolled by ``shift`` and
    partitioned like :func:`timm.models.swin_transformer.window_partition`; one gather replaces
    pad, roll and partition (and one more their inverse and the crop). A padding slot takes
    token 0: it is masked as a key (:func:`window_attention_mask`) and its output is dropped,
    so its content never matters.

    Returns:
        ``order`` (num_windows * wh * ww,): token (``y * width + x``) of each slot;
        ``inverse`` (height * width,): slot of each token. Cached: treat them as read-only.
    """
    (wh, ww), (sh, sw) = window, shift
    hp, wp = math.ceil(height / wh) * wh, math.ceil(width / ww) * ww
    ys = (torch.arange(hp, device=device) + sh) % hp  # the slot's row before the roll
    xs = (torch.arange(wp, device=device) + sw) % wp
    valid = (ys[:, None] < height) & (xs[None, :] < width)
    tokens = torch.where(valid, ys[:, None] * width + xs[None, :], 0)
    order = window_partition(tokens[None, :, :, None], (wh, ww)).reshape(-1)
    valid = window_partition(valid[None, :, :, None], (wh, ww)).reshape(-1)
    inverse = torch.empty(height * width, dtype=torch.long, device=device)
    inverse[order[valid]] = torch.arange(order.numel(), device=device)[valid]
    return order, inverse


def window_attention(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """(Shifted-)window self-attention of a timm Swin block, with the padding masked.

    Args:
        block: supplies the window, the shift and ``attn`` (qkv, relative-position bias, proj).
        x: (B, H, W, C) tokens after the block's first norm; any H, W.

    Returns:
        (B, H, W, C), the attention branch before drop path.
    """
    attn = block.attn
    b, h, w, c = x.shape
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    n = window[0] * window[1]
    order, inverse = window_token_order(h, w, window, shift, x.device)
    windows = x.reshape(b, h * w, c).index_select(1, order).view(-1, n, c)  # (B * nW, N, C)
    qkv = attn.qkv(windows).reshape(windows.shape[0], n, 3, attn.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B * num_windows, heads, N, head_dim)
    bias = attn._get_rel_pos_bias()  # (1, heads, N, N)
    mask = window_attention_mask(h, w, window, shift, x.device)
    if mask is not None:
        bias = bias + mask[:, None]
        bias = bias.repeat(b, 1, 1, 1) if b > 1 else bias
    if torch.jit.is_tracing():  # fvcore (tools/analyze_model.py) counts matmuls, not SDPA
        weights = ((q * attn.scale) @ k.transpose(-2, -1) + bias.to(q.dtype)).softmax(-1)
        out = attn.attn_drop(weights) @ v
    else:
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=attn.attn_drop.p if attn.training else 0.0,
            scale=attn.scale,
        )
    out = attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(-1, n, c)))
    return out.view(b, -1, c).index_select(1, inverse).view(b, h, w, c)


def resize_relative_position_bias(
    table: torch.Tensor, window: int | tuple[int, int]
) -> torch.Tensor:
    """A Swin relative-position-bias table for another window, unchanged where both windows
    have the offset.

    Row ``(dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1)`` of a table holds the bias of a key
    ``(dy, dx)`` tokens away from its query. The token (patch) size does not change with the
    window, so an offset both windows have keeps its bias exactly; only offsets new to a larger
    window need values, taken from timm's ``resize_rel_pos_bias_table`` (BEiT's resampling on
    geometrically spaced positions, which reaches the source's border values at the new
    border). timm's routine alone keeps only offsets within +-1 exactly; it resamples the rest.

    Args:
        table: ``((2a - 1) ** 2, heads)``, from a square window of side ``a``.
        window: the target window, ``b`` or ``(bh, bw)``.

    Returns:
        ``((2bh - 1) * (2bw - 1), heads)``, same dtype and device.
    """
    bh, bw = (window, window) if isinstance(window, int) else tuple(window)
    side = math.isqrt(table.shape[0]) if table.dim() == 2 else 0
    if table.dim() != 2 or side * side != table.shape[0] or side % 2 == 0:
        raise ValueError(
            "relative-position-bias table must be ((2 * window - 1) ** 2, heads) of a square "
            f"window, got {tuple(table.shape)}"
        )
    src, heads = (side + 1) // 2, table.shape[1]
    if (bh, bw) == (src, src):
        return table
    shape = ((2 * bh - 1) * (2 * bw - 1), heads)
    resized = resize_rel_pos_bias_table(
        table, new_window_size=(bh, bw), new_bias_shape=shape, old_window_size=(src, src)
    )
    resized = resized.reshape(2 * bh - 1, 2 * bw - 1, heads).clone()
    kh, kw = min(src, bh) - 1, min(src, bw) - 1  # largest offsets both windows have
    old = table.reshape(side, side, heads)
    resized[bh - 1 - kh : bh + kh, bw - 1 - kw : bw + kw] = old[
        src - 1 - kh : src + kh, src - 1 - kw : src + kw
    ]
    return resized.reshape(shape)


class MaskedWindowSwinBlock(SwinTransformerBlock):
    """timm's Swin block with :func:`window_attention` as its attention branch (padding first,
    masked; cached masks and window order). Same parameters and buffers; the encoder turns its
    timm blocks into these, so hooks and timm's stage code keep working."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(self, x)


class D2SwinTransformer(Backbone):
    """Swin encoder returning a dict of NCHW feature maps.

    Args:
        embed_dim: channels of stage 1 (doubles every stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (in tokens); a stage whose grid at ``pretrain_img_size``
            is smaller uses that grid as its window, unshifted (timm's rule).
        patch_size: stride of the patch embedding.
        mlp_ratio: MLP hidden size / channels.
        drop_path_rate: stochastic-depth rate, linearly increasing over blocks.
        pretrain_img_size: size the relative-position tables and windows are built for; any
            input whose sides are multiples of 32 is accepted (padded to the window, padding
            masked).
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
        for stage in self.swin.layers:
            for block in stage.blocks:
                block.__class__ = MaskedWindowSwinBlock  # same state, our attention branch
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

    @property
    def stage_windows(self) -> list[tuple[int, int]]:
        """Window side of each stage (tokens), after timm's rule for small pre-training grids."""
        return [tuple(stage.blocks[0].window_size) for stage in self.swin.layers]

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
