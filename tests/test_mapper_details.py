"""Dataset mappers in detail: the INPUT keys that reach the base mapper (FORMAT, MIN/MAX_SIZE_TEST,
COLOR_AUG_SSD) on hand-made images (mutation-test gaps, issue 13)."""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError
from PIL import Image

from glid.data.dataset_mappers import GLIDDatasetMapper, SemanticSegmentationDatasetMapper
from tests.utils import make_tiny_cfg

H, W = 48, 64


@pytest.fixture
def files(tmp_path):
    """An image whose channels differ everywhere (R = 200, G = a ramp, B = 10 + 2 x row) and
    a label map of three classes in asymmetric blocks, 255 in a corner."""
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = 200
    image[..., 1] = np.arange(W)[None, :] * 3
    image[..., 2] = 10 + 2 * np.arange(H)[:, None]
    label = np.zeros((H, W), np.uint8)
    label[:, 20:] = 1
    label[30:, 10:50] = 2
    label[:4, :4] = 255
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(label).save(tmp_path / "label.png")
    return {
        "file_name": str(tmp_path / "image.png"),
        "sem_seg_file_name": str(tmp_path / "label.png"),
        "image": torch.as_tensor(image).permute(2, 0, 1),
        "label": torch.as_tensor(label.astype(np.int64)),
    }


def _dict(files):
    return {k: files[k] for k in ("file_name", "sem_seg_file_name")}


def test_bare_mapper_test_mode_resizes_the_image_only(files):
    """MIN_SIZE_TEST sets the short side (48 -> 96 here: 96 x 128); no targets."""
    cfg = make_tiny_cfg("INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 1000)
    mapper = GLIDDatasetMapper(cfg, is_train=False)
    out = mapper(_dict(files))
    assert out["image"].shape == (3, 96, 128) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (H, W)
    assert {"file_name", "image", "height", "width"} <= set(out)
    assert not {"instances", "sem_seg"} & set(out)
    # Resizing keeps a constant channel constant.
    assert (out["image"][0] == 200).all()


def test_bare_mapper_at_its_own_size_returns_the_image_exactly(files):
    cfg = make_tiny_cfg("INPUT.MIN_SIZE_TEST", H, "INPUT.MAX_SIZE_TEST", 1000)
    out = GLIDDatasetMapper(cfg, is_train=False)({"file_name": files["file_name"]})
    assert torch.equal(out["image"], files["image"])


@pytest.mark.parametrize("max_size,want", [(1000, (96, 128)), (100, (75, 100)), (64, (48, 64))])
def test_max_size_test_caps_the_long_side(files, max_size, want):
    cfg = make_tiny_cfg("INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", max_size)
    out = GLIDDatasetMapper(cfg, is_train=False)({"file_name": files["file_name"]})
    assert tuple(out["image"].shape[1:]) == want


def test_format_bgr_reverses_the_channels(files):
    outs = {}
    for fmt in ("RGB", "BGR"):
        cfg = make_tiny_cfg("INPUT.FORMAT", fmt, "INPUT.MIN_SIZE_TEST", H)
        outs[fmt] = GLIDDatasetMapper(cfg, is_train=False)({"file_name": files["file_name"]})
    assert torch.equal(outs["RGB"]["image"], files["image"])
    assert torch.equal(outs["BGR"]["image"], files["image"].flip(0))
    assert (outs["BGR"]["image"][2] == 200).all()  # red is last in BGR


def test_bare_mapper_training_augmentations_from_config(files):
    """The base mapper's training recipe is detectron2's: shortest edge to MIN_SIZE_TRAIN
    (at most MAX_SIZE_TRAIN) and a random flip."""
    cfg = make_tiny_cfg(
        "INPUT.MIN_SIZE_TRAIN", (72,), "INPUT.MAX_SIZE_TRAIN", 90, "INPUT.RANDOM_FLIP", "none"
    )
    mapper = GLIDDatasetMapper(cfg, is_train=True)
    out = mapper(_dict(files))
    assert out["image"].shape == (3, 68, 90)  # 72 x 96 capped to a long side of 90
    assert "instances" not in out and "sem_seg" not in out


def _semantic_cfg(color_aug):
    name = "glid_test_mapper_details_colors"
    MetadataCatalog.get(name).set(ignore_label=255)
    return make_tiny_cfg(
        "DATASETS.TRAIN", f"('{name}',)",
        "INPUT.MIN_SIZE_TRAIN", (H,),  # no resize: the image keeps its size
        "INPUT.CROP.ENABLED", False,
        "INPUT.COLOR_AUG_SSD", color_aug,
    )  # fmt: skip


def test_color_aug_ssd_changes_colors_not_labels(files):
    """With COLOR_AUG_SSD the image's colours change (in some draws), the label never does;
    without it the image is the original (or its mirror image) exactly."""
    changed = 0
    for color_aug in (False, True):
        mapper = SemanticSegmentationDatasetMapper(_semantic_cfg(color_aug), is_train=True)
        jitter = [a for a in mapper.augmentations.augs if isinstance(a, T.RandomApply)]
        assert len(jitter) == (3 if color_aug else 0)
        for seed in range(8):
            np.random.seed(seed)
            out = mapper(_dict(files))
            flipped = torch.equal(out["sem_seg"], files["label"].flip(-1))
            assert flipped or torch.equal(out["sem_seg"], files["label"])
            original = files["image"].flip(-1) if flipped else files["image"]
            if not color_aug:
                assert torch.equal(out["image"], original)
            elif not torch.equal(out["image"], original):
                changed += 1
                assert out["image"].shape == original.shape  # photometric only
    assert changed >= 4  # each of the 3 jitters applies with p = 0.5: 7 in 8 draws on average


def test_color_jitter_comes_after_resize_and_crop_before_the_flip():
    mapper = SemanticSegmentationDatasetMapper(_semantic_cfg(True), is_train=True)
    kinds = [type(a).__name__ for a in mapper.augmentations.augs]
    assert kinds == [
        "ResizeShortestEdge",
        "RandomApply",
        "RandomApply",
        "RandomApply",
        "RandomFlip",
    ]
    inner = [type(a.aug).__name__ for a in mapper.augmentations.augs[1:4]]
    assert inner == ["RandomBrightness", "RandomContrast", "RandomSaturation"]
    assert all(a.prob == 0.5 for a in mapper.augmentations.augs[1:4])


def test_size_mismatch_names_the_file(files):
    mapper = GLIDDatasetMapper(make_tiny_cfg(), is_train=False)
    with pytest.raises(SizeMismatchError, match="image.png"):
        mapper({"file_name": files["file_name"], "height": H + 1, "width": W})


def test_color_jitter_ranges():
    """Mask2Former's photometric jitter: brightness 0.875-1.125, contrast and saturation
    0.5-1.5, each applied with probability 0.5 (or the given one)."""
    from glid.data.dataset_mappers.augmentations import build_color_jitter

    brightness, contrast, saturation = build_color_jitter()
    assert isinstance(brightness.aug, T.RandomBrightness)
    assert (brightness.aug.intensity_min, brightness.aug.intensity_max) == (0.875, 1.125)
    assert isinstance(contrast.aug, T.RandomContrast)
    assert (contrast.aug.intensity_min, contrast.aug.intensity_max) == (0.5, 1.5)
    assert isinstance(saturation.aug, T.RandomSaturation)
    assert (saturation.aug.intensity_min, saturation.aug.intensity_max) == (0.5, 1.5)
    assert [a.prob for a in build_color_jitter(0.25)] == [0.25] * 3


def test_mappers_train_by_default(files):
    cfg = _semantic_cfg(False)
    assert GLIDDatasetMapper(cfg).is_train
    out = SemanticSegmentationDatasetMapper(cfg)(_dict(files))
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (H, W)
    assert out["instances"].image_size == (H, W)
    assert out["instances"].gt_classes.tolist() == [0, 1, 2]


def test_test_mapper_needs_no_training_metadata(files):
    """An eval-only config (no training sets) builds the test mapper: it reads no metadata."""
    cfg = make_tiny_cfg("DATASETS.TRAIN", "()", "INPUT.MIN_SIZE_TEST", H)
    mapper = SemanticSegmentationDatasetMapper(cfg, is_train=False)
    assert mapper.ignore_label is None
    assert torch.equal(mapper(_dict(files))["image"], files["image"])


def test_ignore_label_must_agree_across_training_sets():
    from glid.data.dataset_mappers.semantic_mapper import dataset_ignore_label

    for name, meta in [("a", {"ignore_label": 255}), ("b", {"ignore_label": 0}), ("c", {})]:
        MetadataCatalog.get(f"glid_test_mapper_details_{name}").set(stuff_classes=["x"], **meta)

    def cfg(*names):
        sets = ", ".join(f"'glid_test_mapper_details_{n}'" for n in names)
        return make_tiny_cfg("DATASETS.TRAIN", f"({sets},)")

    assert dataset_ignore_label(cfg("a", "a")) == 255
    with pytest.raises(ValueError, match=r"must all set the same `ignore_label`.*got \[0, 255\]"):
        dataset_ignore_label(cfg("a", "b"))
    with pytest.raises(ValueError, match=r"got \[255, None\]"):
        dataset_ignore_label(cfg("a", "c"))
    with pytest.raises(ValueError, match=r"got \[None\]"):
        dataset_ignore_label(cfg("c"))


def test_unknown_mapper_lists_the_registered_ones():
    from glid.data.dataset_mappers import build_dataset_mapper

    cfg = make_tiny_cfg("INPUT.DATASET_MAPPER_NAME", "NoSuchMapper")
    pattern = r"INPUT.DATASET_MAPPER_NAME='NoSuchMapper' is not registered; have \[.*'Semantic"
    with pytest.raises(KeyError, match=pattern):
        build_dataset_mapper(cfg, is_train=False)
