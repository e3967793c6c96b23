"""Dataset mappers: the image encodes its own label, so any misalignment between the image and
its targets under each augmentation (forced on or off) fails; test mode; the registry."""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from glid.data.dataset_mappers import (
    DATASET_MAPPER_REGISTRY,
    SemanticSegmentationDatasetMapper,
    build_dataset_mapper,
)
from tests.utils import make_tiny_cfg

CODE = 40  # image red channel = CODE * label


@pytest.fixture
def labelled_files(tmp_path):
    """A 48x64 label map of 4 classes in asymmetric blocks (so flips and crops show), 255 in a
    corner, and an image whose red channel is CODE * label."""
    label = np.zeros((48, 64), np.uint8)
    label[:, 20:] = 1
    label[30:, 10:50] = 2
    label[5:15, 40:60] = 3
    label[:4, :4] = 255
    image = np.zeros((48, 64, 3), np.uint8)
    image[..., 0] = np.where(label == 255, 250, label * CODE)
    image[..., 1] = np.arange(64)[None, :] * 3  # a ramp, to see that nothing else is swapped
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(label).save(tmp_path / "label.png")
    return {
        "file_name": str(tmp_path / "image.png"),
        "sem_seg_file_name": str(tmp_path / "label.png"),
    }


def _mapper(augmentations, is_train=True):
    return SemanticSegmentationDatasetMapper(
        is_train, augmentations=augmentations, image_format="RGB", ignore_label=255
    )


def _assert_aligned(out):
    image, sem_seg = out["image"], out["sem_seg"]
    assert image.dtype == torch.uint8 and image.shape[1:] == sem_seg.shape
    # Compare where the label's 5x5 neighbourhood is uniform (image resizing blurs edges).
    lab = sem_seg.numpy()
    padded = np.pad(lab, 2, mode="edge")
    uniform = np.ones_like(lab, bool)
    for dy in range(5):
        for dx in range(5):
            uniform &= padded[dy : dy + lab.shape[0], dx : dx + lab.shape[1]] == lab
    red = image[0].numpy().astype(int)
    expected = np.where(lab == 255, 250, lab * CODE)
    assert uniform.sum() > 0.3 * lab.size
    assert np.abs(red - expected)[uniform].max() <= 2
    # One mask per class present, equal to the label map's class region.
    inst = out["instances"]
    classes = sorted(set(np.unique(lab).tolist()) - {255})
    assert inst.gt_classes.tolist() == classes
    for k, c in enumerate(classes):
        assert torch.equal(inst.gt_masks.tensor[k], sem_seg == c)


@pytest.mark.parametrize(
    "augmentations",
    [
        [],
        [T.RandomFlip(prob=1.0)],
        [T.RandomFlip(prob=1.0, horizontal=False, vertical=True)],
        [T.ResizeShortestEdge(96, 1000)],
        [T.ResizeShortestEdge(30, 1000)],
        [T.RandomCrop("absolute", (32, 40))],
        [T.ResizeShortestEdge(72, 1000), T.RandomCrop("absolute", (50, 50)), T.RandomFlip(1.0)],
    ],
    ids=["none", "hflip", "vflip", "upscale", "downscale", "crop", "all"],
)
def test_semantic_mapper_keeps_image_and_label_aligned(labelled_files, augmentations):
    torch.manual_seed(0)
    np.random.seed(0)
    out = _mapper(augmentations)(labelled_files)
    _assert_aligned(out)
    h, w = out["sem_seg"].shape
    if not augmentations:
        assert (h, w) == (48, 64)
        assert out["image"][1, 0, :].tolist() == [3 * x for x in range(64)]
    if isinstance(augmentations[0] if augmentations else None, T.RandomFlip):
        flipped_x = augmentations[0].horizontal
        ramp = out["image"][1, 0, :].tolist()
        assert ramp == (
            [3 * x for x in range(64)][::-1] if flipped_x else [3 * x for x in range(64)]
        )
        assert out["sem_seg"][0, 0].item() == (1 if flipped_x else 0)  # label[0, 63] / [47, 0]
    assert out["height"] == 48 and out["width"] == 64  # the original size, for inference


def test_semantic_mapper_test_mode_reads_image_only(labelled_files):
    mapper = _mapper([T.ResizeShortestEdge(96, 1000)], is_train=False)
    out = mapper(dict(labelled_files))
    assert out["image"].shape == (3, 96, 128)
    assert "instances" not in out and "sem_seg" not in out
    assert (out["height"], out["width"]) == (48, 64)


def test_semantic_mapper_errors_name_the_file(labelled_files, tmp_path):
    mapper = _mapper([])
    with pytest.raises(KeyError, match="image.png"):
        mapper({"file_name": labelled_files["file_name"]})
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "rgb_label.png")
    bad = dict(labelled_files, sem_seg_file_name=str(tmp_path / "rgb_label.png"))
    with pytest.raises(ValueError, match="single-channel"):
        mapper(bad)


def test_mapper_from_config_uses_the_dataset_ignore_label():
    MetadataCatalog.get("glid_test_mapper_ignore").set(ignore_label=77)
    cfg = make_tiny_cfg("DATASETS.TRAIN", "('glid_test_mapper_ignore',)")
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(mapper, SemanticSegmentationDatasetMapper) and mapper.ignore_label == 77
    crop = [
        a for a in mapper.augmentations.augs if isinstance(a, T.RandomCrop_CategoryAreaConstraint)
    ]
    assert crop and crop[0].ignored_category == 77
    test_mapper = build_dataset_mapper(cfg, is_train=False)
    (resize,) = test_mapper.augmentations.augs
    assert isinstance(resize, T.ResizeShortestEdge) and resize.short_edge_length == (128, 128)
    MetadataCatalog.get("glid_test_mapper_noignore").set(stuff_classes=["a"])
    with pytest.raises(ValueError, match="ignore_label"):
        build_dataset_mapper(
            make_tiny_cfg("DATASETS.TRAIN", "('glid_test_mapper_noignore',)"), True
        )


def test_mapper_registry_and_name_override():
    assert "SemanticSegmentationDatasetMapper" in DATASET_MAPPER_REGISTRY
    with pytest.raises(KeyError, match="NoSuchMapper"):
        build_dataset_mapper(make_tiny_cfg("INPUT.DATASET_MAPPER_NAME", "NoSuchMapper"), True)
