"""Top-down pose: crop geometry, person instances, the mapper's alignment and flip pairs,
heatmap targets and decoding, flip merge, rescoring, OKS against pycocotools, OKS-NMS and the
evaluator on perfect predictions."""

import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from pycocotools.cocoeval import COCOeval

from glid.data.dataset_mappers import TopDownPoseDatasetMapper
from glid.data.dataset_mappers.pose_mapper import upper_body_ids
from glid.data.datasets.synthetic_meta import COCO_PERSON_KEYPOINT_NAMES
from glid.data.top_down import (
    affine_points,
    box_to_center_scale,
    crop_affine,
    half_body_center_scale,
    invert_affine,
    person_instances,
    person_instances_from_detections,
    warp_to_crop,
)
from glid.evaluation.keypoint_evaluation import (
    COCO_PERSON_SIGMAS,
    KeypointEvaluator,
    keypoint_oks,
    oks_nms,
)
from glid.modeling.tasks.pose import (
    PoseEstimationTask,
    decode_heatmaps,
    gaussian_targets,
    keypoint_mse_loss,
    rescore,
)
from tests.task_harness import TEST_PREFIX
from tests.utils import REPO_ROOT

NAMES = list(COCO_PERSON_KEYPOINT_NAMES)
# COCO's mirror pairs: each keypoint's index after a left-right flip.
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


# ---- geometry ----


def test_box_to_center_scale_by_hand():
    center, scale = box_to_center_scale(np.array([10, 20, 40, 100]), 0.75, padding=1.25)
    np.testing.assert_allclose(center, [25, 60])
    np.testing.assert_allclose(scale, [60 * 1.25, 80 * 1.25])  # w = 0.75 x 80 > 30
    center, scale = box_to_center_scale(np.array([0, 0, 90, 60]), 0.75, padding=1.0)
    np.testing.assert_allclose(scale, [90, 120])  # h = 90 / 0.75


def test_crop_affine_maps_the_region_onto_the_crop():
    m = crop_affine(np.array([50.0, 40.0]), np.array([30.0, 40.0]), (80, 60))
    # region corners -> crop corners, centre -> crop centre (scale 2 in both axes)
    np.testing.assert_allclose(
        affine_points([[35, 20], [65, 60], [50, 40]], m), [[0, 0], [60, 80], [30, 40]]
    )
    flipped = crop_affine(np.array([50.0, 40.0]), np.array([30.0, 40.0]), (80, 60), flip=True)
    np.testing.assert_allclose(affine_points([[35, 20], [65, 60]], flipped), [[60, 0], [0, 80]])
    rotated = crop_affine(np.array([0.0, 0.0]), np.array([60.0, 80.0]), (80, 60), rotation=90)
    # 90 degrees counter-clockwise as displayed (y down): a point right of the centre goes up
    np.testing.assert_allclose(affine_points([[10, 0]], rotated), [[30, 30]], atol=1e-12)
    np.testing.assert_allclose(
        affine_points(affine_points([[3, 7]], m), invert_affine(m)), [[3, 7]]
    )


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_warp_keeps_pixels_on_their_keypoints(flip, rotation):
    """A bright pixel lands where its centre's affine image says, on a non-square crop."""
    image = np.zeros((90, 70, 3), np.uint8)
    y, x = 41, 23
    image[y, x] = 255
    m = crop_affine(np.array([30.0, 45.0]), np.array([48.0, 64.0]), (64, 48), rotation, flip)
    crop = warp_to_crop(image, m, (64, 48)).astype(float)[..., 0]
    cx, cy = affine_points([[x + 0.5, y + 0.5]], m)[0]
    ys, xs = np.nonzero(crop)
    # bilinear spread: the weighted centre of the warped pixel is the mapped centre
    mean_x = (crop[ys, xs] * (xs + 0.5)).sum() / crop.sum()
    mean_y = (crop[ys, xs] * (ys + 0.5)).sum() / crop.sum()
    assert abs(mean_x - cx) < 0.15 and abs(mean_y - cy) < 0.15


def test_half_body_takes_the_chosen_half():
    kp = np.zeros((17, 3))
    kp[:, 2] = 2
    kp[:, 0] = np.arange(17) * 2.0
    kp[:, 1] = np.arange(17) * 10.0
    upper = upper_body_ids(NAMES)
    assert upper == list(range(11))
    center, _ = half_body_center_scale(kp, upper, True, 0.75)
    np.testing.assert_allclose(center, [10, 50])  # keypoints 0..10
    center, _ = half_body_center_scale(kp, upper, False, 0.75)
    np.testing.assert_allclose(center, [27, 135])  # keypoints 11..16
    kp[11:, 2] = 0
    center, _ = half_body_center_scale(kp, upper, False, 0.75)  # lower has none: upper
    np.testing.assert_allclose(center, [10, 50])
    kp[2:, 2] = 0
    assert half_body_center_scale(kp, upper, True, 0.75) is None


# ---- person instances ----


def _record(annotations, image_id=7):
    return {"file_name": "a.jpg", "image_id": image_id, "height": 100, "width": 80,
            "annotations": annotations}  # fmt: skip


def _person(box, keypoints, iscrowd=0):
    return {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "keypoints": keypoints,
            "iscrowd": iscrowd, "category_id": 0}  # fmt: skip


def test_person_instances_keep_labelled_uncrowded_persons():
    kp = [10.5, 20.5, 2] + [0, 0, 0] * 16
    records = [
        _record([
            _person([5, 5, 30, 60], kp),
            _person([5, 5, 30, 60], [0, 0, 0] * 17),  # no labelled keypoint
            _person([5, 5, 30, 60], kp, iscrowd=1),
            _person([70, 5, 30, 200], kp),  # clipped to the image: [70, 5, 80, 100]
        ])
    ]  # fmt: skip
    persons = person_instances(records, 17)
    assert [p["person_box"] for p in persons] == [[5, 5, 35, 65], [70, 5, 80, 100]]
    assert persons[0]["person_score"] == 1.0 and persons[0]["box_source"] == "ground truth"
    assert persons[0]["person_keypoints"][0] == [10.5, 20.5, 2]
    with pytest.raises(ValueError, match="a.jpg.*16 keypoints.*17"):
        person_instances([_record([_person([5, 5, 30, 60], kp[:-3])])], 17)


def test_person_instances_from_a_detections_file(tmp_path):
    records = [_record([], image_id=7), _record([], image_id=8)]
    dets = [
        {"image_id": 7, "category_id": 1, "bbox": [1, 2, 10, 20], "score": 0.9},
        {"image_id": 7, "category_id": 2, "bbox": [1, 2, 10, 20], "score": 0.9},  # not a person
        {"image_id": 8, "category_id": 1, "bbox": [1, 2, 10, 20], "score": 0.05},  # below
        {"image_id": 99, "category_id": 1, "bbox": [1, 2, 10, 20], "score": 0.9},  # other image
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    persons = person_instances_from_detections(records, str(path), 1, score_thresh=0.1)
    assert len(persons) == 1
    assert persons[0]["person_box"] == [1, 2, 11, 22] and persons[0]["person_score"] == 0.9
    assert persons[0]["box_source"] == str(path) and "person_keypoints" not in persons[0]
    with pytest.raises(ValueError, match="no person box"):
        person_instances_from_detections(records, str(path), 1, score_thresh=0.95)
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="dets.json.*JSON list"):
        person_instances_from_detections(records, str(path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        person_instances_from_detections(records, str(tmp_path / "missing.json"))


# ---- mapper ----


def _coded_person(tmp_path):
    """A 100x80 image with a distinct colour around each of 17 keypoints (7x7 blobs on a
    shuffled 4-column grid, 10 pixels apart)."""
    image = np.zeros((100, 80, 3), np.uint8)
    order = np.random.default_rng(0).permutation(17)
    points = np.stack([25 + 10 * (order % 4), 20 + 10 * (order // 4)], 1) + 0.5
    for k, (x, y) in enumerate(points):
        image[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4] = (10 + 14 * k, 200, 255 - 14 * k)
    path = tmp_path / "person.png"
    Image.fromarray(image).save(path)
    keypoints = np.concatenate([points, np.full((17, 1), 2.0)], 1)
    record = {"file_name": str(path), "image_id": 1, "height": 100, "width": 80,
              "person_box": [20.0, 15.0, 60.0, 85.0], "person_score": 1.0,
              "box_source": "ground truth", "person_keypoints": keypoints.tolist()}  # fmt: skip
    return record


def _pose_mapper(is_train, **overrides):
    kwargs = dict(
        crop_size=(64, 48), box_padding=1.25, flip_indices=np.array(COCO_FLIP),
        upper_body=list(range(11)), flip_prob=0.0, half_body_prob=0.0,
        half_body_min_keypoints=8, half_body_padding=1.5, scale_factor=0.0,
        rotation_factor=0.0, rotation_prob=0.0, color_jitter=0.0, image_format="RGB",
    )  # fmt: skip
    kwargs.update(overrides)
    return TopDownPoseDatasetMapper(is_train, **kwargs)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"flip_prob": 1.0}, {"scale_factor": 0.3}, {"rotation_prob": 1.0, "rotation_factor": 20.0},
     {"half_body_prob": 1.0}, {"flip_prob": 1.0, "rotation_prob": 1.0, "rotation_factor": 20.0}],
    ids=["plain", "flip", "scale", "rotation", "half-body", "flip+rotation"],
)  # fmt: skip
def test_mapper_keypoints_sit_on_their_own_colour(tmp_path, overrides):
    """Each keypoint slot lands on the blob of the keypoint it must hold: its own, or with a
    flip its mirror's (left and right swap)."""
    record = _coded_person(tmp_path)
    flip = overrides.get("flip_prob", 0.0) == 1.0
    for seed in range(3):
        np.random.seed(seed)
        out = _pose_mapper(True, **overrides)(record)
        crop = out["image"].permute(1, 2, 0).numpy()
        checked = 0
        for k, (x, y, v) in enumerate(out["keypoints"].tolist()):
            if v == 0:
                continue
            source = COCO_FLIP[k] if flip else k
            r = crop[int(y), int(x)].astype(int)
            assert abs(r[0] - (10 + 14 * source)) <= 3, (k, source, r)
            assert abs(r[2] - (255 - 14 * source)) <= 3
            checked += 1
        assert checked >= 3


def test_mapper_test_mode_and_crop_to_image(tmp_path):
    record = _coded_person(tmp_path)
    out = _pose_mapper(False)(record)
    assert out["image"].shape == (3, 64, 48) and "keypoints" not in out
    assert "person_keypoints" not in out
    # the crop's centre maps back to the box centre
    back = affine_points([[24.0, 32.0]], out["crop_to_image"].numpy())
    np.testing.assert_allclose(back, [[40.0, 50.0]])
    with pytest.raises(KeyError, match="person_box"):
        _pose_mapper(False)({k: v for k, v in record.items() if k != "person_box"})


def test_mapper_marks_keypoints_outside_the_crop_unlabelled(tmp_path):
    record = _coded_person(tmp_path)
    record["person_keypoints"][3] = [1.5, 1.5, 2.0]  # far outside the padded box
    out = _pose_mapper(True)(record)
    assert out["keypoints"][3, 2] == 0 and (out["keypoints"][[0, 1, 2], 2] == 2).all()


# ---- heatmaps ----


def test_gaussian_targets_by_hand():
    kp = torch.tensor([[[10.0, 6.0, 2.0], [2.0, 2.0, 0.0], [-30.0, 4.0, 2.0]]])
    targets, weights = gaussian_targets(kp, (4, 5), stride=2.0, sigma=1.0)
    # keypoint 0 at (5, 3) heatmap units: cell (i=2, j=4) centre (4.5, 2.5)
    expected = math.exp(-((4.5 - 5) ** 2 + (2.5 - 3) ** 2) / 2)
    assert targets[0, 0, 2, 4].item() == pytest.approx(expected, rel=1e-6)
    assert targets[0, 0, 0, 0].item() == pytest.approx(math.exp(-(4.5**2 + 2.5**2) / 2), rel=1e-5)
    assert weights.tolist() == [[1.0, 0.0, 0.0]]  # unlabelled; 15 cells off a 5-wide map
    loss = keypoint_mse_loss(torch.zeros_like(targets), targets, weights)
    assert loss.item() == pytest.approx(targets[0, 0].pow(2).sum().item() / (3 * 4 * 5), rel=1e-6)


def test_a_heatmap_decodes_back_to_its_keypoint_within_a_pixel():
    """Round trip at stride 4 (64x48 heatmaps of a 256x192 crop): within one crop pixel, and
    exact at a cell centre."""
    rng = np.random.default_rng(0)
    points = torch.tensor(
        np.stack([rng.uniform(4, 188, 200), rng.uniform(4, 252, 200), np.full(200, 2.0)], 1),
        dtype=torch.float32,
    )[None]
    targets, _ = gaussian_targets(points, (64, 48), stride=4.0, sigma=2.0)
    decoded, scores = decode_heatmaps(targets)
    error = (decoded * 4 - points[..., :2]).abs()
    assert error.max().item() <= 1.0 + 1e-4
    assert scores.min().item() > 0.9
    centre = torch.tensor([[[4 * 10.5, 4 * 20.5, 2.0]]])
    decoded, _ = decode_heatmaps(gaussian_targets(centre, (64, 48), 4.0, 2.0)[0])
    assert decoded[0, 0].tolist() == [10.5, 20.5]


def test_decode_shift_direction_and_border():
    h = torch.zeros(1, 1, 3, 4)
    h[0, 0, 1, 1] = 1.0
    h[0, 0, 1, 2] = 0.5  # right neighbour larger: +0.25 in x
    h[0, 0, 0, 1] = 0.2  # upper neighbour larger: -0.25 in y
    pos, score = decode_heatmaps(h)
    assert pos[0, 0].tolist() == [1.75, 1.25] and score.item() == 1.0
    h = torch.zeros(1, 1, 3, 4)
    h[0, 0, 0, 3] = 1.0  # corner: no shift
    assert decode_heatmaps(h)[0][0, 0].tolist() == [3.5, 0.5]


def test_rescore_by_hand():
    scores = rescore(
        torch.tensor([0.5, 1.0]), torch.tensor([[0.9, 0.1, 0.3], [0.1, 0.1, 0.2]]), 0.2
    )
    assert scores.tolist() == pytest.approx([0.5 * 0.6, 0.0])


def _task():
    return PoseEstimationTask(num_keypoints=17, flip_indices=COCO_FLIP, keypoint_score_thresh=0.2)


def test_flip_merge_swaps_left_and_right():
    """A crop's heatmaps and those of its mirror image (as an exact model would give them)
    merge into the crop's; the decoded keypoints map to the image through crop_to_image."""
    task = _task()
    kp = torch.tensor([[[8.0 + k, 10.0 + 2 * k, 2.0] for k in range(17)]])
    heatmaps, _ = gaussian_targets(kp, (16, 12), stride=4.0, sigma=1.0)
    mirrored_kp = kp.clone()
    mirrored_kp[..., 0] = 48.0 - kp[..., 0]
    mirrored_kp = mirrored_kp[:, COCO_FLIP]
    mirrored, _ = gaussian_targets(mirrored_kp, (16, 12), stride=4.0, sigma=1.0)
    x = {
        "image": torch.zeros(3, 64, 48),
        "crop_to_image": torch.tensor([[2.0, 0, 100], [0, 2.0, 50]]),
        "person_box": [100.0, 50.0, 196.0, 178.0],
        "person_score": 0.5,
        "height": 300,
        "width": 400,
    }
    results = task.instances(heatmaps, [x], 4.0)
    flipped = task.instances(mirrored, [x], 4.0)
    merged = task.merge_flipped(results, flipped, [x])[0]["instances"]
    torch.testing.assert_close(merged.pred_keypoint_heatmaps, heatmaps)
    expected = kp[0, :, :2] * 2 + torch.tensor([100.0, 50.0])
    assert (merged.pred_keypoints[0, :, :2] - expected).abs().max().item() <= 2.0 + 1e-4
    assert merged.scores.item() == pytest.approx(0.5 * merged.pred_keypoints[0, :, 2].mean().item())
    assert merged.image_size == (300, 400) and merged.pred_boxes.tensor.tolist() == [
        x["person_box"]
    ]


# ---- OKS and the evaluator ----


def _coco_oks(gt_kp, area, dt_kp):
    """pycocotools' computeOks on one ground truth and one detection."""
    e = COCOeval(iouType="keypoints")
    e.params.kpt_oks_sigmas = COCO_PERSON_SIGMAS
    e.params.maxDets = [20]
    e._gts = {(1, 1): [{"keypoints": gt_kp, "area": area, "bbox": [0, 0, 10, 10]}]}
    e._dts = {(1, 1): [{"keypoints": dt_kp, "score": 1.0}]}
    e.params.imgIds, e.params.catIds = [1], [1]
    return float(e.computeOks(1, 1)[0, 0])


@pytest.mark.parametrize("case", range(4))
def test_oks_matches_pycocotools(case):
    rng = np.random.default_rng(case)
    gt = rng.uniform(0, 100, (17, 2))
    vis = rng.random(17) > 0.3 if case else np.ones(17, bool)
    dt = gt + rng.normal(0, [0.5, 2, 5, 10][case], (17, 2))
    area = [400.0, 2500.0, 900.0, 10000.0][case]
    gt_kp = np.concatenate([gt, np.where(vis, 2, 0)[:, None]], 1).ravel().tolist()
    dt_kp = np.concatenate([dt, np.ones((17, 1))], 1).ravel().tolist()
    ours = keypoint_oks(gt, vis, dt, area, COCO_PERSON_SIGMAS)
    assert ours == pytest.approx(_coco_oks(gt_kp, area, dt_kp), rel=1e-9)
    assert keypoint_oks(gt, vis, gt, area, COCO_PERSON_SIGMAS) == 1.0


def test_oks_nms_drops_near_duplicates_only():
    base = np.random.default_rng(0).uniform(0, 100, (17, 2))
    keypoints = np.stack([base, base + 0.3, base + 40.0, base + 0.2])
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    areas = np.full(4, 5000.0)
    assert oks_nms(keypoints, scores, areas, COCO_PERSON_SIGMAS, 0.9) == [1, 2]
    assert oks_nms(keypoints, scores, areas, COCO_PERSON_SIGMAS, 1.0) == [1, 0, 2, 3]


def test_evaluator_scores_ground_truth_100_and_applies_oks_nms(synth_root, tmp_path):
    name = f"{TEST_PREFIX}_keypoints_val"
    evaluator = KeypointEvaluator(name, distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    persons = person_instances(DatasetCatalog.get(name), 17)
    for p in persons:
        for duplicate in (0, 1):  # a slightly moved, lower-scored copy: OKS-NMS removes it
            inst = Instances((p["height"], p["width"]))
            inst.pred_boxes = Boxes(torch.tensor([p["person_box"]]))
            inst.scores = torch.tensor([0.9 - 0.5 * duplicate])
            inst.pred_classes = torch.tensor([0])
            kp = torch.tensor(p["person_keypoints"], dtype=torch.float32)
            kp[:, :2] += 0.3 * duplicate
            kp[:, 2] = 1.0
            inst.pred_keypoints = kp[None]
            evaluator.process([{"image_id": p["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["keypoints"]["AP"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(saved) == len(persons)


# ---- predictor and demo ----


def _saved_tiny_model(task, path, *opts):
    from detectron2.modeling import build_model

    from tests.task_harness import tiny_task_cfg

    cfg = tiny_task_cfg(task, *opts)
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return cfg


def _demo_module():
    sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
    import demo

    return demo


def test_predictor_answers_one_person_per_box(synth_root, tmp_path):
    from glid.engine import GLIDPredictor

    cfg = _saved_tiny_model("pose", tmp_path / "pose.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "pose.pth")
    predictor = GLIDPredictor(cfg)
    image = np.zeros((90, 120, 3), np.uint8)
    out = predictor(image, np.array([[10, 10, 40, 80], [50, 5, 110, 85], [3, 3, 3, 9]]))
    instances = out["instances"]
    assert len(instances) == 2 and instances.image_size == (90, 120)  # the empty box skipped
    assert instances.pred_keypoints.shape == (2, 17, 3)
    assert predictor(image, np.zeros((0, 4)))["instances"].pred_keypoints.shape == (0, 17, 3)
    with pytest.raises(ValueError, match="person boxes"):
        predictor(image)


def test_demo_draws_pose_from_a_box_file_and_from_a_detector(synth_root, tmp_path):
    demo = _demo_module()
    _saved_tiny_model("pose", tmp_path / "pose.pth")
    _saved_tiny_model("det", tmp_path / "det.pth")
    name = f"{TEST_PREFIX}_keypoints_val"
    image = DatasetCatalog.get(name)[0]["file_name"]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"file_name": image, "category_id": 1, "bbox": [5, 5, 40, 90],
                                  "score": 0.9}]))  # fmt: skip
    pose_cfg = os.path.join(REPO_ROOT, "configs", "quickstart", "glid_synth_pose_tiny.yaml")
    opts = ["--opts", "MODEL.WEIGHTS", str(tmp_path / "pose.pth"), "DATASETS.TEST", f"('{name}',)"]
    written = demo.main(
        ["--config-file", pose_cfg, "--input", image, "--output", str(tmp_path / "a"),
         "--person-boxes", str(boxes), "--confidence-threshold", "0", *opts]
    )  # fmt: skip
    assert len(written) == 1 and (tmp_path / "a").is_dir()
    det_cfg = tmp_path / "det.yaml"
    det_base = os.path.join(REPO_ROOT, "configs", "quickstart", "glid_synth_det_tiny.yaml")
    det_test = f'("{TEST_PREFIX}_instances_val",)'
    det_cfg.write_text(f'_BASE_: "{det_base}"\nDATASETS:\n  TEST: {det_test}\n')
    written = demo.main(
        ["--config-file", pose_cfg, "--input", image, "--output", str(tmp_path / "b"),
         "--detector-config-file", str(det_cfg), "--detector-weights", str(tmp_path / "det.pth"),
         "--person-class", "circle", "--box-threshold", "0", "--confidence-threshold", "0", *opts]
    )  # fmt: skip
    assert len(written) == 1
    with pytest.raises(ValueError, match="needs person boxes"):
        demo.main(["--config-file", pose_cfg, "--input", image, "--output", str(tmp_path / "c"),
                   *opts])  # fmt: skip
