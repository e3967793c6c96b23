"""The ``GLID`` meta-architecture: encoder -> pixel decoder -> queries -> transformer decoder ->
one linear task head, dispatching loss and post-processing on ``MODEL.GLID.TASK``."""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from .heads import LinearTaskHead
from .pixel_decoder import build_pixel_decoder
from .queries import GLIDQueries
from .tasks import build_task, build_task_head
from .transformer_decoder import GLIDTransformerDecoder

__all__ = ["GLID"]


@META_ARCH_REGISTRY.register()
class GLID(nn.Module):
    """Generalist encoder-decoder. Children: ``backbone``, ``pixel_decoder``, ``decoder``,
    ``queries``, ``head`` (the task's ``nn.Linear``) and ``task`` (loss and post-processing; no
    parameters).
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
        task: nn.Module,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        size_divisibility: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.queries = queries
        self.head = head
        self.task = task
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        # Tokens a task does not use stay in the model (checkpoints keep them for other tasks)
        # but are frozen, so the optimizer and DDP see no unused trainable parameter.
        self.backbone.mask_token.requires_grad_(getattr(task, "uses_mask_token", False))
        self.queries.cls_query.requires_grad_(getattr(task, "uses_cls_query", False))
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

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
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalize and pad the (C, H, W) ``image`` of every input into one batch."""
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

    def forward_outputs(self, images: ImageList) -> list[dict]:
        """Per decoder layer, the task's predictions (dict of tensors), last layer last."""
        features = self.backbone(images.tensor)
        mask_features, multi_scale = self.pixel_decoder(features)
        content, position = self.queries(images.tensor.shape[0])
        mask_embed_fn = None
        if getattr(self.task, "uses_mask_attention", False):
            mask_embed_fn = lambda h: self.head.split(h)["mask_embed"]  # noqa: E731
        hidden = self.decoder(content, position, multi_scale, mask_features, mask_embed_fn)
        return [self.task.predictions(self.head.split(h), mask_features) for h in hidden]

    def forward(self, batched_inputs: list[dict]):
        """detectron2 convention: a dict of losses in training, else a list of per-image
        results (``sem_seg``, ``instances``, ``panoptic_seg``, ``depth``, ``classification``)."""
        images = self.preprocess_image(batched_inputs)
        layer_outputs = self.forward_outputs(images)
        if self.training:
            return self.task.losses(layer_outputs, batched_inputs, images)
        return self.task.inference(layer_outputs[-1], batched_inputs, images)
