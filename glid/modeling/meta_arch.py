"""The ``GLID`` meta-architecture: encoder -> pixel decoder -> queries -> transformer decoder ->
one linear task head. It knows no task: the task (``MODEL.GLID.TASK``, a
:class:`~glid.modeling.tasks.GLIDTask`) says what the encoder and decoder get, turns each decoder
layer's answers into predictions, and owns the losses and the inference."""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from .heads import LinearTaskHead
from .pixel_decoder import build_pixel_decoder
from .precision import autocast_dtype, to_float32
from .queries import GLIDQueries
from .tasks import GLIDTask, build_task, build_task_head
from .transformer_decoder import GLIDTransformerDecoder

__all__ = ["GLID"]


@META_ARCH_REGISTRY.register()
class GLID(nn.Module):
    """Generalist encoder-decoder. Children: ``backbone``, ``pixel_decoder``, ``decoder``,
    ``queries``, ``head`` (the task's ``nn.Linear``) and ``task`` (a :class:`GLIDTask`: decoder
    inputs, predictions, losses and inference; no parameters).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_decoder: nn.Module,
        decoder: GLIDTransformerDecoder,
        queries: GLIDQueries,
        head: LinearTaskHead,
        task: GLIDTask,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        size_divisibility: int = 32,
        inference_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.queries = queries
        self.head = head
        self.task = task
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        # TEST.AMP: autocast dtype of inference (None = float32).
        self.inference_dtype = inference_dtype
        # Tokens a task does not use stay in the model (checkpoints keep them for other tasks)
        # but are frozen, so the optimizer and DDP see no unused trainable parameter.
        self.backbone.mask_token.requires_grad_(task.uses_mask_token)
        self.queries.cls_query.requires_grad_(task.uses_cls_query)
        if not task.uses_mask_features:
            for module in self.pixel_decoder.mask_branch():
                module.requires_grad_(False)
            for name in self.pixel_decoder.mask_branch_inputs:
                self.backbone.output_norms[name].requires_grad_(False)
        if not task.uses_decoder:
            for module in (self.pixel_decoder, self.decoder, self.queries):
                module.requires_grad_(False)
            for name, norm in self.backbone.output_norms.items():
                norm.requires_grad_(name == "res5")
        if task.trains_head_only:
            for name, module in self.named_children():
                if name != "head":
                    module.requires_grad_(False)
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        task.initialize(self)

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "pixel_decoder": build_pixel_decoder(cfg, backbone.output_shape()),
            "decoder": GLIDTransformerDecoder(cfg),
            "queries": GLIDQueries(
                cfg.MODEL.GLID.HIDDEN_DIM,
                cfg.MODEL.GLID.NUM_QUERIES,
                cfg.MODEL.GLID.LEARNABLE_QUERY_POSITIONS,
            ),
            "head": build_task_head(cfg),
            "task": build_task(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "inference_dtype": (
                autocast_dtype(cfg.TEST.AMP.PRECISION, "TEST.AMP.PRECISION", cfg.MODEL.DEVICE)
                if cfg.TEST.AMP.ENABLED
                else None
            ),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalize and pad the (C, H, W) ``image`` of every input into one batch.

        This is the only place images are padded, in training and inference alike: after
        normalization, with 0 (the mean colour), to a multiple of ``size_divisibility``; the
        mappers do not pad. Targets are padded to the same size by the task.
        """
        images = []
        for x in batched_inputs:
            image = x["image"]
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"'image' must be (3, H, W), got {tuple(image.shape)} "
                    f"({x.get('file_name', '?')})"
                )
            images.append((image.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward_outputs(
        self, batched_inputs: list[dict], images: ImageList, all_layers: bool = True
    ) -> list[dict]:
        """The task's predictions per decoder layer (last layer last), or only the last layer's
        when ``all_layers`` is False; each layer's head output is computed once. An
        encoder-only task gets one entry, from the encoder's features."""
        inputs = self.task.decoder_inputs(batched_inputs, images)
        features = self.backbone(images.tensor, mask=inputs.encoder_mask)
        if not self.task.uses_decoder:
            answers = self.head.split(self.task.encoder_head_input(features, inputs))
            return [self.task.predictions(answers, None, inputs.query_points)]
        mask_features, multi_scale = self.pixel_decoder(
            features, with_mask_features=self.task.uses_mask_features
        )
        batch_size = images.tensor.shape[0]
        points = inputs.query_points
        if points is None:
            points = self.queries.grid_points.unsqueeze(0).expand(batch_size, -1, -1)
        content, position = self.queries(batch_size, points=points, with_cls=inputs.with_cls)

        def predict(hidden: torch.Tensor, mask_size: tuple[int, int] | None):
            answers = self.head.split(self.task.decoder_head_input(hidden))
            predictions = self.task.predictions(answers, mask_features, points)
            blocked = None
            if mask_size is not None:
                blocked = self.task.attention_mask(predictions, mask_size)
            return predictions, blocked

        return self.decoder(
            content,
            position,
            multi_scale,
            predict,
            mask_attention=inputs.mask_attention,
            all_layers=all_layers,
        )

    def last_layer_outputs(self, batched_inputs: list[dict], images: ImageList) -> dict:
        """The last layer's predictions for inference: under autocast in ``inference_dtype``
        (``TEST.AMP``) when set, always returned in float32 for the task's post-processing."""
        if self.inference_dtype is None:
            return self.forward_outputs(batched_inputs, images, all_layers=False)[-1]
        with torch.autocast(self.device.type, dtype=self.inference_dtype):
            last = self.forward_outputs(batched_inputs, images, all_layers=False)[-1]
        return to_float32(last)

    def forward(self, batched_inputs: list[dict]):
        """detectron2 convention: a dict of losses in training, else a list of per-image
        results (``sem_seg``, ``instances``, ``panoptic_seg``, ``depth``, ``classification``)."""
        images = self.preprocess_image(batched_inputs)
        if self.training:
            images, batched_inputs = self.task.prepare_batch(images, batched_inputs)
            layer_predictions = self.forward_outputs(batched_inputs, images)
            return self.task.losses(layer_predictions, batched_inputs, images)
        last = self.last_layer_outputs(batched_inputs, images)
        results = self.task.inference(last, batched_inputs, images)
        if self.task.flip_test:  # the same inference on the horizontally flipped images
            flipped_inputs = [dict(x, image=x["image"].flip(-1)) for x in batched_inputs]
            flipped_images = self.preprocess_image(flipped_inputs)
            last = self.last_layer_outputs(flipped_inputs, flipped_images)
            flipped = self.task.inference(last, flipped_inputs, flipped_images)
            results = self.task.merge_flipped(results, flipped, batched_inputs)
        return results
