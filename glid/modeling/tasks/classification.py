"""Image classification (``cls``, ImageNet; Tab. 1) in GLID's two settings.

* ``MODEL.GLID.CLASSIFICATION.FEATURES: "encoder"`` (setting 1): the head reads the average of
  the normalized stride-32 encoder features; the pixel decoder and the decoder are not run.
* ``"cls_query"`` (setting 2): the decoder runs with its N grid queries plus ``[CLS]`` and the
  head reads ``[CLS]``'s output of the last decoder layer.

Linear probing (``LINEAR_PROBE``, MAE protocol) freezes everything but the head and puts a
parameter-free BatchNorm (``affine=False``) in front of it. Fine-tuning can mix batches with
timm's mixup / cutmix (then the loss is the soft-target cross-entropy) and smooth labels.
Only the last decoder layer is supervised (one classification output, as in MAE / BEiT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import ImageList
from timm.data import Mixup
from torch import nn

from .base import DecoderInputs, GLIDTask
from .build import register_task

__all__ = ["ClassificationTask"]

FEATURES = ("encoder", "cls_query")


@register_task("cls")
class ClassificationTask(GLIDTask):
    """Class logits from pooled encoder features or from the decoder's ``[CLS]``.

    Args:
        num_classes: C.
        features: ``"encoder"`` or ``"cls_query"``.
        head_in_features: width of the head's input (for the probe's BatchNorm).
        linear_probe: freeze everything but the head; BatchNorm without affine before it.
        mixup, cutmix, mix_prob, label_smoothing: timm's batch mixing and label smoothing.
    """

    dataset_mapper = "ImageClassificationDatasetMapper"
    uses_mask_features = False

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        features: str,
        head_in_features: int,
        linear_probe: bool = False,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mix_prob: float = 1.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(
                f"MODEL.GLID.CLASSIFICATION.FEATURES must be one of {FEATURES}, got {features!r}"
            )
        self.num_classes = num_classes
        self.features = features
        self.uses_decoder = features == "cls_query"
        self.uses_cls_query = self.uses_decoder
        self.trains_head_only = linear_probe
        self.probe_norm = (
            nn.BatchNorm1d(head_in_features, affine=False, eps=1e-6) if linear_probe else None
        )
        self.label_smoothing = label_smoothing
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                prob=mix_prob,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = cfg.MODEL.GLID.CLASSIFICATION
        return {
            "num_classes": cfg.MODEL.GLID.NUM_CLASSES,
            "features": c.FEATURES,
            "head_in_features": cls.head_in_features(cfg),
            "linear_probe": c.LINEAR_PROBE,
            "mixup": c.MIXUP,
            "cutmix": c.CUTMIX,
            "mix_prob": c.MIX_PROB,
            "label_smoothing": c.LABEL_SMOOTHING,
        }

    @classmethod
    def head_splits(cls, cfg) -> dict[str, int]:
        return {"logits": cfg.MODEL.GLID.NUM_CLASSES}

    @classmethod
    def head_in_features(cls, cfg) -> int:
        if cfg.MODEL.GLID.CLASSIFICATION.FEATURES == "encoder":
            return cfg.MODEL.SWIN.EMBED_DIM * 8  # res5
        return cfg.MODEL.GLID.HIDDEN_DIM

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D) head input through the probe's BatchNorm (when linear probing)."""
        if self.probe_norm is None:
            return x
        return self.probe_norm(x.squeeze(1)).unsqueeze(1)

    def decoder_inputs(self, batched_inputs: list[dict], images: ImageList) -> DecoderInputs:
        return DecoderInputs(with_cls=self.uses_decoder)

    def encoder_head_input(
        self, features: dict[str, torch.Tensor], inputs: DecoderInputs
    ) -> torch.Tensor:
        """(B, 1, C5): the average of the normalized stride-32 features."""
        return self._normalize(features["res5"].mean(dim=(2, 3)).unsqueeze(1))

    def decoder_head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 1, D): the ``[CLS]`` query's output (the last query)."""
        return self._normalize(hidden[:, -1:])

    def prepare_batch(
        self, images: ImageList, batched_inputs: list[dict]
    ) -> tuple[ImageList, list[dict]]:
        """Mixup / cutmix (when configured): mixed images and a ``soft_target`` per input."""
        if self.mixup is None:
            return images, batched_inputs
        if len(batched_inputs) % 2:
            raise ValueError(
                f"mixup / cutmix need an even batch per process, got {len(batched_inputs)}"
            )
        labels = self._labels(batched_inputs, images.tensor.device)
        mixed, soft = self.mixup(images.tensor.clone(), labels)
        inputs = [dict(x, soft_target=t) for x, t in zip(batched_inputs, soft)]
        return ImageList(mixed, images.image_sizes), inputs

    def _labels(self, batched_inputs: list[dict], device: torch.device) -> torch.Tensor:
        """The inputs' ``class_id`` s, checked against the class count."""
        for x in batched_inputs:
            if "class_id" not in x:
                raise KeyError(f"training input {x.get('file_name', '?')} has no 'class_id'")
        labels = [int(x["class_id"]) for x in batched_inputs]
        if max(labels) >= self.num_classes or min(labels) < 0:
            raise ValueError(
                f"class ids {sorted(set(labels))} out of range for "
                f"MODEL.GLID.NUM_CLASSES={self.num_classes}"
            )
        return torch.tensor(labels, device=device)

    def predictions(self, answers: dict, mask_features, query_points) -> dict:
        """``logits`` (B, C)."""
        return {"logits": answers["logits"][:, -1]}

    def losses(
        self, layer_predictions: list[dict], batched_inputs: list[dict], images: ImageList
    ) -> dict[str, torch.Tensor]:
        """``loss_cls``: soft-target cross-entropy after mixing, else cross-entropy with label
        smoothing, on the last layer."""
        logits = layer_predictions[-1]["logits"].float()
        if all("soft_target" in x for x in batched_inputs):
            soft = torch.stack([x["soft_target"] for x in batched_inputs]).to(logits)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            labels = self._labels(batched_inputs, logits.device)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return {"loss_cls": loss}

    def inference(
        self, predictions: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        """Per image ``classification``: (C,) logits."""
        return [{"classification": logits} for logits in predictions["logits"]]
