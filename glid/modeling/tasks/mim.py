"""Masked image modeling (``mim``): GLID's pre-training as query -> answer.

Per image, a share (``MODEL.GLID.MIM.MASK_RATIO``) of the 32x32 units is masked: the encoder
sees its mask token there (SimMIM-style, the hierarchical encoder keeps a full grid), and the
decoder gets one query per masked unit, placed at the unit's centre, plus ``[CLS]``. The one
linear head maps each such query to the unit's 3 x 32 x 32 pixels; the loss is the mean squared
error on the masked units' pixels, each unit normalized by its own mean and standard deviation
(MAE's ``norm_pix_loss``). The decoder only ever sees the masked units' queries, so its cost
grows linearly with the mask ratio.

``MODEL.GLID.MIM.USE_DECODER: False`` is the encoder-only baseline of Tab. 4 (SimMIM-style light
reconstruction): the head reads the stride-32 encoder features at the masked units directly.

Masks are drawn from the global torch generator in training (seeded per iteration for exact
resume) and from the image id at evaluation, so that evaluation numbers repeat.
"""

from __future__ import annotations

import numbers
import zlib

import torch
from detectron2.config import configurable
from detectron2.structures import ImageList
from torch import nn

from ..criterion import deep_supervision
from .base import DecoderInputs, GLIDTask
from .build import register_task

__all__ = [
    "MaskedImageModelingTask",
    "mask_unit_centres",
    "normalized_unit_pixels",
    "patchify",
    "random_unit_mask",
    "unit_index",
    "unpatchify",
]


def random_unit_mask(
    batch_size: int,
    grid: tuple[int, int],
    num_masked: int,
    generators: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """(B, gh, gw) bool masks with exactly ``num_masked`` True units per image, uniformly at
    random (``generators[i]`` draws image i's mask; ``None``: the global generator)."""
    gh, gw = grid
    if not 0 < num_masked <= gh * gw:
        raise ValueError(f"cannot mask {num_masked} of {gh}x{gw} units")
    generators = generators or [None] * batch_size
    masks = torch.zeros(batch_size, gh * gw, dtype=torch.bool)
    for i, generator in enumerate(generators):
        masks[i, torch.randperm(gh * gw, generator=generator)[:num_masked]] = True
    return masks.view(batch_size, gh, gw)


def mask_unit_centres(mask: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw) bool masks with the same count K per image -> (B, K, 2) normalized (x, y)
    centres of the masked units, in row-major unit order."""
    b, gh, gw = mask.shape
    index = mask.flatten(1).nonzero()[:, 1].view(b, -1)  # row-major, ascending per image
    rows = torch.div(index, gw, rounding_mode="floor")
    x = ((index - rows * gw).float() + 0.5) / gw
    y = (rows.float() + 0.5) / gh
    return torch.stack([x, y], dim=-1)


def patchify(images: torch.Tensor, unit: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/unit * W/unit, unit * unit * C): units row-major, each unit's
    pixels row-major with the channels last (MAE's layout)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // unit, unit, w // unit, unit)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // unit) * (w // unit), unit * unit * c)


def unpatchify(units: torch.Tensor, grid: tuple[int, int], unit: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, gh * gw, unit * unit * C) -> (B, C, gh*unit, gw*unit)."""
    b = units.shape[0]
    gh, gw = grid
    x = units.reshape(b, gh, gw, unit, unit, -1)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, gh * unit, gw * unit)


def normalized_unit_pixels(units: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each unit's pixel vector minus its mean, over its standard deviation (unbiased variance,
    as MAE computes it), along the last dimension."""
    mean = units.mean(dim=-1, keepdim=True)
    var = units.var(dim=-1, keepdim=True)
    return (units - mean) / (var + eps).sqrt()


def unit_index(points: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Row-major unit index of (..., 2) normalized unit centres on a (gh, gw) grid."""
    gh, gw = grid
    return (points[..., 1] * gh).long() * gw + (points[..., 0] * gw).long()


def _image_generator(image_id) -> torch.Generator:
    """A generator seeded from an image id (int or str), for repeatable evaluation masks."""
    if isinstance(image_id, numbers.Integral):
        seed = int(image_id)
    else:
        seed = zlib.crc32(str(image_id).encode())
    return torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


@register_task("mim")
class MaskedImageModelingTask(GLIDTask):
    """GLID pre-training: reconstruct masked 32x32 units from one query per unit.

    Args:
        unit_size: side of a masking unit in pixels (a multiple of the encoder's 32).
        mask_ratio: share of units masked per image.
        norm_pix_loss: regress per-unit-normalized pixels.
        use_decoder: GLID (True) or the encoder-only baseline (False).
        xavier_init: xavier-uniform init of the Transformer blocks' Linear layers (Tab. 5).
        deep_supervision: the loss on every decoder layer's reconstruction.
        encoder_stride: stride of the encoder's last stage (encoder-only: one token per unit).
        pixel_mean, pixel_std: the model's input normalization (reconstructions in pixels).
        crop_size: the image-level mapper's crop side, which units must tile.
    """

    dataset_mapper = "ImageClassificationDatasetMapper"
    evaluator_type = "mim"
    uses_mask_features = False
    uses_mask_token = True
    uses_cls_query = True

    @configurable
    def __init__(
        self,
        *,
        unit_size: int,
        mask_ratio: float,
        norm_pix_loss: bool,
        use_decoder: bool,
        xavier_init: bool,
        deep_supervision: bool,
        encoder_stride: int,
        pixel_mean: tuple[float, ...] = (0.0, 0.0, 0.0),
        pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0),
        crop_size: int | None = None,
    ):
        super().__init__()
        if unit_size % 32:
            raise ValueError(f"MODEL.GLID.MIM.UNIT_SIZE must be a multiple of 32, got {unit_size}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"MODEL.GLID.MIM.MASK_RATIO must be in (0, 1), got {mask_ratio}")
        if not use_decoder and unit_size != encoder_stride:
            raise ValueError(
                f"the encoder-only MIM baseline reads one stride-{encoder_stride} encoder token "
                f"per unit: MODEL.GLID.MIM.UNIT_SIZE must be {encoder_stride}, got {unit_size}"
            )
        if crop_size is not None and crop_size % unit_size:
            # Units would straddle the batch padding (and count padding in the loss).
            raise ValueError(
                f"INPUT.RANDOM_RESIZED_CROP.SIZE={crop_size} must be a multiple of "
                f"MODEL.GLID.MIM.UNIT_SIZE={unit_size}"
            )
        self.unit_size = unit_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.uses_decoder = use_decoder
        self.uses_cls_query = use_decoder
        self.xavier_init = xavier_init
        self.deep_supervision = deep_supervision
        # To map reconstructions back to pixel values (not a state: not in checkpoints).
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        m = cfg.MODEL.GLID.MIM
        return {
            "unit_size": m.UNIT_SIZE,
            "mask_ratio": m.MASK_RATIO,
            "norm_pix_loss": m.NORM_PIX_LOSS,
            "use_decoder": m.USE_DECODER,
            "xavier_init": m.XAVIER_INIT,
            "deep_supervision": cfg.MODEL.GLID.DEEP_SUPERVISION,
            "encoder_stride": cfg.MODEL.SWIN.PATCH_SIZE * 8,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "crop_size": cfg.INPUT.RANDOM_RESIZED_CROP.SIZE,
        }

    @classmethod
    def head_splits(cls, cfg) -> dict[str, int]:
        return {"pixels": 3 * cfg.MODEL.GLID.MIM.UNIT_SIZE**2}

    @classmethod
    def head_in_features(cls, cfg) -> int:
        if cfg.MODEL.GLID.MIM.USE_DECODER:
            return cfg.MODEL.GLID.HIDDEN_DIM
        return cfg.MODEL.SWIN.EMBED_DIM * 8  # res5

    def initialize(self, model: nn.Module) -> None:
        """Xavier-uniform weights and zero biases for every Linear layer of the encoder's and
        the decoder's Transformer blocks (ViT / MAE; Tab. 5)."""
        if not self.xavier_init:
            return
        for blocks in (model.backbone.swin.layers, model.decoder):
            for module in blocks.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def unit_grid(self, images: ImageList) -> tuple[int, int]:
        """(gh, gw) units of the padded batch."""
        h, w = images.tensor.shape[-2:]
        if h % self.unit_size or w % self.unit_size:
            raise ValueError(
                f"MIM batch of size {h}x{w} does not tile into {self.unit_size}-pixel units"
            )
        return h // self.unit_size, w // self.unit_size

    def num_masked(self, grid: tuple[int, int]) -> int:
        """Masked units per image: round(ratio x units), at least 1."""
        return max(1, round(self.mask_ratio * grid[0] * grid[1]))

    def decoder_inputs(self, batched_inputs: list[dict], images: ImageList) -> DecoderInputs:
        grid = self.unit_grid(images)
        generators = None
        if not self.training:
            generators = [
                _image_generator(x.get("image_id", i)) for i, x in enumerate(batched_inputs)
            ]
        mask = random_unit_mask(len(batched_inputs), grid, self.num_masked(grid), generators)
        mask = mask.to(images.tensor.device)
        return DecoderInputs(
            encoder_mask=mask, query_points=mask_unit_centres(mask), with_cls=self.uses_decoder
        )

    def encoder_head_input(
        self, features: dict[str, torch.Tensor], inputs: DecoderInputs
    ) -> torch.Tensor:
        """The masked units' stride-32 tokens, (B, K, C), in row-major unit order."""
        res5 = features["res5"].flatten(2).transpose(1, 2)  # (B, gh*gw, C)
        index = inputs.encoder_mask.flatten(1).nonzero()[:, 1].view(res5.shape[0], -1)
        return torch.gather(res5, 1, index[..., None].expand(-1, -1, res5.shape[-1]))

    def predictions(self, answers: dict, mask_features, query_points: torch.Tensor) -> dict:
        """``pixels`` (B, K, 3 * unit^2) of the K masked units and their centres ``points``."""
        k = query_points.shape[1]
        return {"pixels": answers["pixels"][:, :k], "points": query_points}

    def targets(self, predictions: dict, images: ImageList) -> torch.Tensor:
        """(B, K, 3 * unit^2) pixels of the masked units of the normalized padded images."""
        index = unit_index(predictions["points"], self.unit_grid(images))
        units = patchify(images.tensor, self.unit_size)
        return torch.gather(units, 1, index[..., None].expand(-1, -1, units.shape[-1]))

    def reconstruction_error(
        self, predictions: dict, images: ImageList, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) mean squared error over each image's masked units (normalized if configured);
        ``target``: :meth:`targets`, when the caller has them already."""
        if target is None:
            target = self.targets(predictions, images)
        if self.norm_pix_loss:
            target = normalized_unit_pixels(target)
        return (predictions["pixels"].float() - target).pow(2).mean(dim=(1, 2))

    def losses(
        self, layer_predictions: list[dict], batched_inputs: list[dict], images: ImageList
    ) -> dict[str, torch.Tensor]:
        """``loss_mim`` (and ``loss_mim_{i}`` per earlier decoder layer with deep supervision)."""

        def layer_losses(predictions: dict) -> dict[str, torch.Tensor]:
            return {"loss_mim": self.reconstruction_error(predictions, images).mean()}

        return deep_supervision(layer_predictions, layer_losses, self.deep_supervision)

    def inference(
        self, predictions: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        """Per image: ``mim_loss`` (the training loss of its masked units), ``mim_mask``
        (gh, gw) and ``reconstruction`` (3, h, w) float pixel values in the input's channel
        order and size (before padding): the input with the masked units replaced by their
        predictions (a per-unit-normalized prediction is mapped back with the unit's own mean
        and std, as MAE visualizes it)."""
        grid = self.unit_grid(images)
        target = self.targets(predictions, images)
        error = self.reconstruction_error(predictions, images, target)
        pixels = predictions["pixels"].float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            pixels = pixels * std + mean
        units = patchify(images.tensor, self.unit_size).clone()
        gh, gw = grid
        index = unit_index(predictions["points"], grid)
        units.scatter_(1, index[..., None].expand(-1, -1, units.shape[-1]), pixels)
        reconstruction = unpatchify(units, grid, self.unit_size) * self.pixel_std + self.pixel_mean
        mask = torch.zeros(len(batched_inputs), gh * gw, dtype=torch.bool, device=index.device)
        mask.scatter_(1, index, True)
        results = []
        for i, (h, w) in enumerate(images.image_sizes):
            results.append(
                {
                    "mim_loss": error[i],
                    "mim_mask": mask[i].view(gh, gw),
                    "reconstruction": reconstruction[i, :, :h, :w],
                }
            )
        return results
