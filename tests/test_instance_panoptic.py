"""Instance and panoptic inference on hand-made outputs: boxes of masks, Mask2Former's instance
top-k and scores, the panoptic merge (thresholds, overlaps, stuff merging, empty results), the
panoptic task's outputs and thing classes, and the thing-instance evaluator of a panoptic
dataset. (Training and ``--eval-only``-style evaluation on generated data: test_task_contract.)"""

import json
import math
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

import glid
from glid.evaluation.panoptic_evaluation import ThingInstanceEvaluator
from glid.modeling.box_ops import masks_to_boxes
from glid.modeling.tasks import InstanceSegmentationTask, PanopticSegmentationTask
from glid.modeling.tasks.instance import instance_inference
from glid.modeling.tasks.panoptic import panoptic_inference, thing_classes_of
from tests.utils import REPO_ROOT

BIG = 20.0  # a logit whose sigmoid / softmax share is 1 to within 1e-8


def _masks(shape, *boxes):
    """(len(boxes), H, W) bool masks, each True on rows y0:y1, columns x0:x1."""
    masks = torch.zeros((len(boxes), *shape), dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return masks


# ---- masks_to_boxes ----


def test_masks_to_boxes_hand_made():
    masks = torch.zeros((5, 4, 7), dtype=torch.bool)  # non-square: 4 rows, 7 columns
    masks[1, 2, 5] = True  # one pixel at row 2, column 5
    masks[2, 0:3, 1:4] = True  # a 3 x 3 block
    masks[3, 0, 0] = masks[3, 3, 6] = True  # two far corners: the box spans the image
    masks[4, 1:3, 6] = True  # last column
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == torch.float32 and boxes.shape == (5, 4)
    expected = [[0, 0, 0, 0], [5, 2, 6, 3], [1, 0, 4, 3], [0, 0, 7, 4], [6, 1, 7, 3]]
    assert boxes.tolist() == expected
    assert masks_to_boxes(masks.to(torch.uint8)).tolist() == expected
    assert masks_to_boxes(torch.zeros((0, 3, 5))).shape == (0, 4)
    with pytest.raises(ValueError, match="N, H, W"):
        masks_to_boxes(torch.zeros(3, 5))


# ---- instance inference ----


def _instance_case():
    """3 queries, 2 classes (+ no-object), 6 x 8 masks with hand-set mask logits."""
    logits = torch.tensor(
        [
            [3.0, 1.0, 0.0],  # query 0: class 0
            [-BIG, -BIG, BIG],  # query 1: confident no-object
            [0.0, 2.0, 0.5],  # query 2: class 1
        ]
    )
    mask_logits = torch.full((3, 6, 8), -4.0)
    mask_logits[0, 1:3, 2:5] = 2.0  # 2 x 3 block, one pixel less sure
    mask_logits[0, 1, 2] = 0.5
    mask_logits[1] = 5.0  # the no-object query's mask covers everything
    mask_logits[2, 4, 7] = 1.0  # one pixel
    return logits, mask_logits


def test_instance_inference_topk_scores_and_boxes():
    logits, mask_logits = _instance_case()
    probs = logits.softmax(-1)
    sig = torch.sigmoid
    score_q0 = (5 * sig(torch.tensor(2.0)) + sig(torch.tensor(0.5))) / 6
    score_q2 = sig(torch.tensor(1.0))
    result = instance_inference(logits, mask_logits, topk=2)
    assert isinstance(result, Instances) and result.image_size == (6, 8)
    # The two best (query, class) pairs by class probability: (0, 0) and (2, 1); query 1 (a
    # confident no-object) is absent. Ordered by final score.
    expected = sorted(
        [(probs[0, 0] * score_q0, 0, 0), (probs[2, 1] * score_q2, 2, 1)], key=lambda t: -t[0]
    )
    assert result.pred_classes.tolist() == [c for _, _, c in expected]
    for i, (score, query, _) in enumerate(expected):
        assert result.scores[i].item() == pytest.approx(score.item(), rel=1e-5)
        assert torch.equal(result.pred_masks[i], mask_logits[query] > 0)
    assert result.pred_masks.dtype == torch.bool
    assert result.pred_boxes.tensor.tolist() == masks_to_boxes(result.pred_masks).tolist()
    boxes = {tuple(b) for b in result.pred_boxes.tensor.tolist()}
    assert boxes == {(2.0, 1.0, 5.0, 3.0), (7.0, 4.0, 8.0, 5.0)}


def test_instance_inference_never_predicts_no_object():
    logits, mask_logits = _instance_case()
    result = instance_inference(logits, mask_logits, topk=100)  # more than N x C = 6
    assert len(result) == 6 and set(result.pred_classes.tolist()) <= {0, 1}
    assert result.scores.tolist() == sorted(result.scores.tolist(), reverse=True)
    # Query 1's pairs (its full mask) come last: class probability ~ e^-40.
    full = result.pred_masks.flatten(1).all(1)
    assert full.tolist() == [False] * 4 + [True] * 2
    assert result.scores[full].max() < 1e-10
    only = instance_inference(logits, mask_logits, topk=100, classes=[1])
    assert len(only) == 3 and set(only.pred_classes.tolist()) == {1}


def test_instance_task_results_at_original_size():
    task = InstanceSegmentationTask(topk=2, num_classes=2, criterion=None, mask_attention=False)
    logits = torch.tensor([[BIG, 0.0, 0.0], [0.0, BIG, 0.0]])
    mask_logits = torch.full((2, 8, 8), -10.0)
    mask_logits[0, 0:2, 0:3] = 10.0  # top-left 2 x 3 of the 4 x 6 valid region
    mask_logits[1, 5:, 6:] = 10.0  # only in the padding: cropped away
    out = task.inference_single(logits, mask_logits, (4, 6), (8, 12))["instances"]
    assert out.image_size == (8, 12) and out.pred_masks.shape[-2:] == (8, 12)
    assert out.pred_classes.tolist() == [0, 1]  # the top-2 pairs: (query 0, 0), (query 1, 1)
    first, second = out[0], out[1]
    # x2 bilinear: the 2 x 3 block becomes 4 x 6.
    assert torch.equal(first.pred_masks[0], _masks((8, 12), (0, 0, 6, 4))[0])
    assert first.pred_boxes.tensor.tolist() == [[0.0, 0.0, 6.0, 4.0]]
    assert not second.pred_masks.any() and second.pred_boxes.tensor.tolist() == [[0.0] * 4]
    assert second.scores.item() == 0.0  # empty mask: mean mask probability 0


# ---- panoptic merge ----

THINGS = (0, 1)  # classes 0, 1 things; 2, 3 stuff; 4 = no-object


def _pan(logits_rows, masks, object_threshold=0.8, overlap_threshold=0.8):
    logits = torch.tensor(logits_rows)
    mask_logits = torch.where(masks, BIG, -BIG)
    return panoptic_inference(logits, mask_logits, THINGS, object_threshold, overlap_threshold)


def _onehot(label, p=None):
    """Logits of 5 classes with all mass on ``label`` (or probability ``p`` on it)."""
    if p is None:
        return [BIG if i == label else 0.0 for i in range(5)]
    rest = math.log((1 - p) / 4)
    return [math.log(p) if i == label else rest for i in range(5)]


def test_panoptic_things_separate_stuff_merged():
    masks = _masks((6, 8), (0, 0, 2, 2), (2, 0, 4, 2), (0, 3, 4, 6), (4, 3, 8, 6))
    ids, info = _pan([_onehot(1), _onehot(1), _onehot(3), _onehot(3)], masks)
    assert ids.dtype == torch.int32 and ids.shape == (6, 8)
    assert info == [
        {"id": 1, "category_id": 1, "isthing": True},
        {"id": 2, "category_id": 1, "isthing": True},
        {"id": 3, "category_id": 3, "isthing": False},
    ]
    assert (ids[masks[0]] == 1).all() and (ids[masks[1]] == 2).all()
    assert (ids[masks[2] | masks[3]] == 3).all()  # both stuff queries of class 3: one segment
    assert (ids[~masks.any(0)] == 0).all()


def test_panoptic_threshold_and_no_object_drop():
    masks = _masks((4, 4), (0, 0, 2, 2), (2, 0, 4, 2), (0, 2, 4, 4))
    rows = [_onehot(0, p=0.7), _onehot(4), _onehot(2, p=0.9)]  # below threshold, no-object
    ids, info = _pan(rows, masks)
    assert info == [{"id": 1, "category_id": 2, "isthing": False}]
    assert (ids[masks[2]] == 1).all() and (ids[~masks[2]] == 0).all()
    ids, info = _pan(rows, masks, object_threshold=0.6)  # now the first query passes
    assert [s["category_id"] for s in info] == [0, 2]


def test_panoptic_overlap_drop():
    # Query 0 (p ~ 1) covers columns 0-3; query 1 (p = 0.9) columns 0-4 but wins column 4
    # only: 4 of 20 pixels of its mask < 0.8, so it is dropped and column 4 stays empty.
    masks = _masks((4, 5), (0, 0, 4, 4), (0, 0, 5, 4))
    ids, info = _pan([_onehot(0), _onehot(1, p=0.9)], masks)
    assert info == [{"id": 1, "category_id": 0, "isthing": True}]
    assert (ids[:, :4] == 1).all() and (ids[:, 4] == 0).all()
    ids, info = _pan([_onehot(0), _onehot(1, p=0.9)], masks, overlap_threshold=0.2)
    assert len(info) == 2 and (ids[:, 4] == 2).all()


def test_panoptic_pixel_needs_its_winner_mask():
    # Everywhere the only query wins the argmax, but its mask probability is < 0.5 outside
    # its block: those pixels stay 0.
    logits = torch.tensor([_onehot(2)])
    mask_logits = torch.full((1, 3, 3), -1.0)
    mask_logits[0, 0, :] = 3.0
    ids, info = panoptic_inference(logits, mask_logits, THINGS, 0.8, 0.8)
    assert info == [{"id": 1, "category_id": 2, "isthing": False}]
    assert ids.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]


def test_panoptic_all_no_object_is_empty():
    masks = _masks((3, 5), (0, 0, 5, 3), (0, 0, 2, 2))
    ids, info = _pan([_onehot(4), _onehot(4)], masks)
    assert info == [] and ids.shape == (3, 5) and ids.dtype == torch.int32
    assert not ids.any()


# ---- the panoptic task ----


def _pan_task(**on):
    kwargs = dict(panoptic_on=True, semantic_on=False, instance_on=False) | on
    return PanopticSegmentationTask(
        thing_classes=THINGS,
        object_mask_threshold=0.8,
        overlap_threshold=0.8,
        topk=10,
        num_classes=4,
        criterion=None,
        mask_attention=False,
        **kwargs,
    )


def test_panoptic_task_outputs():
    masks = _masks((4, 4), (0, 0, 2, 4), (2, 0, 4, 4))
    logits = torch.tensor([_onehot(1), _onehot(3)])
    mask_logits = torch.where(masks, BIG, -BIG)
    out = _pan_task().inference_single(logits, mask_logits, (4, 4), (4, 4))
    assert set(out) == {"panoptic_seg"}
    out = _pan_task(semantic_on=True, instance_on=True).inference_single(
        logits, mask_logits, (4, 4), (4, 4)
    )
    assert set(out) == {"panoptic_seg", "sem_seg", "instances"}
    assert out["sem_seg"].shape == (4, 4, 4)
    assert out["sem_seg"].argmax(0).tolist() == [[1, 1, 3, 3]] * 4
    # Instances of thing classes only (the stuff query of class 3 never appears).
    assert len(out["instances"]) == 2 * len(THINGS)
    assert set(out["instances"].pred_classes.tolist()) <= set(THINGS)
    assert out["instances"].pred_classes[0] == 1
    assert torch.equal(out["instances"].pred_masks[0], masks[0])
    with pytest.raises(ValueError, match="all off"):
        _pan_task(panoptic_on=False)


def test_thing_classes_from_metadata():
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.MODEL.GLID.NUM_CLASSES = 5
    name = "glid_test_things_meta"
    MetadataCatalog.get(name).set(thing_dataset_id_to_contiguous_id={11: 3, 7: 1})
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("glid_test_no_such_train",), (name,)
    assert thing_classes_of(cfg) == [1, 3]
    cfg.MODEL.GLID.TASK = "pan"
    assert PanopticSegmentationTask(cfg).thing_classes == [1, 3]
    cfg.DATASETS.TEST = ()  # falls back to DATASETS.TRAIN[0], which has no metadata
    with pytest.raises(KeyError, match="thing_dataset_id_to_contiguous_id"):
        thing_classes_of(cfg)
    # The task still builds (and trains); its inference says what is missing.
    task = PanopticSegmentationTask(cfg)
    with pytest.raises(KeyError, match="glid_test_no_such_train.*thing_dataset_id"):
        task.inference_single(torch.zeros(2, 6), torch.zeros(2, 4, 4), (4, 4), (4, 4))
    cfg.DATASETS.TRAIN = ()
    with pytest.raises(KeyError, match="both are empty"):
        thing_classes_of(cfg)
    cfg.DATASETS.TEST, cfg.MODEL.GLID.NUM_CLASSES = (name,), 3
    with pytest.raises(ValueError, match="outside"):
        thing_classes_of(cfg)


# ---- thing instances of a panoptic dataset through COCOEvaluator ----


def test_thing_instance_evaluator_maps_non_leading_thing_ids(tmp_path):
    """Things with contiguous ids 1 and 3 of 4 classes (ADE20K-like: not 0..T-1), instance
    annotations with those dataset ids: a perfect prediction scores AP 100; stuff-class
    predictions are dropped, not an error."""
    h, w = 16, 16
    masks = _masks((h, w), (1, 1, 6, 6), (8, 8, 15, 14))
    anns, images = [], [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}]
    for k, (m, cat) in enumerate(zip(masks, (3, 1))):
        rle = mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        x0, y0, x1, y1 = masks_to_boxes(m[None])[0].tolist()
        anns.append(
            {"id": k + 1, "image_id": 1, "category_id": cat, "segmentation": rle,
             "area": int(m.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
        )  # fmt: skip
    json_file = tmp_path / "instances.json"
    categories = [{"id": 1, "name": "b"}, {"id": 3, "name": "d"}]
    json_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    name = "glid_test_things_eval"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(
            json_file=str(json_file),
            thing_classes=["a", "b", "c", "d"],
            stuff_classes=["a", "b", "c", "d"],
            thing_dataset_id_to_contiguous_id={1: 1, 3: 3},
        )
    evaluator = ThingInstanceEvaluator(name, str(tmp_path / "out"))
    evaluator.reset()
    instances = Instances((h, w))
    instances.pred_masks = torch.cat([masks, masks[:1]])
    instances.pred_boxes = Boxes(masks_to_boxes(instances.pred_masks))
    instances.scores = torch.tensor([0.9, 0.8, 0.95])
    instances.pred_classes = torch.tensor([3, 1, 2])  # the last: a stuff class
    evaluator.process([{"image_id": 1}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert set(k for k in results["segm"] if k.startswith("AP-")) == {"AP-b", "AP-d"}


# ---- demo drawing ----


def test_demo_draws_instances_with_boxes_and_panoptic_labels():
    sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
    try:
        from predictor import draw_predictions
    finally:
        sys.path.pop(0)
    names = ["circle", "square", "sky"]
    metadata = MetadataCatalog.get("glid_test_demo_pan")
    if not metadata.get("thing_classes", None):
        metadata.set(
            thing_classes=names,
            stuff_classes=names,
            thing_colors=[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
            stuff_colors=[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
            thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
            stuff_dataset_id_to_contiguous_id={3: 2},
        )
    image = np.full((64, 96, 3), 128, dtype=np.uint8)
    masks = _masks((64, 96), (4, 4, 30, 30), (40, 10, 80, 50))
    instances = Instances((64, 96))
    instances.pred_masks = masks
    instances.pred_boxes = Boxes(masks_to_boxes(masks))
    instances.scores = torch.tensor([0.9, 0.8])
    instances.pred_classes = torch.tensor([0, 1])
    drawn = draw_predictions(image, {"instances": instances}, metadata).get_image()
    assert drawn.shape == image.shape and (drawn[masks[0].numpy()] != 128).any()
    without_boxes = Instances(
        (64, 96), **{k: v for k, v in instances.get_fields().items() if k != "pred_boxes"}
    )
    assert not np.array_equal(
        drawn, draw_predictions(image, {"instances": without_boxes}, metadata).get_image()
    )
    ids = torch.zeros((64, 96), dtype=torch.int32)
    ids[masks[0]], ids[50:] = 1, 2
    info = [
        {"id": 1, "category_id": 0, "isthing": True},
        {"id": 2, "category_id": 2, "isthing": False},
    ]
    drawn = draw_predictions(image, {"panoptic_seg": (ids, info)}, metadata).get_image()
    assert (drawn[ids.numpy() == 1] != 128).any() and (drawn[ids.numpy() == 2] != 128).any()


# ---- full-size configs ----


@pytest.mark.parametrize(
    "name, task, classes, things, augmentation",
    [
        ("ade20k_ins_glid", "ins", 100, None, "SCALE_JITTER"),
        ("ade20k_pan_glid", "pan", 150, 100, "SCALE_JITTER"),
        ("coco_ins_glid", "ins", 80, None, "LSJ"),
        ("coco_pan_glid", "pan", 133, 80, "LSJ"),
    ],
)
def test_full_size_configs(name, task, classes, things, augmentation):
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", f"{name}.yaml"))
    g = cfg.MODEL.GLID
    assert (g.TASK, g.NUM_CLASSES, g.NUM_QUERIES) == (task, classes, 100)
    assert cfg.INPUT.SEGMENTATION_AUGMENTATION == augmentation
    # Tab. 7: AdamW 1e-4 (encoder 1e-5), batch 16, weight decay 0.05, drop path 0.1 / 0.2.
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.BASE_LR, s.BACKBONE_MULTIPLIER) == ("ADAMW", 1e-4, 0.1)
    assert (s.IMS_PER_BATCH, s.WEIGHT_DECAY) == (16, 0.05)
    assert (cfg.MODEL.SWIN.DROP_PATH_RATE, g.DECODER.DROP_PATH) == (0.1, 0.2)
    if name.startswith("ade20k"):
        assert (s.MAX_ITER, s.LR_SCHEDULER_NAME) == (160000, "WarmupPolyLR")
    if task == "pan":
        assert g.TEST.PANOPTIC_ON and g.TEST.SEMANTIC_ON and g.TEST.INSTANCE_ON
        assert len(thing_classes_of(cfg)) == things
        assert MetadataCatalog.get(cfg.DATASETS.TEST[0]).evaluator_type.endswith("panoptic_seg")
