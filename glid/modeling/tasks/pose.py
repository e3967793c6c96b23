"""Top-down human pose (COCO keypoints) from keypoint queries.

One query per keypoint (``MODEL.GLID.NUM_QUERIES`` = ``MODEL.GLID.POSE.NUM_KEYPOINTS``, 17 for
COCO); the linear head gives each an embedding and its heatmap is ``embedding . mask_features``
on the pixel decoder's stride-4 map (64x48 for a 256x192 crop).

Coordinates (detectron2's, continuous): heatmap cell ``(i, j)`` covers crop pixels
``[s j, s (j+1)) x [s i, s (i+1))`` (stride ``s``) and its centre is ``(j + 0.5, i + 0.5)`` in
heatmap units; a crop point ``p`` is ``p / s`` in heatmap units.

* **Targets**: per keypoint a Gaussian of std ``HEATMAP_SIGMA`` cells centred at its position,
  evaluated at the cell centres (peak 1); weight 1 for labelled keypoints (visibility > 0) whose
  Gaussian reaches the map (centre within 3 sigma of it), else 0 (mmpose's MSRA heatmaps).
* **Loss**: ``LOSS_WEIGHT x mean(weight x (heatmap - target)^2)`` over keypoints and cells
  (mmpose's ``KeypointMSELoss`` with target weights), on every decoder layer.
* **Decoding**: per keypoint the arg-max cell's centre, moved 0.25 cell towards the larger of its
  two neighbours along each axis (the standard sub-pixel shift), times the stride, mapped to the
  image by the input's ``crop_to_image``; its score is the maximum of the heatmap.
* **Flip test** (``FLIP_TEST``): the model also runs on the mirrored crop; its heatmaps, mirrored
  back with left and right keypoints swapped, are averaged with the crop's before decoding.
* **Rescoring**: person score = box score x mean of the keypoint scores above
  ``KEYPOINT_SCORE_THRESH`` (0 when none is). OKS-NMS over the persons of an image is the
  evaluator's (:mod:`glid.evaluation.keypoint_evaluation`): it needs all persons of an image.

Output per person crop: ``{"instances": Instances}`` of the image's size with one entry:
``pred_boxes`` (the person box), ``scores``, ``pred_classes`` (0), ``pred_keypoints`` (1, K, 3)
[x, y, score] in image coordinates and ``pred_keypoint_heatmaps`` (1, K, h, w).
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from glid.data.top_down import person_instances, person_instances_from_detections

from ..criterion import deep_supervision
from .base import GLIDTask
from .build import register_task

__all__ = ["PoseEstimationTask", "decode_heatmaps", "gaussian_targets", "keypoint_mse_loss"]


def gaussian_targets(
    keypoints: torch.Tensor, heatmap_size: tuple[int, int], stride: float, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian heatmaps and their weights.

    Args:
        keypoints: (B, K, 3) crop coordinates and visibility.
        heatmap_size: (h, w) of the heatmaps.
        stride: crop pixels per heatmap cell.
        sigma: std of the Gaussian in cells.

    Returns:
        (B, K, h, w) targets and (B, K) weights.
    """
    h, w = heatmap_size
    centre = keypoints[..., :2].float() / stride  # (B, K, 2) heatmap units
    xs = torch.arange(w, device=keypoints.device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=keypoints.device, dtype=torch.float32) + 0.5
    dx2 = (xs - centre[..., 0:1]).pow(2)  # (B, K, w)
    dy2 = (ys - centre[..., 1:2]).pow(2)  # (B, K, h)
    targets = torch.exp(-(dy2[..., :, None] + dx2[..., None, :]) / (2 * sigma**2))
    reach = 3 * sigma
    on_map = (centre[..., 0] > -reach) & (centre[..., 0] < w + reach)
    on_map &= (centre[..., 1] > -reach) & (centre[..., 1] < h + reach)
    weights = ((keypoints[..., 2] > 0) & on_map).float()
    return targets, weights


def keypoint_mse_loss(
    heatmaps: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Mean over keypoints and cells of ``weight x (heatmap - target)^2``."""
    return ((heatmaps.float() - targets).pow(2) * weights[..., None, None]).mean()


def decode_heatmaps(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., K, h, w) heatmaps -> (..., K, 2) positions in heatmap units and (..., K) scores
    (arg-max cell centre with the 0.25-cell shift towards the larger neighbour)."""
    h, w = heatmaps.shape[-2:]
    flat = heatmaps.float().flatten(-2)
    scores, index = flat.max(-1)
    iy, ix = index // w, index % w

    def neighbour(dy: int, dx: int) -> torch.Tensor:
        y = (iy + dy).clamp(0, h - 1)
        x = (ix + dx).clamp(0, w - 1)
        return flat.gather(-1, (y * w + x)[..., None])[..., 0]

    shift_x = torch.sign(neighbour(0, 1) - neighbour(0, -1)) * 0.25
    shift_y = torch.sign(neighbour(1, 0) - neighbour(-1, 0)) * 0.25
    # At the border one neighbour is the cell itself: the shift then only points inwards.
    shift_x = torch.where((ix > 0) & (ix < w - 1), shift_x, torch.zeros_like(shift_x))
    shift_y = torch.where((iy > 0) & (iy < h - 1), shift_y, torch.zeros_like(shift_y))
    positions = torch.stack([ix.float() + 0.5 + shift_x, iy.float() + 0.5 + shift_y], dim=-1)
    return positions, scores


def rescore(box_scores: torch.Tensor, keypoint_scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """(P,) box scores x the mean of each person's (P, K) keypoint scores above ``thresh``."""
    above = keypoint_scores > thresh
    mean = (keypoint_scores * above).sum(-1) / above.sum(-1).clamp(min=1)
    return box_scores * mean


@register_task("pose")
class PoseEstimationTask(GLIDTask):
    """Top-down keypoint heatmaps from one linear head (module docstring).

    Args:
        num_keypoints: K, one query each.
        sigma: Gaussian std of the targets in heatmap cells.
        loss_weight: factor of the heatmap MSE.
        flip_indices: (K,) each keypoint's mirror image, for the flip test (None: no flip test).
        keypoint_score_thresh: keypoint scores above it enter the person's score.
        deep_supervision: the loss on every decoder layer's prediction.
    """

    dataset_mapper = "TopDownPoseDatasetMapper"
    evaluator_type = "coco_keypoints"

    @configurable
    def __init__(
        self,
        *,
        num_keypoints: int,
        sigma: float = 2.0,
        loss_weight: float = 1.0,
        flip_indices: list[int] | None = None,
        keypoint_score_thresh: float = 0.2,
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.sigma = float(sigma)
        self.loss_weight = float(loss_weight)
        self.flip_test = flip_indices is not None
        if flip_indices is not None:
            if sorted(flip_indices) != list(range(num_keypoints)):
                raise ValueError(f"keypoint flip indices {flip_indices} are no permutation")
            self.register_buffer(
                "flip_indices", torch.as_tensor(flip_indices, dtype=torch.long), persistent=False
            )
        self.keypoint_score_thresh = float(keypoint_score_thresh)
        self.deep_supervision = deep_supervision

    @classmethod
    def from_config(cls, cfg) -> dict:
        pose = cfg.MODEL.GLID.POSE
        if cfg.MODEL.GLID.NUM_QUERIES != pose.NUM_KEYPOINTS:
            raise ValueError(
                f"pose needs one query per keypoint: MODEL.GLID.NUM_QUERIES="
                f"{cfg.MODEL.GLID.NUM_QUERIES}, MODEL.GLID.POSE.NUM_KEYPOINTS={pose.NUM_KEYPOINTS}"
            )
        crop = tuple(cfg.INPUT.POSE.CROP_SIZE)
        if any(side % 32 for side in crop):
            # Unpadded crops: heatmaps cover the crop exactly, so a mirrored heatmap is the
            # heatmap of the mirrored crop.
            raise ValueError(f"INPUT.POSE.CROP_SIZE {crop} must be multiples of 32")
        flip_indices = None
        if pose.FLIP_TEST:
            names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
            if not names:
                raise ValueError(
                    "MODEL.GLID.POSE.FLIP_TEST needs the keypoint flip map of a registered "
                    "dataset in DATASETS.TEST or DATASETS.TRAIN"
                )
            flip_indices = list(utils.create_keypoint_hflip_indices(names[:1]))
        return {
            "num_keypoints": pose.NUM_KEYPOINTS,
            "sigma": pose.HEATMAP_SIGMA,
            "loss_weight": pose.LOSS_WEIGHT,
            "flip_indices": flip_indices,
            "keypoint_score_thresh": pose.KEYPOINT_SCORE_THRESH,
            "deep_supervision": cfg.MODEL.GLID.DEEP_SUPERVISION,
        }

    @classmethod
    def head_splits(cls, cfg) -> dict[str, int]:
        return {"keypoint_embed": cfg.MODEL.GLID.MASK_DIM}

    def initialize(self, model: nn.Module) -> None:
        """The head starts near zero, as mmpose's heatmap heads (normal, std 0.001; bias 0):
        the heatmaps start flat instead of at the scale of ``embedding . mask_features``."""
        nn.init.normal_(model.head.weight, std=0.001)
        nn.init.zeros_(model.head.bias)

    @classmethod
    def dataset_dicts(cls, cfg, dataset_dicts: list[dict], is_train: bool) -> list[dict]:
        """One dict per person: ground-truth persons with labelled keypoints in training and
        by default in testing, the boxes of ``MODEL.GLID.POSE.TEST_DETECTIONS`` when set."""
        pose = cfg.MODEL.GLID.POSE
        if is_train or not pose.TEST_DETECTIONS:
            return person_instances(dataset_dicts, pose.NUM_KEYPOINTS)
        return person_instances_from_detections(
            dataset_dicts,
            pose.TEST_DETECTIONS,
            person_category_id=pose.PERSON_CATEGORY_ID,
            score_thresh=pose.DETECTION_SCORE_THRESH,
        )

    def predictions(self, answers: dict, mask_features, query_points) -> dict:
        """``pred_heatmaps`` (B, K, H/4, W/4)."""
        embed = answers["keypoint_embed"]
        return {"pred_heatmaps": torch.einsum("bke,behw->bkhw", embed, mask_features)}

    def losses(
        self, layer_predictions: list[dict], batched_inputs: list[dict], images: ImageList
    ) -> dict[str, torch.Tensor]:
        """``loss_keypoint`` (and ``loss_keypoint_{i}`` per earlier layer)."""
        heatmap_size = tuple(layer_predictions[-1]["pred_heatmaps"].shape[-2:])
        stride = images.tensor.shape[-1] / heatmap_size[1]
        keypoints = torch.stack([x["keypoints"] for x in batched_inputs]).to(images.device)
        targets, weights = gaussian_targets(keypoints, heatmap_size, stride, self.sigma)

        def layer_losses(predictions: dict) -> dict[str, torch.Tensor]:
            loss = keypoint_mse_loss(predictions["pred_heatmaps"], targets, weights)
            return {"loss_keypoint": self.loss_weight * loss}

        return deep_supervision(layer_predictions, layer_losses, self.deep_supervision)

    def instances(
        self, heatmaps: torch.Tensor, batched_inputs: list[dict], stride: float
    ) -> list[dict]:
        """Per crop the person's ``Instances`` (module docstring) from (B, K, h, w) heatmaps."""
        positions, scores = decode_heatmaps(heatmaps)
        results = []
        for i, x in enumerate(batched_inputs):
            to_image = x["crop_to_image"].to(positions.device, torch.float64)
            crop_points = positions[i].double() * stride
            points = crop_points @ to_image[:, :2].T + to_image[:, 2]
            box_score = torch.tensor([float(x.get("person_score", 1.0))], device=scores.device)
            height, width = x["height"], x["width"]
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(
                torch.tensor([x["person_box"]], dtype=torch.float32, device=scores.device)
            )
            instances.scores = rescore(box_score, scores[i : i + 1], self.keypoint_score_thresh)
            instances.pred_classes = torch.zeros(1, dtype=torch.long, device=scores.device)
            instances.pred_keypoints = torch.cat(
                [points.float(), scores[i, :, None]], dim=-1
            ).unsqueeze(0)
            instances.pred_keypoint_heatmaps = heatmaps[i : i + 1].float()
            results.append({"instances": instances})
        return results

    def inference(
        self, predictions: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        heatmaps = predictions["pred_heatmaps"]
        return self.instances(
            heatmaps, batched_inputs, images.tensor.shape[-1] / heatmaps.shape[-1]
        )

    def merge_flipped(
        self, results: list[dict], flipped_results: list[dict], batched_inputs: list[dict]
    ) -> list[dict]:
        """Decodes the mean of each crop's heatmaps and its mirror's, mirrored back with left
        and right keypoints swapped."""
        heatmaps = torch.cat([r["instances"].pred_keypoint_heatmaps for r in results])
        flipped = torch.cat([r["instances"].pred_keypoint_heatmaps for r in flipped_results])
        merged = 0.5 * (heatmaps + flipped.flip(-1)[:, self.flip_indices])
        crop_width = batched_inputs[0]["image"].shape[-1]
        return self.instances(merged, batched_inputs, crop_width / heatmaps.shape[-1])
