"""Detection (``MODEL.GLID.TASK = "det"``): box conversions and GIoU against hand-computed values,
the matcher against brute force, the focal loss against a hand-computed case, box refinement
from the query points, top-k inference on hand-made outputs, the mapper (crowd, crop, empty
images, both augmentations), registration of COCO-format data from the environment, a few
training iterations then ``--eval-only`` through ``COCOEvaluator``, and the demo's score
threshold."""

import itertools
import json
import math
import os
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.engine import default_argument_parser
from detectron2.structures import Boxes, BoxMode, ImageList, Instances, pairwise_iou

from glid.data.dataset_mappers import build_dataset_mapper
from glid.data.dataset_mappers.augmentations import build_detection_augmentations
from glid.data.dataset_mappers.detection_mapper import box_instances
from glid.data.datasets.register_coco_env import (
    parse_coco_datasets,
    register_coco_datasets_from_env,
)
from glid.modeling.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou_union,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
)
from glid.modeling.losses import BoxLoss, sigmoid_focal_loss
from glid.modeling.matcher import BoxL1Cost, GIoUCost, HungarianMatcher, SigmoidFocalClassCost
from glid.modeling.tasks.detection import DetectionTask, box_targets_from_instances
from tests.task_harness import tiny_task_cfg
from tests.utils import REPO_ROOT

DET_TINY = os.path.join(REPO_ROOT, "configs", "quickstart", "glid_synth_det_tiny.yaml")


# ---- box operations ----


def test_box_conversions_hand_values():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [10.0, 20.0, 4.0, 6.0]])
    xyxy = torch.tensor([[0.4, 0.3, 0.6, 0.7], [8.0, 17.0, 12.0, 23.0]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    batched = torch.rand(2, 3, 4)  # any leading shape
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(batched)), batched)
    torch.testing.assert_close(inverse_sigmoid(torch.tensor([0.25, 0.5])).sigmoid(),
                               torch.tensor([0.25, 0.5]))  # fmt: skip


def test_giou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor(
        [
            [1.0, 1.0, 3.0, 3.0],  # overlap 1, union 7, enclosing 9
            [3.0, 0.0, 4.0, 2.0],  # disjoint: union 6, enclosing 8
            [0.0, 0.0, 2.0, 2.0],  # identical
            [0.5, 0.5, 1.5, 1.5],  # inside: IoU 1/4, enclosing = a
        ]
    )
    iou, union = box_iou_union(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0, 1.0, 0.25]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 6.0, 4.0, 4.0]]))
    expected = torch.tensor([[1 / 7 - 2 / 9, -2 / 8, 1.0, 0.25]])
    torch.testing.assert_close(generalized_box_iou(a, b), expected)
    # IoU agrees with detectron2's on random boxes; GIoU <= IoU and in [-1, 1].
    g = torch.Generator().manual_seed(0)
    p = box_cxcywh_to_xyxy(torch.rand(6, 4, generator=g) * 0.5 + 0.25)
    q = box_cxcywh_to_xyxy(torch.rand(5, 4, generator=g) * 0.5 + 0.25)
    torch.testing.assert_close(box_iou_union(p, q)[0], pairwise_iou(Boxes(p), Boxes(q)))
    giou = generalized_box_iou(p, q)
    assert (giou <= box_iou_union(p, q)[0] + 1e-6).all() and (giou >= -1).all()


# ---- matching and losses ----


def test_focal_loss_hand_computed():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    # Positive entry: p = 0.5, alpha 0.25, (1 - p)^2 = 0.25, BCE = log 2.
    pos = 0.25 * 0.25 * math.log(2)
    # Negative entry: p = sigmoid(2), weight 0.75, p^2, BCE = -log(1 - p) = log(1 + e^2).
    p = 1 / (1 + math.exp(-2))
    neg = 0.75 * p**2 * math.log(1 + math.exp(2))
    loss = sigmoid_focal_loss(logits, targets, num_boxes=2.0, alpha=0.25, gamma=2.0)
    assert loss.item() == pytest.approx((pos + neg) / 2, rel=1e-6)


def test_box_loss_zero_on_exact_match_and_hand_value():
    target = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    exact = {"pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])}
    idx = [(torch.tensor([0]), torch.tensor([0]))]
    losses = BoxLoss()(exact, [target], idx, 1.0)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    shifted = {"pred_boxes": torch.tensor([[[0.6, 0.5, 0.2, 0.2]]])}  # half overlap in x
    losses = BoxLoss()(shifted, [target], idx, 2.0)
    assert losses["loss_bbox"].item() == pytest.approx(0.1 / 2, rel=1e-5)
    # IoU = 0.02 / 0.06 = 1/3; enclosing 0.3 x 0.2 = union: GIoU = 1/3.
    assert losses["loss_giou"].item() == pytest.approx((1 - 1 / 3) / 2, rel=1e-5)


def _brute_force(cost: torch.Tensor) -> float:
    """Lowest total cost over every injective map of the T targets to the N queries."""
    n, t = cost.shape
    return min(
        sum(cost[q, j].item() for j, q in enumerate(queries))
        for queries in itertools.permutations(range(n), t)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matcher_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n, t, c = 6, 3, 4
    predictions = {
        "pred_logits": torch.randn(1, n, c, generator=g),
        "pred_boxes": torch.rand(1, n, 4, generator=g) * 0.5 + 0.25,
    }
    target = {
        "labels": torch.randint(0, c, (t,), generator=g),
        "boxes": torch.rand(t, 4, generator=g) * 0.5 + 0.25,
    }
    terms = [SigmoidFocalClassCost(2.0), BoxL1Cost(5.0), GIoUCost(2.0)]
    matcher = HungarianMatcher(terms)
    (rows, cols), = matcher(predictions, [target])  # fmt: skip
    assert len(rows) == t and len(set(rows.tolist())) == t and sorted(cols.tolist()) == [0, 1, 2]
    # The cost matrix is the sum of the hand-written costs.
    prob = predictions["pred_logits"][0].sigmoid()[:, target["labels"]]
    focal = 0.25 * (1 - prob) ** 2 * -prob.log() - 0.75 * prob**2 * -(1 - prob).log()
    l1 = (predictions["pred_boxes"][0][:, None] - target["boxes"][None]).abs().sum(-1)
    giou = generalized_box_iou(
        box_cxcywh_to_xyxy(predictions["pred_boxes"][0]), box_cxcywh_to_xyxy(target["boxes"])
    )
    cost = 2.0 * focal + 5.0 * l1 - 2.0 * giou
    torch.testing.assert_close(matcher.cost_matrix(predictions, target, 0), cost, atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), abs=1e-5)


# ---- the task ----


def _task(*opts) -> DetectionTask:
    from detectron2.config import get_cfg

    import glid

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(DET_TINY)
    cfg.merge_from_list(list(opts))
    return DetectionTask(cfg)


def test_boxes_refined_from_query_points():
    task = _task("MODEL.GLID.DETECTION.BOX_SIZE_PRIOR", "(0.1, 0.2)")
    points = torch.tensor([[[0.25, 0.75], [0.5, 0.5]]])
    zero = {"pred_logits": torch.zeros(1, 2, 6), "box_delta": torch.zeros(1, 2, 4)}
    out = task.predictions(zero, torch.zeros(1, 8, 4, 4), points)
    # Zero deltas give the reference box: the query's point and the size prior.
    torch.testing.assert_close(
        out["pred_boxes"], torch.tensor([[[0.25, 0.75, 0.1, 0.2], [0.5, 0.5, 0.1, 0.2]]])
    )
    # The prior class probability at zero logits.
    torch.testing.assert_close(out["pred_logits"].sigmoid(), torch.full((1, 2, 6), 0.01))
    # A delta moves the box in logit space around the reference.
    delta = torch.tensor([[[1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]])
    out = task.predictions({"pred_logits": zero["pred_logits"], "box_delta": delta},
                           torch.zeros(1, 8, 4, 4), points)  # fmt: skip
    expected_cx = torch.sigmoid(torch.tensor(1.0) + inverse_sigmoid(torch.tensor(0.25)))
    expected_h = torch.sigmoid(torch.tensor(-1.0) + inverse_sigmoid(torch.tensor(0.2)))
    assert out["pred_boxes"][0, 0, 0].item() == pytest.approx(expected_cx.item(), rel=1e-5)
    assert out["pred_boxes"][0, 0, 3].item() == pytest.approx(expected_h.item(), rel=1e-5)


def test_topk_inference_in_original_image_coordinates():
    task = _task("MODEL.GLID.DETECTION.TEST_TOPK", "3")
    # 3 queries x 2 classes; scores (sigmoid) ranked: (q1, c0) > (q2, c1) > (q0, c1) > rest.
    logits = torch.tensor([[-5.0, 1.0], [3.0, -5.0], [-5.0, 2.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.75, 0.5, 0.5, 1.0]])
    # The input was resized to 100 x 200 (h x w) from an original 200 x 400, padded to 128 x 224.
    images = ImageList(torch.zeros(1, 3, 128, 224), [(100, 200)])
    (result,) = task.inference(
        {"pred_logits": logits[None], "pred_boxes": boxes[None]},
        [{"height": 200, "width": 400}],
        images,
    )
    inst = result["instances"]
    assert inst.image_size == (200, 400)
    torch.testing.assert_close(inst.scores, torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    assert inst.pred_classes.tolist() == [0, 1, 1]
    expected = torch.tensor(
        [[0.0, 0.0, 200.0, 100.0], [200.0, 0.0, 400.0, 200.0], [100.0, 50.0, 300.0, 150.0]]
    )
    torch.testing.assert_close(inst.pred_boxes.tensor, expected)


def test_targets_normalized_by_unpadded_size_and_class_check():
    inst = Instances((100, 200))
    inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 100.0, 50.0]]))
    inst.gt_classes = torch.tensor([5])
    images = ImageList(torch.zeros(1, 3, 128, 224), [(100, 200)])
    (target,) = box_targets_from_instances([{"instances": inst}], images, num_classes=6)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.25, 0.25, 0.5, 0.5]]))
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        box_targets_from_instances([{"instances": inst}], images, num_classes=5)


def test_image_without_boxes_trains(synth_root):
    from detectron2.modeling import build_model

    cfg = tiny_task_cfg("det")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = build_dataset_mapper(cfg, True)(DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0])
    empty = dict(batch, instances=batch["instances"][[]])
    losses = model([empty, batch])
    assert all(torch.isfinite(v) for v in losses.values())
    losses = model([empty])  # nothing to match: focal loss on negatives only, box losses 0
    assert losses["loss_class"].item() > 0 and losses["loss_bbox"].item() == 0.0
    sum(losses.values()).backward()


# ---- data ----


def _anno(box, category_id=0, iscrowd=0):
    return {
        "bbox": box,
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": category_id,
        "iscrowd": iscrowd,
        "segmentation": [[box[0], box[1], box[2], box[1], box[2], box[3]]],
    }


def test_box_instances_drop_crowd_and_boxes_outside_crop():
    annos = [
        _anno([10.0, 10.0, 30.0, 30.0], 1),  # inside the crop
        _anno([40.0, 0.0, 80.0, 20.0], 2),  # half inside: clipped
        _anno([60.0, 60.0, 90.0, 90.0], 3),  # outside: dropped
        _anno([0.0, 0.0, 20.0, 20.0], 4, iscrowd=1),  # crowd: never a target
    ]
    crop = T.TransformList([T.CropTransform(0, 0, 50, 50)])
    inst = box_instances(annos, crop, (50, 50))
    assert inst.gt_classes.tolist() == [1, 2]
    torch.testing.assert_close(
        inst.gt_boxes.tensor, torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 0.0, 50.0, 20.0]])
    )
    assert not inst.has("gt_masks")
    empty = box_instances([], crop, (50, 50))
    assert len(empty) == 0 and empty.gt_boxes.tensor.shape == (0, 4)


def test_box_instances_follow_flip_and_resize():
    annos = [_anno([10.0, 5.0, 30.0, 25.0], 1)]
    flip = T.TransformList([T.HFlipTransform(100)])
    torch.testing.assert_close(
        box_instances(annos, flip, (50, 100)).gt_boxes.tensor, torch.tensor([[70.0, 5, 90, 25]])
    )
    resize = T.TransformList([T.ResizeTransform(50, 100, 100, 200)])
    torch.testing.assert_close(
        box_instances(annos, resize, (100, 200)).gt_boxes.tensor,
        torch.tensor([[20.0, 10, 60, 50]]),
    )


def test_detr_and_lsj_augmentations(synth_root):
    cfg = tiny_task_cfg("det")
    augs = build_detection_augmentations(cfg)
    assert [type(a).__name__ for a in augs] == ["RandomFlip", "RandomApply", "ResizeShortestEdge"]
    cfg.INPUT.CROP.ENABLED = False
    assert [type(a).__name__ for a in build_detection_augmentations(cfg)] == [
        "RandomFlip",
        "ResizeShortestEdge",
    ]
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.PROB = 1.0  # always crop: the image is at most 100 px before the last resize
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    mapper = build_dataset_mapper(cfg, is_train=True)
    record = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0]
    for _ in range(5):
        out = mapper(record)
        h, w = out["image"].shape[-2:]
        assert min(h, w) == 64
        boxes = out["instances"].gt_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert "annotations" not in out
    cfg.INPUT.DETECTION_AUGMENTATION = "LSJ"
    cfg.INPUT.LSJ.IMAGE_SIZE = 96
    mapper = build_dataset_mapper(cfg, is_train=True)
    for _ in range(5):
        out = mapper(record)
        assert max(out["image"].shape[-2:]) <= 96 and out["instances"].has("gt_boxes")
    cfg.INPUT.DETECTION_AUGMENTATION = "mosaic"
    with pytest.raises(ValueError, match="INPUT.DETECTION_AUGMENTATION"):
        build_detection_augmentations(cfg)
    test_out = build_dataset_mapper(cfg, is_train=False)(record)
    assert "annotations" not in test_out and "instances" not in test_out


# ---- your own COCO-format data, from the environment ----


def test_coco_datasets_from_environment(synth_root, tmp_path, monkeypatch):
    json_file = os.path.join(synth_root, "glid_synth", "annotations", "instances_val.json")
    images = os.path.join(synth_root, "glid_synth", "images", "val")
    spec = f"mine_det_val={json_file},{images}; ;"
    assert parse_coco_datasets(spec) == [("mine_det_val", json_file, images)]
    monkeypatch.chdir(tmp_path)
    assert parse_coco_datasets("rel=a.json,imgs") == [
        ("rel", str(tmp_path / "a.json"), str(tmp_path / "imgs"))
    ]
    for bad in ("nameonly", "x=a.json", "=a.json,imgs", "x=a.json,"):
        with pytest.raises(ValueError, match="GLID_COCO_DATASETS"):
            parse_coco_datasets(bad)
    assert register_coco_datasets_from_env({"GLID_COCO_DATASETS": spec}) == ["mine_det_val"]
    assert register_coco_datasets_from_env({"GLID_COCO_DATASETS": spec}) == ["mine_det_val"]
    dicts = DatasetCatalog.get("mine_det_val")
    assert len(dicts) == 4 and all(os.path.isfile(d["file_name"]) for d in dicts)
    meta = MetadataCatalog.get("mine_det_val")
    assert meta.evaluator_type == "coco" and len(meta.thing_classes) == 6
    other = f"mine_det_val={json_file.replace('val', 'train')},{images}"
    with pytest.raises(ValueError, match="already registered"):
        register_coco_datasets_from_env({"GLID_COCO_DATASETS": other})


# ---- end to end: train_net.py, --eval-only (COCOEvaluator), demo ----


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    sys.path.insert(0, REPO_ROOT)
    import train_net

    out = tmp_path_factory.mktemp("det_run")
    opts = [
        "DATASETS.TRAIN", "('glid_test_instances_train',)",
        "DATASETS.TEST", "('glid_test_instances_val',)",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "3",
        "SOLVER.CHECKPOINT_PERIOD", "100",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    parse = default_argument_parser().parse_args
    train_net.main(parse(["--config-file", DET_TINY, *opts]))
    weights = str(out / "model_final.pth")
    results = train_net.main(
        parse(["--config-file", DET_TINY, "--eval-only", *opts, "MODEL.WEIGHTS", weights])
    )
    return out, weights, results


def test_train_then_eval_only_coco_box_ap(trained):
    out, weights, results = trained
    assert os.path.isfile(weights)
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    logged = [m for m in metrics if "total_loss" in m]
    assert logged[-1]["iteration"] == 2
    assert {"loss_class", "loss_bbox", "loss_giou", "loss_giou_0"} <= set(logged[-1])
    bbox = results["bbox"]
    assert {"AP", "AP50", "AP75"} <= set(bbox) and 0.0 <= bbox["AP"] <= 100.0
    with open(out / "inference" / "glid_test_instances_val" / "coco_instances_results.json") as f:
        detections = json.load(f)
    assert detections and all(len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 for d in detections)
    # 4 validation images, TEST_TOPK = 50 each (fewer only if a box is empty after clipping).
    assert len(detections) <= 4 * 50


def test_demo_score_threshold(trained, tmp_path):
    sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
    from predictor import VisualizationDemo

    import demo as demo_script

    _, weights, _ = trained
    record = DatasetCatalog.get("glid_test_instances_val")[0]
    opts = ["MODEL.WEIGHTS", weights, "DATASETS.TEST", "('glid_test_instances_val',)"]
    argv = ["--config-file", DET_TINY, "--input", record["file_name"], "--output", str(tmp_path)]
    args = demo_script.get_parser().parse_args([*argv, "--confidence-threshold", "0.02",
                                                "--opts", *opts])  # fmt: skip
    assert args.confidence_threshold == 0.02
    (written,) = demo_script.main([*argv, "--confidence-threshold", "0.0", "--opts", *opts])
    assert os.path.isfile(written)
    cfg = demo_script.setup_cfg(args)
    image = read_image(record["file_name"], format="BGR")
    counts = {}
    for threshold in (0.0, 0.5, 1.01):
        predictions, vis = VisualizationDemo(cfg, score_threshold=threshold).run_on_image(image)
        scores = predictions["instances"].scores
        assert (scores >= threshold).all() and vis.get_image().shape[:2] == image.shape[:2]
        counts[threshold] = len(scores)
    assert counts[0.0] > 0 and counts[1.01] == 0 and counts[0.0] >= counts[0.5]


# ---- the COCO recipe (Tab. 6) ----


def test_coco_config_carries_tab6_and_head_size():
    from detectron2.config import get_cfg

    import glid
    from glid.modeling.tasks import build_task_head

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "coco_det_glid.yaml"))
    s = cfg.SOLVER
    assert (cfg.MODEL.GLID.TASK, cfg.MODEL.GLID.NUM_CLASSES, cfg.MODEL.GLID.NUM_QUERIES) == (
        "det",
        80,
        300,
    )
    assert (s.OPTIMIZER, s.BASE_LR, s.BASE_LR * s.BACKBONE_MULTIPLIER) == ("ADAMW", 1e-4, 1e-5)
    assert (s.IMS_PER_BATCH, s.WEIGHT_DECAY, cfg.MODEL.SWIN.DROP_PATH_RATE) == (16, 0.05, 0.1)
    per_epoch = 117266 / 16  # COCO train2017 images with boxes, batch 16
    assert s.MAX_ITER == math.ceil(50 * per_epoch) and s.STEPS == (round(40 * per_epoch),)
    assert (s.LR_SCHEDULER_NAME, s.GAMMA) == ("WarmupMultiStepLR", 0.1)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    assert cfg.INPUT.MIN_SIZE_TRAIN == tuple(range(480, 801, 32)) and cfg.INPUT.CROP.ENABLED
    assert MetadataCatalog.get("coco_2017_val").evaluator_type == "coco"
    # The one linear head: 256 x (80 classes + 4 box numbers) + bias (Tab. 3 lists 0.5M).
    head = build_task_head(cfg)
    assert sum(p.numel() for p in head.parameters()) == 256 * 84 + 84
