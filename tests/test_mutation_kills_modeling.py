"""Tests written to kill surviving mutants of glid/modeling (tools/mutation_test.sh): each pins
one behaviour the rest of the suite left open (a default, a boundary, a message)."""

import math

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, ImageList, Instances

from glid.modeling.box_ops import masks_to_boxes
from glid.modeling.queries import regular_grid_points
from glid.modeling.tasks.classification import ClassificationTask
from glid.modeling.tasks.depth import silog_loss
from glid.modeling.tasks.detection import box_targets_from_instances
from glid.modeling.tasks.pose import PoseEstimationTask, gaussian_targets

# Device plumbing is checked on the "meta" device: a tensor left on the CPU (a dropped
# ``device=``) then fails or shows, without a GPU.
META = torch.device("meta")

# ---- box_ops.py ----


def test_masks_to_boxes_of_no_masks_is_on_their_device():
    boxes = masks_to_boxes(torch.zeros(0, 4, 4, dtype=torch.bool, device=META))
    assert boxes.shape == (0, 4) and boxes.dtype == torch.float32 and boxes.device == META


# ---- queries.py ----


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, [(0.5, 0.5)]),
        (2, [(0.25, 0.5), (0.75, 0.5)]),
        (3, [(1 / 6, 0.5), (0.5, 0.5), (5 / 6, 0.5)]),  # floor(sqrt(3)) = 1 row
    ],
)
def test_regular_grid_of_fewer_than_four_points_is_one_row(n, expected):
    assert torch.allclose(regular_grid_points(n), torch.tensor(expected))


# ---- tasks/classification.py ----


def test_classification_input_without_class_id_is_named_by_its_file():
    task = ClassificationTask(num_classes=3, features="encoder", head_in_features=8)
    with pytest.raises(KeyError, match=r"training input img_7\.jpg has no 'class_id'"):
        task._labels([{"class_id": 0}, {"file_name": "img_7.jpg"}], torch.device("cpu"))


# ---- tasks/detection.py ----


def test_box_targets_are_on_the_images_device():
    inst = Instances((4, 8))  # empty: the class-range check would read a meta tensor's value
    inst.gt_classes = torch.zeros(0, dtype=torch.int64)
    inst.gt_boxes = Boxes(torch.zeros(0, 4))
    images = ImageList(torch.zeros(1, 3, 4, 8, device=META), [(4, 8)])
    (t,) = box_targets_from_instances([{"instances": inst}], images, num_classes=3)
    assert t["labels"].device == META and t["boxes"].device == META


# ---- tasks/depth.py ----


def test_silog_default_lambda_scale_and_eps_are_the_papers():
    """``silog_loss`` without the optional arguments: lambda 0.85, factor 10, eps 1e-6."""
    pred = torch.tensor([1.0, 2.0, 4.0])
    gt = torch.ones(3)
    g = np.log([1.0, 2.0, 4.0])
    expected = 10.0 * math.sqrt((g**2).mean() - 0.85 * g.mean() ** 2 + 1e-6)
    valid = torch.ones(3, dtype=torch.bool)
    assert silog_loss(pred, gt, valid).item() == pytest.approx(expected, rel=1e-6)


# ---- tasks/pose.py ----


def test_gaussian_target_weight_is_zero_exactly_three_sigma_off_the_map():
    """A keypoint exactly 3 sigma beyond an edge gets weight 0 (``within`` is strict), one just
    inside gets 1; on every edge."""
    h, w, sigma = 4, 5, 1.0
    inside, edge = 2.999, 3.0
    cases = [
        (w + edge, 2.0, 0.0),
        (w + inside, 2.0, 1.0),
        (-edge, 2.0, 0.0),
        (-inside, 2.0, 1.0),
        (2.0, h + edge, 0.0),
        (2.0, h + inside, 1.0),
        (2.0, -edge, 0.0),
        (2.0, -inside, 1.0),
    ]
    kp = torch.tensor([[[x, y, 2.0] for x, y, _ in cases]])
    _, weights = gaussian_targets(kp, (h, w), stride=1.0, sigma=sigma)
    assert weights[0].tolist() == [wt for *_, wt in cases]


def test_gaussian_targets_and_pose_loss_stay_on_the_keypoints_device():
    targets, weights = gaussian_targets(torch.zeros(1, 2, 3, device=META), (4, 5), 2.0, 1.0)
    assert targets.device == META and weights.device == META
    task = PoseEstimationTask(num_keypoints=2, deep_supervision=False)
    heatmaps = torch.zeros(1, 2, 4, 5, device=META)
    images = ImageList(torch.zeros(1, 3, 16, 20, device=META), [(16, 20)])
    losses = task.losses([{"pred_heatmaps": heatmaps}], [{"keypoints": torch.zeros(2, 3)}], images)
    assert losses["loss_keypoint"].device == META
