"""Box conversions, pairwise IoU / generalized IoU, boxes of masks and ``inverse_sigmoid``: small
pure functions.

Boxes are ``(cx, cy, w, h)`` ("cxcywh") or ``(x0, y0, x1, y1)`` ("xyxy") in the last dimension,
in any unit (detection uses cxcywh normalized by the image size in its losses).
"""

from __future__ import annotations

import torch

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_iou_union",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "inverse_sigmoid",
    "masks_to_boxes",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) ``(cx, cy, w, h)`` -> (..., 4) ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) ``(x0, y0, x1, y1)`` -> (..., 4) ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) areas (negative sizes count as 0)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def box_iou_union(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union area of every pair.

    Args:
        boxes1: (N, 4) xyxy.
        boxes2: (M, 4) xyxy.

    Returns:
        ``(iou, union)``, each (N, M). Pairs of empty boxes have union 0 and IoU 0.
    """
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(boxes1)[:, None] + _area(boxes2)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
    return iou, union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) of every pair:
    ``IoU - (|C| - |A u B|) / |C|`` with C the smallest box enclosing A and B; in [-1, 1].

    Args:
        boxes1: (N, 4) xyxy.
        boxes2: (M, 4) xyxy.

    Returns:
        (N, M) generalized IoU.
    """
    iou, union = box_iou_union(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=1e-12)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with x clamped to [eps, 1 - eps] (any shape)."""
    x = x.clamp(min=eps, max=1 - eps)
    return torch.log(x / (1 - x))


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks, in pixels, detectron2's convention (``BitMasks``): a box
    covers whole pixels, so a mask whose pixels span columns x0..x1 and rows y0..y1 (inclusive)
    gets ``(x0, y0, x1 + 1, y1 + 1)``; a single pixel at (row y, column x) is the unit box
    ``(x, y, x + 1, y + 1)``. An empty mask gets the zero box ``(0, 0, 0, 0)``.

    Args:
        masks: (N, H, W) bool (or 0/1) masks.

    Returns:
        (N, 4) float32 xyxy boxes.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    masks = masks.bool()
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    in_column, in_row = masks.any(dim=1), masks.any(dim=2)  # (N, W), (N, H)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32).expand(n, w)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32).expand(n, h)
    x0 = torch.where(in_column, xs, torch.full_like(xs, w)).amin(dim=1)
    y0 = torch.where(in_row, ys, torch.full_like(ys, h)).amin(dim=1)
    x1 = torch.where(in_column, xs + 1, torch.zeros_like(xs)).amax(dim=1)
    y1 = torch.where(in_row, ys + 1, torch.zeros_like(ys)).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where(in_column.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))
