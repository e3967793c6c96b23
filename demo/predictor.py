"""Run a GLID model on images or video frames and draw its answers with detectron2's Visualizer."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

from glid.engine import GLIDPredictor
from glid.evaluation.mim_evaluation import reconstruction_panel


def keep_confident(predictions: dict, score_threshold: float) -> dict:
    """``predictions`` with only the ``instances`` whose ``scores`` reach ``score_threshold``
    (detection, instance segmentation, pose); other outputs unchanged."""
    instances = predictions.get("instances")
    if instances is None or not instances.has("scores"):
        return predictions
    return dict(predictions, instances=instances[instances.scores >= score_threshold])


def draw_predictions(
    image_rgb: np.ndarray, predictions: dict, metadata, instance_mode=ColorMode.IMAGE
) -> VisImage:
    """Draw whatever the model answered (panoptic, instances, semantic, depth, top-5 classes,
    a masked-image-modeling reconstruction) on an RGB image. For a reconstruction the image
    must be the network's input (after the test transform) and the reconstruction RGB."""
    visualizer = Visualizer(image_rgb, metadata, instance_mode=instance_mode)
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        return visualizer.draw_panoptic_seg_predictions(panoptic_seg.to("cpu"), segments_info)
    if "instances" in predictions:
        return visualizer.draw_instance_predictions(predictions["instances"].to("cpu"))
    if "sem_seg" in predictions:
        return visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to("cpu"))
    if "depth" in predictions:
        return VisImage(draw_depth(image_rgb, predictions["depth"].to("cpu").numpy()))
    if "classification" in predictions:
        return _draw_top5(visualizer, predictions["classification"], metadata)
    if "reconstruction" in predictions:
        return _draw_reconstruction(image_rgb, predictions)
    raise KeyError(f"nothing to draw in predictions with keys {sorted(predictions)}")


def draw_depth(image_rgb: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """The image, the depth map (metres) as a MAGMA colour map, and a vertical scale bar
    labelled with the map's minimum and maximum depth (near = dark, far = bright)."""
    low, high = float(depth.min()), float(depth.max())
    scaled = (255 * (depth - low) / max(high - low, 1e-6)).astype(np.uint8)
    colored = cv2.applyColorMap(scaled, cv2.COLORMAP_MAGMA)[:, :, ::-1]
    h = depth.shape[0]
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(16, axis=1)
    bar = cv2.applyColorMap(ramp, cv2.COLORMAP_MAGMA)[:, :, ::-1]
    panel = np.full((h, 96, 3), 255, dtype=np.uint8)
    panel[:, 4:20] = bar
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, h / 900)
    cv2.putText(panel, f"{high:.2f} m", (24, 14), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, f"{low:.2f} m", (24, h - 6), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([image_rgb, colored, panel], axis=1)


def _draw_top5(visualizer: Visualizer, logits: torch.Tensor, metadata) -> VisImage:
    """The five most probable classes with their probabilities, top left."""
    probs = logits.float().softmax(-1).cpu()
    names = metadata.get("classes", None) or metadata.get("thing_classes", None)
    lines = []
    for p, c in zip(*probs.topk(min(5, probs.numel()))):
        name = names[int(c)] if names and int(c) < len(names) else f"class {int(c)}"
        lines.append(f"{name}: {100 * float(p):.1f}%")
    height = visualizer.output.height
    font = max(10, height // 30)
    for i, line in enumerate(lines):
        visualizer.draw_text(
            line, (4, 4 + i * 1.6 * font), font_size=font, color="w", horizontal_alignment="left"
        )
    return visualizer.output


def _draw_reconstruction(network_input_rgb: np.ndarray, predictions: dict) -> VisImage:
    """Masked image modeling: input | masked input | reconstruction, all at the network's
    input size (``reconstruction`` is RGB here, see :func:`draw_predictions`)."""
    recon = predictions["reconstruction"].float().round().clamp(0, 255).to(torch.uint8)
    recon = np.ascontiguousarray(recon.permute(1, 2, 0).cpu().numpy())
    mask = predictions["mim_mask"].cpu().numpy()
    return VisImage(reconstruction_panel(network_input_rgb, recon, mask))


class DetectionFileBoxes:
    """Person boxes of a detection-results JSON (COCO results: ``image_id``, ``category_id``,
    ``bbox`` xywh, ``score``; an entry may carry ``file_name`` instead of ``image_id``) for the
    demo's input files: an entry belongs to a file with its base name, or whose name is its
    ``image_id`` (COCO's ``000000397133.jpg`` is image 397133)."""

    def __init__(self, path: str, category_id: int = 1, score_threshold: float = 0.0):
        with open(path) as f:
            detections = json.load(f)
        if not isinstance(detections, list):
            raise ValueError(f"{path}: expected a JSON list of detection results")
        self.path = path
        self.by_key = defaultdict(list)
        for det in detections:
            if det.get("category_id") == category_id and det.get("score", 1.0) >= score_threshold:
                key = os.path.basename(det["file_name"]) if "file_name" in det else det["image_id"]
                self.by_key[key].append(det)

    def __call__(self, image_bgr: np.ndarray, path: str | None) -> tuple[np.ndarray, np.ndarray]:
        if path is None:
            raise ValueError(f"person boxes from {self.path} need the input's file name")
        name = os.path.basename(path)
        stem = os.path.splitext(name)[0]
        dets = self.by_key.get(name, []) + (
            self.by_key.get(int(stem), []) if stem.isdigit() else []
        )
        boxes = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        return boxes, np.array([d.get("score", 1.0) for d in dets], dtype=np.float64)


class DetectorBoxes:
    """Person boxes from a GLID detection model run on the same image first (its config and
    weights), those of class ``person_class`` scoring at least ``score_threshold``."""

    def __init__(self, cfg, person_class: str = "person", score_threshold: float = 0.5):
        self.predictor = GLIDPredictor(cfg)
        names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None) or []
        if person_class not in names:
            raise ValueError(
                f"the detector's classes ({cfg.DATASETS.TEST[0]}: {names}) have no "
                f"{person_class!r}"
            )
        self.class_id = names.index(person_class)
        self.score_threshold = score_threshold

    def __call__(self, image_bgr: np.ndarray, path: str | None) -> tuple[np.ndarray, np.ndarray]:
        instances = self.predictor(image_bgr)["instances"].to("cpu")
        keep = (instances.pred_classes == self.class_id) & (
            instances.scores >= self.score_threshold
        )
        return instances.pred_boxes.tensor[keep].numpy(), instances.scores[keep].numpy()


class VisualizationDemo:
    """:class:`glid.engine.GLIDPredictor` (BGR input, the task's test transform, every weight
    of ``MODEL.WEIGHTS`` loaded) plus drawing."""

    def __init__(
        self,
        cfg,
        instance_mode: ColorMode = ColorMode.IMAGE,
        score_threshold: float = 0.0,
        person_boxes: Callable | None = None,
    ):
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        self.metadata = MetadataCatalog.get(dataset)
        self.cpu_device = torch.device("cpu")
        self.instance_mode = instance_mode
        self.score_threshold = score_threshold
        self.predictor = GLIDPredictor(cfg)
        # Top-down pose: (image_bgr, path) -> (P, 4) xyxy person boxes and (P,) scores.
        self.person_boxes = person_boxes
        if (person_boxes is None) != (self.predictor.person_mapper is None):
            raise ValueError(
                "a pose model needs person boxes (--person-boxes FILE or --detector-config-file"
                " with --detector-weights); other models take none"
            )

    def predict(self, image_bgr: np.ndarray, path: str | None = None) -> dict:
        """The model's predictions; ``instances`` scoring below ``score_threshold`` dropped."""
        if self.person_boxes is not None:
            boxes, scores = self.person_boxes(image_bgr, path)
            predictions = self.predictor(image_bgr, boxes, scores)
        else:
            predictions = self.predictor(image_bgr)
        return keep_confident(predictions, self.score_threshold)

    def run_on_image(self, image_bgr: np.ndarray, path: str | None = None) -> tuple[dict, VisImage]:
        """Returns the (thresholded) predictions and the visualization of an (H, W, 3) BGR
        image (read from ``path``, where person boxes of a file are looked up)."""
        predictions = self.predict(image_bgr, path)
        image_rgb = image_bgr[:, :, ::-1]
        if "reconstruction" in predictions:  # drawn at the network's input, in RGB
            image_rgb = self.predictor.transform(image_rgb)
            if self.predictor.input_format == "BGR":
                predictions = dict(
                    predictions, reconstruction=predictions["reconstruction"].flip(0)
                )
        vis = draw_predictions(image_rgb, predictions, self.metadata, self.instance_mode)
        return predictions, vis

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        """Yields visualized BGR frames of a video."""
        video_visualizer = VideoVisualizer(self.metadata, self.instance_mode)
        while video.isOpened():
            ok, frame = video.read()
            if not ok:
                break
            predictions = self.predict(frame)
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if "instances" in predictions:
                vis = video_visualizer.draw_instance_predictions(
                    rgb, predictions["instances"].to(self.cpu_device)
                )
            else:
                vis = draw_predictions(rgb, predictions, self.metadata, self.instance_mode)
            yield cv2.cvtColor(vis.get_image(), cv2.COLOR_RGB2BGR)
