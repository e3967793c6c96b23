"""``GLIDTask``: everything that distinguishes one GLID task from another.

The model (:class:`glid.modeling.GLID`) is the same for every task: encoder, pixel decoder,
queries, transformer decoder and one ``nn.Linear``. A task says

* how that linear layer's output is split into named answers (:meth:`GLIDTask.head_splits`);
* what the model feeds the decoder (:meth:`GLIDTask.decoder_inputs`: an encoder mask for masked
  image modeling, per-image query points, whether ``[CLS]`` is appended, whether cross-attention
  is masked);
* how one decoder layer's answers become predictions (:meth:`GLIDTask.predictions`) and, with
  masked attention, the next layer's attention mask (:meth:`GLIDTask.attention_mask`);
* its losses over the predictions of every decoder layer (:meth:`GLIDTask.losses`);
* its inference into detectron2's per-image output fields (:meth:`GLIDTask.inference`);
* the dataset mapper it reads data with by default (:attr:`GLIDTask.dataset_mapper`) and, when
  its inputs are not whole images, how a dataset's dicts become them
  (:meth:`GLIDTask.dataset_dicts`);
* optionally: which parts of the model it runs and trains (:attr:`GLIDTask.uses_decoder`,
  :attr:`GLIDTask.trains_head_only`, :meth:`GLIDTask.head_in_features`), a training-batch
  transform (:meth:`GLIDTask.prepare_batch`, e.g. mixup) and an initialization of the model it
  is built into (:meth:`GLIDTask.initialize`, e.g. pre-training's xavier init).

A new task is one subclass registered with :func:`glid.modeling.tasks.register_task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from detectron2.structures import ImageList
from torch import nn

__all__ = ["DecoderInputs", "GLIDTask"]


@dataclass(frozen=True)
class DecoderInputs:
    """What the model needs from the task to run the encoder and the decoder on a batch.

    Attributes:
        encoder_mask: (B, h, w) bool map of masked units whose patch embeddings become the
            encoder's mask token (masked image modeling), or ``None``.
        query_points: (B, N, 2) normalized (x, y) query positions per image, or ``None`` for
            the N fine-tuning grid points.
        with_cls: append the ``[CLS]`` query (last).
        mask_attention: restrict each query's cross-attention to its mask predicted by the
            previous layer (:meth:`GLIDTask.attention_mask`).
    """

    encoder_mask: torch.Tensor | None = None
    query_points: torch.Tensor | None = None
    with_cls: bool = False
    mask_attention: bool = False


class GLIDTask(nn.Module):
    """Base class of GLID tasks (loss and post-processing; no parameters of its own).

    Subclasses set :attr:`dataset_mapper` and, where they need them, :attr:`uses_mask_token`
    and :attr:`uses_cls_query` (the model freezes the tokens a task never uses, so that DDP and
    the optimizer see no unused trainable parameter), and implement :meth:`head_splits`,
    :meth:`predictions`, :meth:`losses` and :meth:`inference`.
    """

    task_name: ClassVar[str]  # set by register_task: the value of MODEL.GLID.TASK
    dataset_mapper: ClassVar[str]  # default INPUT.DATASET_MAPPER_NAME
    uses_mask_token: ClassVar[bool] = False
    uses_cls_query: ClassVar[bool] = False
    # Whether predictions() reads the pixel decoder's per-pixel embedding map; if not, it is
    # not computed and its branch is frozen.
    uses_mask_features: ClassVar[bool] = True
    # The evaluator (glid.evaluation.EVALUATOR_REGISTRY) of the task's results; None: the one
    # of the test dataset's `evaluator_type` (pre-training scores itself on any image set).
    evaluator_type: ClassVar[str | None] = None
    # Instance-level (they may depend on the config): an encoder-only task's head reads
    # encoder_head_input(features), built from the last stage (res5): the pixel decoder,
    # queries, decoder and the other stages' output norms are frozen and not run; a head-only
    # task (linear probing) freezes everything but the head.
    uses_decoder: bool = True
    trains_head_only: bool = False
    # Test-time flip: in inference the model also runs on the horizontally flipped images and
    # hands both results to merge_flipped().
    flip_test: bool = False

    @classmethod
    def head_in_features(cls, cfg) -> int:
        """Input width of the task's linear head (default: the decoder width)."""
        return cfg.MODEL.GLID.HIDDEN_DIM

    @classmethod
    def head_splits(cls, cfg) -> dict[str, int]:
        """Ordered ``{answer name: size}`` of the task's one linear head."""
        raise NotImplementedError

    @classmethod
    def dataset_dicts(cls, cfg, dataset_dicts: list[dict], is_train: bool) -> list[dict]:
        """The inputs of the task's mapper made from a dataset's (image-level) dicts (default:
        the same; top-down pose makes one dict per person). Applied by the training and test
        loaders (:func:`glid.data.task_dataset_dicts`)."""
        return dataset_dicts

    def initialize(self, model: nn.Module) -> None:
        """Called once at the end of ``GLID.__init__`` (default: nothing)."""

    def prepare_batch(
        self, images: ImageList, batched_inputs: list[dict]
    ) -> tuple[ImageList, list[dict]]:
        """Training only: transform the normalized, padded batch and its inputs before the
        model runs (e.g. mixup / cutmix). Default: unchanged."""
        return images, batched_inputs

    def encoder_head_input(
        self, features: dict[str, torch.Tensor], inputs: DecoderInputs
    ) -> torch.Tensor:
        """Encoder-only tasks: (B, N, head_in_features) head input from the encoder's features
        (``res2..res5``) and this batch's :meth:`decoder_inputs`."""
        raise NotImplementedError(f"task {self.task_name!r} does not read the encoder alone")

    def decoder_head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """The part of one decoder layer's (B, N [+1], D) output that the head reads
        (default: all of it; e.g. classification keeps only ``[CLS]``)."""
        return hidden

    def decoder_inputs(self, batched_inputs: list[dict], images: ImageList) -> DecoderInputs:
        """What the encoder and decoder get for this batch (default: grid queries, no masks)."""
        return DecoderInputs()

    def predictions(
        self,
        answers: dict[str, torch.Tensor],
        mask_features: torch.Tensor,
        query_points: torch.Tensor,
    ) -> dict:
        """One decoder layer's predictions.

        Args:
            answers: the head's output split by name, each (B, N [+1], size); with ``[CLS]``
                its answer is the last.
            mask_features: (B, E, H/4, W/4) per-pixel embedding map of the pixel decoder
                (``None`` for encoder-only tasks and tasks that do not use it).
            query_points: (B, N, 2) normalized (x, y) positions of the N location queries
                (reference points, e.g. for boxes refined from the query's position); for
                encoder-only tasks whatever :meth:`decoder_inputs` gave (may be ``None``).
        """
        raise NotImplementedError

    def attention_mask(self, predictions: dict, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, h*w) bool, True where a query must not attend in the next layer, whose
        feature map is ``size`` = (h, w). Only called when ``mask_attention`` is set."""
        raise NotImplementedError(f"task {self.task_name!r} has no masked attention")

    def losses(
        self, layer_predictions: list[dict], batched_inputs: list[dict], images: ImageList
    ) -> dict[str, torch.Tensor]:
        """Weighted losses from every decoder layer's predictions (last layer last)."""
        raise NotImplementedError

    def inference(
        self, predictions: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        """Per-image results (detectron2 fields) from the last layer's predictions."""
        raise NotImplementedError

    def merge_flipped(
        self, results: list[dict], flipped_results: list[dict], batched_inputs: list[dict]
    ) -> list[dict]:
        """With :attr:`flip_test`: per-image results from those of the images and of their
        horizontal flips (``flipped_results``, as :meth:`inference` gave them, not flipped
        back)."""
        raise NotImplementedError(f"task {self.task_name!r} has no flip test")
