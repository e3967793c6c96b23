"""Monocular depth estimation (NYUv2) with adaptive bins (AdaBins / BinsFormer style).

Every query answers one bin: a width logit and an embedding. Per decoder layer:

* bin widths = softmax over the N queries of the width logits (they sum to 1);
* bin edges = ``min + cumsum(width) x (max - min)`` over ``[MIN_DEPTH, MAX_DEPTH]`` (with ``min``
  prepended), centres = midpoints of consecutive edges;
* per-pixel probabilities = softmax over the queries of ``embedding . mask_features`` (the pixel
  decoder's stride-4 per-pixel map);
* depth = sum over queries of probability x centre: ``pred_depth`` (B, 1, H/4, W/4), metres.

Loss: scale-invariant log loss (BTS / AdaBins / BinsFormer)
``scale x sqrt(mean(g^2) - lambda x mean(g)^2)``, ``g = log(pred) - log(gt)`` over the valid pixels
(``MIN_DEPTH < gt < MAX_DEPTH``) of the batch, on the prediction upsampled (bilinear) to the
padded input size against the ``depth`` targets zero-padded to it, on every decoder layer with
deep supervision (``loss_depth``, ``loss_depth_{i}``).

Inference: upsample to the padded size, crop to the image size, resize (bilinear) to the input
dict's ``height`` x ``width``: ``depth`` (H, W) metres. With ``MODEL.GLID.DEPTH.FLIP_TEST`` the
model also runs on the horizontally flipped images (``GLIDTask.flip_test``) and the two maps are
averaged (the flipped one flipped back; :meth:`DepthEstimationTask.merge_flipped`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import ImageList

from ..criterion import deep_supervision
from .base import GLIDTask
from .build import register_task

__all__ = ["DepthEstimationTask", "bin_centres", "bins_depth", "merge_flipped", "silog_loss"]


def bin_centres(width_logits: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """(B, N) bin centres in metres from (B, N) width logits (softmax over the N bins)."""
    widths = width_logits.float().softmax(-1) * (max_depth - min_depth)
    edges = F.pad(widths.cumsum(-1), (1, 0), value=0.0) + min_depth  # (B, N+1)
    return 0.5 * (edges[:, :-1] + edges[:, 1:])


def bins_depth(
    width_logits: torch.Tensor,
    embeddings: torch.Tensor,
    mask_features: torch.Tensor,
    min_depth: float,
    max_depth: float,
) -> torch.Tensor:
    """(B, 1, h, w) depth: expectation of the bin centres under the per-pixel softmax over the
    N queries of ``embeddings (B, N, E) . mask_features (B, E, h, w)``."""
    centres = bin_centres(width_logits, min_depth, max_depth)
    logits = torch.einsum("bqe,behw->bqhw", embeddings.float(), mask_features.float())
    return torch.einsum("bqhw,bq->bhw", logits.softmax(1), centres)[:, None]


def silog_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    lam: float = 0.85,
    scale: float = 10.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``scale x sqrt(mean(g^2) - lam x mean(g)^2)``, ``g = log(pred) - log(target)`` over the
    ``valid`` pixels (0 with none: a batch without valid depth teaches nothing)."""
    if not bool(valid.any()):
        return pred.sum() * 0.0
    g = torch.log(pred[valid].clamp(min=eps)) - torch.log(target[valid])
    variance = (g.pow(2).mean() - lam * g.mean().pow(2)).clamp(min=0.0)
    return scale * torch.sqrt(variance + eps)


def merge_flipped(depth: torch.Tensor, depth_of_flipped: torch.Tensor) -> torch.Tensor:
    """Average of a (..., H, W) depth map and the map predicted on the horizontally flipped
    image (flipped back)."""
    return 0.5 * (depth + depth_of_flipped.flip(-1))


@register_task("depth")
class DepthEstimationTask(GLIDTask):
    """Adaptive-bins depth from one linear head (module docstring).

    Args:
        min_depth, max_depth: the bins' range in metres; training pixels outside it are invalid.
        silog_lambda, silog_scale: the SILog loss's variance weight and factor.
        deep_supervision: the loss on every decoder layer's prediction.
        flip_test: flip-averaged inference (the model runs on the flipped images too).
    """

    dataset_mapper = "DepthDatasetMapper"
    uses_mask_features = True

    @configurable
    def __init__(
        self,
        *,
        min_depth: float,
        max_depth: float,
        silog_lambda: float = 0.85,
        silog_scale: float = 10.0,
        deep_supervision: bool = True,
        flip_test: bool = False,
    ):
        super().__init__()
        if not 0.0 < min_depth < max_depth:
            raise ValueError(
                f"need 0 < MODEL.GLID.DEPTH.MIN_DEPTH < MAX_DEPTH, got {min_depth}, {max_depth}"
            )
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.silog_lambda = float(silog_lambda)
        self.silog_scale = float(silog_scale)
        self.deep_supervision = deep_supervision
        self.flip_test = flip_test

    @classmethod
    def from_config(cls, cfg) -> dict:
        d = cfg.MODEL.GLID.DEPTH
        return {
            "min_depth": d.MIN_DEPTH,
            "max_depth": d.MAX_DEPTH,
            "silog_lambda": d.SILOG_LAMBDA,
            "silog_scale": d.SILOG_SCALE,
            "deep_supervision": cfg.MODEL.GLID.DEEP_SUPERVISION,
            "flip_test": d.FLIP_TEST,
        }

    @classmethod
    def head_splits(cls, cfg) -> dict[str, int]:
        return {"bin_logit": 1, "bin_embed": cfg.MODEL.GLID.MASK_DIM}

    def predictions(self, answers: dict, mask_features, query_points) -> dict:
        """``pred_depth`` (B, 1, H/4, W/4) metres and the bins' ``bin_centres`` (B, N)."""
        logits = answers["bin_logit"][..., 0]
        return {
            "pred_depth": bins_depth(
                logits, answers["bin_embed"], mask_features, self.min_depth, self.max_depth
            ),
            "bin_centres": bin_centres(logits, self.min_depth, self.max_depth),
        }

    def padded_targets(self, batched_inputs: list[dict], images: ImageList) -> torch.Tensor:
        """(B, H, W) ``depth`` targets zero-padded (invalid) to the padded batch size."""
        h, w = images.tensor.shape[-2:]
        target = images.tensor.new_zeros((len(batched_inputs), h, w), dtype=torch.float32)
        for i, x in enumerate(batched_inputs):
            d = x["depth"].to(target.device, torch.float32)
            target[i, : d.shape[0], : d.shape[1]] = d
        return target

    def valid_mask(self, target: torch.Tensor) -> torch.Tensor:
        return (target > self.min_depth) & (target < self.max_depth)

    def losses(
        self, layer_predictions: list[dict], batched_inputs: list[dict], images: ImageList
    ) -> dict[str, torch.Tensor]:
        """``loss_depth`` (and ``loss_depth_{i}`` per earlier layer with deep supervision)."""
        target = self.padded_targets(batched_inputs, images)
        valid = self.valid_mask(target)
        size = tuple(images.tensor.shape[-2:])

        def layer_losses(predictions: dict) -> dict[str, torch.Tensor]:
            pred = F.interpolate(
                predictions["pred_depth"].float(), size=size, mode="bilinear", align_corners=False
            )[:, 0]
            return {
                "loss_depth": silog_loss(pred, target, valid, self.silog_lambda, self.silog_scale)
            }

        return deep_supervision(layer_predictions, layer_losses, self.deep_supervision)

    def merge_flipped(
        self, results: list[dict], flipped_results: list[dict], batched_inputs: list[dict]
    ) -> list[dict]:
        """Per image the mean of the depth map and the flipped image's map flipped back."""
        return [
            dict(r, depth=merge_flipped(r["depth"], f["depth"]))
            for r, f in zip(results, flipped_results)
        ]

    def inference(
        self, predictions: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        """Per image ``{"depth": (height, width) metres}`` (input dict's size, else the image's)."""
        pred = F.interpolate(
            predictions["pred_depth"].float(),
            size=tuple(images.tensor.shape[-2:]),
            mode="bilinear",
            align_corners=False,
        )
        results = []
        for i, (h, w) in enumerate(images.image_sizes):
            x = batched_inputs[i]
            out_h, out_w = x.get("height", h), x.get("width", w)
            d = pred[i : i + 1, :, :h, :w]
            if (out_h, out_w) != (h, w):
                d = F.interpolate(d, size=(out_h, out_w), mode="bilinear", align_corners=False)
            results.append({"depth": d[0, 0]})
        return results
