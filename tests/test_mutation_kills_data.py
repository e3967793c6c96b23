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
from glid.data.dataset_mappers.classification_mapper import RandomResizedCrop
from glid.data.dataset_mappers.depth_mapper import DepthColorAugmentation, DepthDatasetMapper
from glid.data.image_io import BadSampleError

# ---- dataset_mappers/classification_mapper.py ----


def test_random_resized_crop_falls_back_to_the_centre():
    """No attempt can fit (the whole area at aspect 4 on a square): the centre crop at the
    ratio's nearest aspect, (40 - 10) // 2 = 15 rows above it."""
    rrc = RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(4.0, 4.0))
    assert rrc.crop_box(40, 40) == (0, 15, 40, 10)
    assert rrc.crop_box(10, 60) == (10, 0, 40, 10)  # 60 wide: (60 - 40) // 2 columns


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
