"""Tests written to kill surviving mutants of glid/data (tools/mutation_test.sh): each pins
one behaviour the rest of the suite left open."""

from types import SimpleNamespace

import numpy as np
import pytest
from detectron2.data import transforms as T
from PIL import Image

from glid.data.dataset_mappers import (
    InstanceSegmentationDatasetMapper,
    PanopticSegmentationDatasetMapper,
)
from glid.data.dataset_mappers.classification_mapper import (
    CenterCropResize,
    ImageClassificationDatasetMapper,
    RandomResizedCrop,
)
from glid.data.dataset_mappers.depth_mapper import DepthColorAugmentation, DepthDatasetMapper
from glid.data.dataset_mappers.pose_mapper import TopDownPoseDatasetMapper
from glid.data.image_io import BadSampleError
from glid.data.top_down import (
    box_to_center_scale,
    crop_affine,
    half_body_center_scale,
    invert_affine,
)
from tests.utils import make_tiny_cfg

# ---- dataset_mappers/classification_mapper.py ----


def test_random_resized_crop_falls_back_to_the_centre():
    """No attempt can fit (the whole area at aspect 4 on a square): the centre crop at the
    ratio's nearest aspect, (40 - 10) // 2 = 15 rows above it."""
    rrc = RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(4.0, 4.0))
    assert rrc.crop_box(40, 40) == (0, 15, 40, 10)
    assert rrc.crop_box(10, 60) == (10, 0, 40, 10)  # 60 wide: (60 - 40) // 2 columns


def test_classification_test_crop_ratio_comes_from_the_config():
    cfg = make_tiny_cfg("INPUT.RANDOM_RESIZED_CROP.TEST_CROP_RATIO", 1.0)
    (aug,) = ImageClassificationDatasetMapper.from_config(cfg, False)["augmentations"]
    assert isinstance(aug, CenterCropResize) and aug.crop_ratio == 1.0


# ---- dataset_mappers/instance_mapper.py ----


def test_instance_label_map_for_the_crop_is_ignore_outside_the_objects():
    crop = T.RandomCrop_CategoryAreaConstraint("absolute", (4, 4), 0.5, 77)
    mapper = InstanceSegmentationDatasetMapper(
        True, augmentations=[crop], image_format="RGB", ignore_label=77
    )
    square = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]]  # pixels (0..3, 0..3)
    record = {"file_name": "a.jpg", "annotations": [{"segmentation": square, "category_id": 3}]}
    label = mapper.aug_input(record, np.zeros((6, 8, 3), np.uint8)).sem_seg
    expected = np.full((6, 8), 77.0)
    expected[:4, :4] = 3
    np.testing.assert_array_equal(label, expected)


def test_panoptic_png_of_another_size_is_named_with_both_sizes(tmp_path):
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "pan.png")
    mapper = PanopticSegmentationDatasetMapper(True, augmentations=[], image_format="RGB")
    record = {"file_name": "img.jpg", "pan_seg_file_name": str(tmp_path / "pan.png")}
    record["segments_info"] = []
    with pytest.raises(BadSampleError, match=r"pan\.png has size \(5, 7\), its image \(6, 8\)"):
        mapper.aug_input(record, np.zeros((6, 8, 3), np.uint8))


# ---- dataset_mappers/depth_mapper.py ----


def test_depth_colour_augmentation_closed_form():
    """With every range a single value the transform is ``(img / 255)^gamma x brightness x
    colour`` (rounded, clipped), per channel."""
    aug = DepthColorAugmentation(prob=1.0, gamma=(2.0, 2.0), brightness=(0.5, 0.5), color=(1, 1))
    image = np.array([[[0, 128, 255], [255, 255, 64]]], dtype=np.uint8)  # (1, 2, 3)
    out = aug.get_transform(image).apply_image(image)
    expected = np.clip(np.rint((image / 255.0) ** 2 * 0.5 * 255.0), 0, 255).astype(np.uint8)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    colour = DepthColorAugmentation(prob=1.0, gamma=(1, 1), brightness=(1, 1), color=(0.5, 0.5))
    halved = colour.get_transform(image).apply_image(image)
    np.testing.assert_array_equal(halved, np.rint(image / 2))


def _depth_cfg(degrees: float, color_prob: float) -> SimpleNamespace:
    crop = SimpleNamespace(ENABLED=False, SIZE=(8, 8))
    inputs = SimpleNamespace(
        DEPTH_ROTATION_DEGREES=degrees, DEPTH_COLOR_AUG_PROB=color_prob, CROP=crop
    )
    return SimpleNamespace(INPUT=inputs)


def test_depth_rotation_under_one_degree_is_still_applied():
    augs = DepthDatasetMapper.train_augmentations(_depth_cfg(0.5, 0.0))
    assert [type(a) for a in augs] == [T.RandomRotation, T.RandomFlip]
    assert [type(a) for a in DepthDatasetMapper.train_augmentations(_depth_cfg(0.0, 0.0))] == [
        T.RandomFlip
    ]


# ---- dataset_mappers/pose_mapper.py ----

# A 48 x 64 person box with padding 1 onto a 64 x 48 crop: crop coordinates = image coordinates.
BOX = [0.0, 0.0, 48.0, 64.0]
UPPER = list(range(11))


def _pose_mapper(**overrides) -> TopDownPoseDatasetMapper:
    kwargs = dict(
        crop_size=(64, 48), box_padding=1.0, flip_indices=np.arange(17), upper_body=UPPER,
        flip_prob=0.0, half_body_prob=0.0, half_body_min_keypoints=3, half_body_padding=1.5,
        scale_factor=0.0, rotation_factor=0.0, rotation_prob=0.0, color_jitter=0.0,
        image_format="RGB",
    )  # fmt: skip
    kwargs.update(overrides)
    return TopDownPoseDatasetMapper(True, **kwargs)


def _keypoints(labelled: list[int]) -> np.ndarray:
    kp = np.zeros((17, 3))
    for i in labelled:
        kp[i] = [10.0 + 2 * i, 5.0 + i, 2.0]
    return kp


def test_half_body_needs_more_than_the_minimum_labelled_keypoints():
    """``half_body_min_keypoints`` = 3: three labelled keypoints keep the box (unlabelled ones
    do not count), four take the half body's region."""
    mapper = _pose_mapper(half_body_prob=1.0)
    box_center, box_scale = box_to_center_scale(np.array(BOX), 48 / 64, 1.0)
    center, scale, _, _ = mapper.crop_region({"person_box": BOX}, _keypoints([0, 1, 2]))
    np.testing.assert_array_equal(center, box_center)
    np.testing.assert_array_equal(scale, box_scale)
    kp = _keypoints([0, 1, 2, 3])
    half_center, half_scale = half_body_center_scale(kp, UPPER, True, 48 / 64, 1.5)
    center, scale, _, _ = mapper.crop_region({"person_box": BOX}, kp)
    np.testing.assert_allclose(center, half_center)
    np.testing.assert_allclose(scale, half_scale)


@pytest.mark.parametrize("draw, factor", [(-10.0, 0.75), (10.0, 1.25), (0.4, 1.1)])
def test_scale_jitter_is_clipped_on_both_sides(monkeypatch, draw, factor):
    monkeypatch.setattr(np.random, "randn", lambda: draw)
    mapper = _pose_mapper(scale_factor=0.25)
    _, scale, _, _ = mapper.crop_region({"person_box": BOX}, _keypoints([0]))
    np.testing.assert_allclose(scale, np.array([48.0, 64.0]) * factor)


def test_flip_probability_zero_never_flips(monkeypatch):
    monkeypatch.setattr(np.random, "rand", lambda: 0.0)  # the smallest draw
    assert _pose_mapper().crop_region({"person_box": BOX}, _keypoints([0]))[3] is False


def test_the_crop_is_rotated_by_the_drawn_angle(monkeypatch):
    monkeypatch.setattr(np.random, "randn", lambda: 1.0)  # rotation = 1 x rotation_factor
    mapper = _pose_mapper(rotation_prob=1.0, rotation_factor=10.0)
    out = mapper.crop_person(np.zeros((64, 48, 3), np.uint8), {"person_box": BOX,
                             "person_keypoints": _keypoints([0]).tolist()})  # fmt: skip
    center, scale = box_to_center_scale(np.array(BOX), 48 / 64, 1.0)
    expected = invert_affine(crop_affine(center, scale, (64, 48), 10.0, False))
    np.testing.assert_allclose(out["crop_to_image"].numpy(), expected, atol=1e-9)


def test_keypoints_left_of_or_on_the_top_edge_of_the_crop():
    """Crop = image coordinates here: x < 0 is outside (whatever y), y = 0 is inside."""
    kp = _keypoints([0, 1, 2])
    kp[0, :2] = [-2.0, 10.0]
    kp[1, :2] = [10.0, 0.0]
    out = _pose_mapper().crop_person(np.zeros((64, 48, 3), np.uint8), {"person_box": BOX,
                                     "person_keypoints": kp.tolist()})  # fmt: skip
    assert out["keypoints"][:3, 2].tolist() == [0.0, 2.0, 2.0]
    assert out["keypoints"][1, :2].tolist() == [10.0, 0.0]
