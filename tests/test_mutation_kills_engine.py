"""Tests written to kill surviving mutants of glid/engine (tools/mutation_test.sh): each pins
one behaviour the rest of the suite left open."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from torch.utils.data import Dataset

from glid.engine import GLIDPredictor
from glid.engine.resume import train_dataset_dicts
from tests.task_harness import tiny_task_cfg


def _predictor(task, tmp_path, *opts) -> GLIDPredictor:
    cfg = tiny_task_cfg(task, *opts)
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "m.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "m.pth")
    return GLIDPredictor(cfg)


def test_predictor_person_scores_scale_the_pose_scores(synth_root, tmp_path):
    """A person's score is its box score x its keypoints' mean score (the detector's score
    reaches the pose task)."""
    predictor = _predictor("pose", tmp_path, "MODEL.GLID.POSE.KEYPOINT_SCORE_THRESH", "-1.0")
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 80], [50, 5, 110, 85]])
    full = predictor(image, boxes)["instances"].scores
    scaled = predictor(image, boxes, np.array([0.5, 0.25]))["instances"].scores
    assert (full > 0).all()
    torch.testing.assert_close(scaled, full * torch.tensor([0.5, 0.25]))


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_predictor_feeds_the_model_its_input_format(synth_root, tmp_path, fmt):
    predictor = _predictor("sem", tmp_path, "INPUT.FORMAT", fmt)
    seen = []
    model = predictor.model
    predictor.model = lambda inputs: seen.append(inputs[0]["image"]) or model(inputs)
    image = np.zeros((32, 48, 3), np.uint8)
    image[..., 0] = 200  # blue in OpenCV's BGR order
    predictor(image)
    blue_channel = 0 if fmt == "BGR" else 2
    assert seen[0][blue_channel].min() == 200 and seen[0].sum() == 200 * seen[0][0].numel()


def test_predictor_refuses_other_input_formats(synth_root, tmp_path):
    with pytest.raises(ValueError, match="RGB or BGR, not L"):
        _predictor("sem", tmp_path, "INPUT.FORMAT", "L")


class _ListLikeDataset(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return {}


def test_train_dataset_dicts_names_a_dataset_that_is_not_a_list(synth_root):
    name = "glid_test_not_a_list"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, _ListLikeDataset)
    cfg = tiny_task_cfg("sem", "DATASETS.TRAIN", f"('{name}',)")
    with pytest.raises(TypeError, match=f"training dataset {name} must be a list of dicts"):
        train_dataset_dicts(cfg)


def test_load_proposals_is_refused(synth_root):
    """GLID has no proposal stage: loaded proposals would be ignored silently."""
    cfg = tiny_task_cfg("sem", "MODEL.LOAD_PROPOSALS", "True")
    with pytest.raises(ValueError, match="MODEL.LOAD_PROPOSALS is set, but GLID has no proposal"):
        train_dataset_dicts(cfg)
