"""``GLIDPredictor``: detectron2's ``DefaultPredictor`` for GLID models."""

from __future__ import annotations

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from glid.checkpoint import GLIDCheckpointer
from glid.data.dataset_mappers import build_dataset_mapper

__all__ = ["GLIDPredictor"]


class GLIDPredictor:
    """One image (H, W, 3) uint8 BGR in, the model's per-image outputs out, like detectron2's
    ``DefaultPredictor``, with two differences:

    * every parameter of the model must load from ``MODEL.WEIGHTS`` (:class:`GLIDCheckpointer`,
      exact): a demo never draws the answers of a model that was not loaded;
    * the image goes through the test-time transform of the task's registered test mapper
      (resize for dense tasks, resize + centre crop for classification), so that the demo
      sees what evaluation sees. Dense outputs come back at the input image's size.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        GLIDCheckpointer.from_config(cfg, self.model, require_all=True).load(cfg.MODEL.WEIGHTS)
        self.augmentations = build_dataset_mapper(cfg, is_train=False).augmentations
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"GLIDPredictor supports INPUT.FORMAT RGB or BGR, not {cfg.INPUT.FORMAT}"
            )

    def transform(self, image: np.ndarray) -> np.ndarray:
        """The test-time transform of an (H, W, 3) image (any channel order)."""
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.augmentations(aug_input)
        return aug_input.image

    def __call__(self, original_image: np.ndarray) -> dict:
        """Predictions for one (H, W, 3) uint8 BGR image (OpenCV's order)."""
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            image = torch.as_tensor(self.transform(original_image).transpose(2, 0, 1).copy())
            inputs = {"image": image, "height": height, "width": width}
            return self.model([inputs])[0]
