"""Losses over every decoder layer: the deep-supervision loop, the target-count normalizer and a
set criterion (Hungarian matching + pluggable loss terms), written once for all tasks.

* :func:`deep_supervision` applies a per-layer loss function to the last layer and, optionally,
  to every earlier layer (keys suffixed ``_{i}``), as Mask2Former / DETR do. Tasks without
  matching (depth, classification, MIM) use it directly.
* :func:`average_num_targets` is the loss normalizer: targets in the batch, averaged over the
  processes (all-reduce), at least 1.
* :class:`SetCriterion` matches each layer's predictions to the targets and adds its loss terms
  (a :class:`LossTerm` returns named, unweighted losses); weights come by name. Non-finite
  predictions stop training with detectron2's divergence message before the matcher sees them.
* :func:`check_class_ids`: target classes outside the model's class count are a data / config
  error, reported as such (not as an IndexError, nor, for id C, taken for no-object).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from detectron2.utils.comm import get_world_size
from detectron2.utils.events import get_event_storage
from torch import nn

from .matcher import HungarianMatcher

__all__ = [
    "LossTerm",
    "SetCriterion",
    "average_num_targets",
    "check_class_ids",
    "check_finite_predictions",
    "deep_supervision",
]

Indices = list[tuple[torch.Tensor, torch.Tensor]]


class LossTerm(nn.Module):
    """Named, unweighted losses of one decoder layer given the matching (a module, so that its
    buffers follow the model's device)."""

    def forward(
        self, predictions: dict, targets: list[dict], indices: Indices, num_targets: float
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def deep_supervision(
    layer_predictions: Sequence[dict],
    layer_losses: Callable[[dict], dict[str, torch.Tensor]],
    enabled: bool = True,
) -> dict[str, torch.Tensor]:
    """``layer_losses`` of the last layer and, when ``enabled``, of every earlier layer i with
    keys suffixed ``_{i}``. The last layer is computed first (the order of random draws)."""
    losses = dict(layer_losses(layer_predictions[-1]))
    if enabled:
        for i, predictions in enumerate(layer_predictions[:-1]):
            losses.update({f"{k}_{i}": v for k, v in layer_losses(predictions).items()})
    return losses


def average_num_targets(targets: list[dict], device: torch.device) -> float:
    """Targets (``labels`` entries) in the batch, averaged over all processes, at least 1."""
    num = float(sum(len(t["labels"]) for t in targets))
    if get_world_size() > 1:
        total = torch.tensor([num], device=device)
        torch.distributed.all_reduce(total)
        num = total.item() / get_world_size()
    return max(num, 1.0)


def check_class_ids(labels: torch.Tensor, num_classes: int, file_name: str) -> None:
    """Raises ValueError naming ``file_name`` if a class id in ``labels`` is outside
    [0, ``num_classes``)."""
    if labels.numel() == 0:
        return
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"{file_name}: ground-truth class ids {sorted(set(bad.tolist()))} outside "
            f"[0, {num_classes}): the class count MODEL.GLID.NUM_CLASSES={num_classes} is "
            "smaller than the data's labels (or the dataset maps its ids wrongly)"
        )


def _current_iteration() -> int | None:
    """The trainer's iteration (detectron2's event storage), None outside training."""
    try:
        return get_event_storage().iter
    except AssertionError:  # get_event_storage asserts that a storage is open
        return None


def check_finite_predictions(layer_predictions: Sequence[dict], loss_names: Sequence[str]) -> None:
    """Raises FloatingPointError, with detectron2's divergence message, the iteration, the
    non-finite prediction and the decoder layer whose losses it feeds, if any floating-point
    prediction is NaN or infinite. One device synchronization when all are finite."""
    tensors = [
        (i, key, value)
        for i, predictions in enumerate(layer_predictions)
        for key, value in predictions.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    ]
    if not tensors or torch.stack([torch.isfinite(v).all() for *_, v in tensors]).all():
        return
    last = len(layer_predictions) - 1
    for i, key, value in tensors:
        finite = torch.isfinite(value)
        if not finite.all():
            suffix = "" if i == last else f"_{i}"
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={_current_iteration()}!\n"
                f"prediction {key!r} of decoder layer {i} (of {last + 1}) has "
                f"{int((~finite).sum())} non-finite values of {value.numel()}, before "
                f"matching; its losses {[n + suffix for n in loss_names]} would be NaN. The "
                "model diverged: lower SOLVER.BASE_LR, check SOLVER.CLIP_GRADIENTS and the data."
            )


class SetCriterion(nn.Module):
    """Hungarian-matched set losses with deep supervision.

    Args:
        matcher: assigns queries to targets per image.
        loss_terms: :class:`LossTerm` modules, computed in order for every layer.
        weights: ``{loss name: weight}``; every name a term returns must have a weight.
        deep_supervision: also apply the losses to every earlier decoder layer.
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        loss_terms: Sequence[LossTerm],
        weights: Mapping[str, float],
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.matcher = matcher
        self.loss_terms = nn.ModuleList(loss_terms)
        self.weights = dict(weights)
        self.deep_supervision = deep_supervision

    def layer_losses(
        self, predictions: dict, targets: list[dict], num_targets: float
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of one decoder layer."""
        indices = self.matcher(predictions, targets)
        losses = {}
        for term in self.loss_terms:
            for name, value in term(predictions, targets, indices, num_targets).items():
                if name not in self.weights:
                    raise KeyError(f"loss {name!r} has no weight; weights: {sorted(self.weights)}")
                losses[name] = value * self.weights[name]
        return losses

    def forward(self, layer_predictions: Sequence[dict], targets: list[dict]) -> dict:
        """Weighted losses of the last layer (and of layer i < L-1 with suffix ``_{i}``).

        Args:
            layer_predictions: per decoder layer, last layer last, batched predictions.
            targets: per image, at least ``labels`` (T,) int64 plus what the terms read.
        """
        check_finite_predictions(layer_predictions, sorted(self.weights))
        device = next(iter(layer_predictions[-1].values())).device
        num_targets = average_num_targets(targets, device)
        return deep_supervision(
            layer_predictions,
            lambda p: self.layer_losses(p, targets, num_targets),
            self.deep_supervision,
        )
