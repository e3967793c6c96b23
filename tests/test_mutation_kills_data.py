"""Tests written to kill surviving mutants of glid/data (tools/mutation_test.sh): each pins
one behaviour the rest of the suite left open."""

from types import SimpleNamespace

import numpy as np
from detectron2.data import transforms as T

from glid.data.dataset_mappers.depth_mapper import DepthColorAugmentation, DepthDatasetMapper

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
