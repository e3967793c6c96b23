"""``GLIDPredictor``: detectron2's ``DefaultPredictor`` for GLID models."""

from __future__ import annotations

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from glid.checkpoint import GLIDCheckpointer
from glid.data.dataset_mappers import TopDownPoseDatasetMapper, build_dataset_mapper

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
        mapper = build_dataset_mapper(cfg, is_train=False)
        # Top-down pose answers person crops: the mapper's crop replaces the test transform.
        self.person_mapper = mapper if isinstance(mapper, TopDownPoseDatasetMapper) else None
        self.augmentations = None if self.person_mapper else mapper.augmentations
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"GLIDPredictor supports INPUT.FORMAT RGB or BGR, not {cfg.INPUT.FORMAT}"
            )

    def transform(self, image: np.ndarray) -> np.ndarray:
        """The test-time transform of an (H, W, 3) image (any channel order)."""
        if self.person_mapper is not None:
            raise TypeError("a top-down pose model transforms person crops, not whole images")
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.augmentations(aug_input)
        return aug_input.image

    def __call__(
        self,
        original_image: np.ndarray,
        person_boxes: np.ndarray | None = None,
        person_scores: np.ndarray | None = None,
    ) -> dict:
        """Predictions for one (H, W, 3) uint8 BGR image (OpenCV's order).

        A top-down pose model needs ``person_boxes`` (P, 4) absolute xyxy (and optionally their
        ``person_scores``, default 1): its ``instances`` then hold one person per box.
        """
        if (
            original_image.dtype != np.uint8
            or original_image.ndim != 3
            or original_image.shape[2] != 3
        ):
            raise ValueError(
                f"GLIDPredictor takes an (H, W, 3) uint8 image, got {original_image.dtype} of "
                f"shape {original_image.shape}; read files with glid.data.image_io.read_image("
                "path, 'BGR') (it scales 16-bit images to 8 bits)"
            )
        if (person_boxes is not None) != (self.person_mapper is not None):
            raise ValueError(
                "person boxes are for (and needed by) top-down pose models only; task: "
                f"{self.cfg.MODEL.GLID.TASK!r}"
            )
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            if self.person_mapper is not None:
                return self.predict_persons(original_image, person_boxes, person_scores)
            image = torch.as_tensor(self.transform(original_image).transpose(2, 0, 1).copy())
            inputs = {"image": image, "height": height, "width": width}
            return self.model([inputs])[0]

    def predict_persons(
        self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None, batch: int = 32
    ) -> dict:
        """Pose of each person box of an image in ``INPUT.FORMAT``: ``{"instances"}`` with one
        entry per box (boxes of zero size skipped)."""
        height, width = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64)
        inputs = [
            self.person_mapper.crop_person(
                image,
                {
                    "person_box": box.tolist(),
                    "person_score": float(score),
                    "height": height,
                    "width": width,
                },
            )
            for box, score in zip(boxes, scores)
            if box[2] > box[0] and box[3] > box[1]
        ]
        results = [
            r["instances"] for i in range(0, len(inputs), batch)
            for r in self.model(inputs[i : i + batch])
        ]  # fmt: skip
        if results:
            return {"instances": Instances.cat(results)}
        k = self.cfg.MODEL.GLID.POSE.NUM_KEYPOINTS
        empty = Instances((height, width))
        empty.pred_boxes = Boxes(torch.zeros(0, 4))
        empty.scores = torch.zeros(0)
        empty.pred_classes = torch.zeros(0, dtype=torch.long)
        empty.pred_keypoints = torch.zeros(0, k, 3)
        return {"instances": empty}
