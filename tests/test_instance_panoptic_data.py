"""Instance / panoptic data: the mappers on hand-made files whose image encodes the targets
(any misalignment after flip / resize / crop fails) and on the generated data under both
augmentation recipes; the ADE20K prepare scripts on a tiny release-format fixture, read back
through the registration, panopticapi (PQ of the ground truth = 100) and pycocotools (mask AP =
100)."""

from __future__ import annotations

import colorsys
import contextlib
import importlib.util
import io
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.structures import polygons_to_bitmask
from PIL import Image

import glid
from glid.data.dataset_mappers import (
    DATASET_MAPPER_REGISTRY,
    InstanceSegmentationDatasetMapper,
    PanopticSegmentationDatasetMapper,
    build_dataset_mapper,
)
from glid.data.datasets import register_all_ade20k
from glid.data.datasets.ade20k_meta import ADE20K_150_CLASSES, ADE20K_THING_IDS
from glid.data.datasets.synthetic_meta import SYNTH_THING_CLASSES, SYNTH_THING_HUES
from tests.task_harness import TEST_PREFIX
from tests.utils import REPO_ROOT

CODE = 40  # image red channel = CODE * (class + 1); 0 = background
H, W = 48, 64

AUGMENTATIONS = {
    "none": [],
    "hflip": [T.RandomFlip(prob=1.0)],
    "upscale": [T.ResizeShortestEdge(96, 1000)],
    "downscale": [T.ResizeShortestEdge(30, 1000)],
    "crop": [T.RandomCrop("absolute", (32, 40))],
    "all": [T.ResizeShortestEdge(72, 1000), T.RandomCrop("absolute", (50, 50)), T.RandomFlip(1.0)],
}


def _seed(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _uniform(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood has one label (resizing blurs edges)."""
    padded = np.pad(label, radius, mode="edge")
    out = np.ones(label.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return out


def _tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    boxes = []
    for m in masks.numpy():
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------
# Instance mapper on hand-made files
# ----------------------------------------------------------------------------------------------


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        rle["counts"] = rle["counts"].decode("ascii")
        return rle
    # uncompressed: run lengths of the column-major mask, starting with zeros
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture
def instance_dict(tmp_path):
    """Four objects (a polygon, compressed RLE, uncompressed RLE, a crowd region), disjoint, each
    painted CODE * (class + 1) in the red channel; a green ramp shows flips."""
    label = np.full((H, W), -1)
    objects = []
    poly = [[4.0, 4.0, 24.0, 4.0, 24.0, 20.0, 4.0, 20.0]]  # rectangle, class 2
    m_poly = polygons_to_bitmask([np.array(p) for p in poly], H, W)
    objects.append({"segmentation": poly, "category_id": 2})
    m_rle = np.zeros((H, W), bool)
    m_rle[26:44, 6:20] = True
    m_rle[30:40, 20:30] = True  # an L shape, class 0
    objects.append({"segmentation": _rle(m_rle), "category_id": 0})
    m_unc = np.zeros((H, W), bool)
    m_unc[8:30, 40:58] = True  # class 4
    objects.append({"segmentation": _rle(m_unc, compressed=False), "category_id": 4})
    m_crowd = np.zeros((H, W), bool)
    m_crowd[36:46, 44:62] = True  # crowd, class 1: never a target
    objects.append({"segmentation": _rle(m_crowd), "category_id": 1, "iscrowd": 1})
    for obj, m in zip(objects, (m_poly, m_rle, m_unc, m_crowd)):
        label[m] = obj["category_id"]
        ys, xs = np.nonzero(m)
        obj["bbox"] = [
            float(xs.min()),
            float(ys.min()),
            float(np.ptp(xs) + 1),
            float(np.ptp(ys) + 1),
        ]
        obj["bbox_mode"] = 1  # XYWH_ABS
        obj.setdefault("iscrowd", 0)
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = np.where(label >= 0, (label + 1) * CODE, 0)
    image[..., 1] = np.arange(W)[None, :] * 3
    Image.fromarray(image).save(tmp_path / "inst.png")
    return {"file_name": str(tmp_path / "inst.png"), "image_id": 1, "annotations": objects}


def _instance_mapper(augmentations, is_train=True):
    return InstanceSegmentationDatasetMapper(
        is_train, augmentations=augmentations, image_format="RGB"
    )


def _check_instances_aligned(out: dict, expected_classes: set[int]) -> None:
    image, inst = out["image"], out["instances"]
    hw = tuple(image.shape[1:])
    assert inst.image_size == hw and inst.gt_masks.tensor.shape[1:] == hw
    assert (
        inst.gt_classes.dtype == torch.int64 and set(inst.gt_classes.tolist()) <= expected_classes
    )
    assert torch.equal(inst.gt_boxes.tensor, _tight_boxes(inst.gt_masks.tensor))
    red = image[0].numpy().astype(int)
    for mask, c in zip(inst.gt_masks.tensor.numpy(), inst.gt_classes.tolist()):
        inner = _uniform(mask.astype(int)) & mask
        if inner.sum() < 4:
            continue
        assert np.abs(red[inner] - CODE * (c + 1)).max() <= 2, f"class {c} mask off its pixels"
        # and most of the pixels of that colour are in the mask (nothing lost or shifted)
        colour = np.abs(red - CODE * (c + 1)) <= 2
        assert (colour & mask).sum() >= 0.9 * (colour & _uniform(colour.astype(int))).sum()


@pytest.mark.parametrize("aug", list(AUGMENTATIONS))
def test_instance_mapper_targets_follow_the_image(instance_dict, aug):
    _seed()
    out = _instance_mapper(AUGMENTATIONS[aug])(instance_dict)
    _check_instances_aligned(out, {0, 2, 4})
    assert "annotations" not in out
    assert (out["height"], out["width"]) == (H, W)
    if aug in ("none", "hflip", "upscale", "downscale"):  # nothing cropped away
        assert sorted(out["instances"].gt_classes.tolist()) == [0, 2, 4]  # crowd dropped
    if aug == "none":
        inst = out["instances"]
        assert inst.gt_boxes.tensor[inst.gt_classes == 0].tolist() == [[6.0, 26.0, 30.0, 44.0]]
        assert inst.gt_boxes.tensor[inst.gt_classes == 4].tolist() == [[40.0, 8.0, 58.0, 30.0]]
    if aug == "hflip":
        assert out["image"][1, 0, :].tolist() == [3 * x for x in range(W)][::-1]
        inst = out["instances"]
        assert inst.gt_boxes.tensor[inst.gt_classes == 4].tolist() == [[6.0, 8.0, 24.0, 30.0]]


def test_instance_mapper_crop_drops_objects_outside_and_keeps_boxes_tight(instance_dict):
    # A crop of the right half: the polygon (x 4..24) and the L (x 6..30) fall outside.
    crop = T.CropTransform(32, 0, 32, 48)

    class _Fixed(T.Augmentation):
        def get_transform(self, image):
            return crop

    out = _instance_mapper([_Fixed()])(instance_dict)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [4]
    assert inst.gt_boxes.tensor.tolist() == [[8.0, 8.0, 26.0, 30.0]]  # moved with the crop
    _check_instances_aligned(out, {4})


def test_instance_mapper_empty_image_and_test_mode(instance_dict):
    empty = dict(instance_dict, annotations=[])
    inst = _instance_mapper([])(empty)["instances"]
    assert len(inst) == 0 and inst.gt_masks.tensor.shape == (0, H, W)
    assert inst.gt_boxes.tensor.shape == (0, 4) and inst.gt_classes.dtype == torch.int64
    out = _instance_mapper([T.ResizeShortestEdge(96, 1000)], is_train=False)(instance_dict)
    assert out["image"].shape == (3, 96, 128) and "instances" not in out
    assert "annotations" not in out and (out["height"], out["width"]) == (H, W)


def test_instance_mapper_errors_name_the_file(instance_dict):
    with pytest.raises(KeyError, match="inst.png"):
        _instance_mapper([])({"file_name": instance_dict["file_name"]})
    bad = dict(instance_dict, annotations=[{"category_id": 0, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(KeyError, match="segmentation"):
        _instance_mapper([])(bad)
    wrong = _rle(np.ones((10, 10), bool))
    bad = dict(instance_dict, annotations=[{"category_id": 0, "segmentation": wrong}])
    with pytest.raises(ValueError, match="RLE size"):
        _instance_mapper([])(bad)


# ----------------------------------------------------------------------------------------------
# Panoptic mapper on hand-made files
# ----------------------------------------------------------------------------------------------

# (segment id, class, iscrowd, region) in painting order
_PAN_SEGMENTS = [
    (11, 6, 0, (slice(0, 20), slice(0, 64))),  # stuff "sky" on top
    (12, 7, 0, (slice(20, 48), slice(0, 64))),  # stuff "wall" below
    (300, 0, 0, (slice(5, 25), slice(5, 25))),  # thing
    (301, 0, 0, (slice(28, 44), slice(30, 50))),  # thing, same class
    (70000, 3, 0, (slice(8, 18), slice(40, 60))),  # thing with an id using the G and B channels
    (302, 1, 1, (slice(30, 46), slice(2, 20))),  # crowd thing
]
_VOID = (slice(44, 48), slice(52, 64))
PAN_CODE = 25  # panoptic image red channel = PAN_CODE * (class + 1); void 250


def _id_to_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


@pytest.fixture
def panoptic_dict(tmp_path):
    ids = np.zeros((H, W), np.int64)
    label = np.full((H, W), 255)
    for seg_id, cls, _, region in _PAN_SEGMENTS:
        ids[region] = seg_id
        label[region] = cls
    ids[_VOID] = 0
    label[_VOID] = 255
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = np.where(label == 255, 250, (label + 1) * PAN_CODE)
    image[..., 1] = np.arange(W)[None, :] * 3
    Image.fromarray(image).save(tmp_path / "pan_image.png")
    Image.fromarray(_id_to_rgb(ids)).save(tmp_path / "pan.png")
    segments = [
        {"id": s, "category_id": c, "iscrowd": crowd, "isthing": c < 6}
        for s, c, crowd, _ in _PAN_SEGMENTS
    ]
    segments.append({"id": 999, "category_id": 8, "iscrowd": 0, "isthing": False})  # not drawn
    return {
        "file_name": str(tmp_path / "pan_image.png"),
        "image_id": 1,
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "segments_info": segments,
    }


def _panoptic_mapper(augmentations, is_train=True, ignore_label=255):
    return PanopticSegmentationDatasetMapper(
        is_train, augmentations=augmentations, image_format="RGB", ignore_label=ignore_label
    )


def _check_panoptic_aligned(out: dict, ignore_label: int = 255) -> None:
    image, sem_seg, inst = out["image"], out["sem_seg"], out["instances"]
    assert sem_seg.dtype == torch.int64 and sem_seg.shape == image.shape[1:]
    assert inst.gt_masks.tensor.shape[1:] == sem_seg.shape and inst.gt_classes.dtype == torch.int64
    lab = sem_seg.numpy()
    uniform = _uniform(lab)
    red = image[0].numpy().astype(int)
    expected = np.where(lab == ignore_label, 250, (lab + 1) * PAN_CODE)
    assert uniform.sum() > 0.3 * lab.size
    assert np.abs(red - expected)[uniform].max() <= 2
    masks = inst.gt_masks.tensor
    assert not (masks.sum(0) > 1).any(), "segments overlap"
    for mask, c in zip(masks, inst.gt_classes.tolist()):
        assert mask.any() and (sem_seg[mask] == c).all()
    # every labelled pixel is in a mask except the crowd's (class 1 here)
    covered = masks.any(0)
    assert (sem_seg[~covered & (sem_seg != ignore_label)] == 1).all()


@pytest.mark.parametrize("aug", list(AUGMENTATIONS))
def test_panoptic_mapper_targets_follow_the_image(panoptic_dict, aug):
    _seed()
    out = _panoptic_mapper(AUGMENTATIONS[aug])(panoptic_dict)
    _check_panoptic_aligned(out)
    assert "segments_info" not in out
    if aug in ("none", "hflip", "upscale", "downscale"):
        # one instance per non-crowd segment that is drawn: 2 stuff + 3 things
        assert sorted(out["instances"].gt_classes.tolist()) == [0, 0, 3, 6, 7]
    if aug == "none":
        assert (out["sem_seg"] == 1).sum() == 16 * 18  # the crowd keeps its class
        assert out["sem_seg"][_VOID].eq(255).all()
    if aug == "hflip":
        assert out["image"][1, 0, :].tolist() == [3 * x for x in range(W)][::-1]


def test_panoptic_mapper_ignore_label_and_test_mode(panoptic_dict):
    out = _panoptic_mapper([], ignore_label=0)(panoptic_dict)
    assert out["sem_seg"][_VOID].eq(0).all()
    out = _panoptic_mapper([T.ResizeShortestEdge(96, 1000)], is_train=False)(panoptic_dict)
    assert out["image"].shape == (3, 96, 128)
    assert not {"instances", "sem_seg", "segments_info"} & set(out)


def test_panoptic_mapper_errors_name_the_file(panoptic_dict):
    bad = dict(panoptic_dict, segments_info=panoptic_dict["segments_info"][1:])
    with pytest.raises(ValueError, match=r"pan\.png.*\[11\]"):
        _panoptic_mapper([])(bad)
    with pytest.raises(KeyError, match="pan_seg_file_name"):
        _panoptic_mapper([])({"file_name": panoptic_dict["file_name"], "segments_info": []})


# ----------------------------------------------------------------------------------------------
# Config, registry and the generated data
# ----------------------------------------------------------------------------------------------


def _cfg(dataset: str, mapper: str, *opts):
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.DATASET_MAPPER_NAME = mapper
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 96, 128, 192, 256)  # 0.5-2.0 x 128
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 1024
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 1024
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (96, 96)
    cfg.INPUT.LSJ.IMAGE_SIZE = 96
    cfg.INPUT.LSJ.MIN_SCALE, cfg.INPUT.LSJ.MAX_SCALE = 0.5, 2.0
    cfg.merge_from_list(list(opts))
    return cfg


def test_registered_and_recipes_built_from_config(synth_root):
    names = {name for name, _ in DATASET_MAPPER_REGISTRY}
    assert {"InstanceSegmentationDatasetMapper", "PanopticSegmentationDatasetMapper"} <= names
    cfg = _cfg(f"{TEST_PREFIX}_panoptic_train", "PanopticSegmentationDatasetMapper")
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.8
    mapper = build_dataset_mapper(cfg, is_train=True)
    augs = mapper.augmentations.augs
    kinds = [type(a).__name__ for a in augs]
    assert kinds[0] == "ResizeShortestEdge" and kinds[1] == "RandomCrop_CategoryAreaConstraint"
    assert kinds[-1] == "RandomFlip" and "RandomApply" in kinds  # colour jitter
    assert augs[1].single_category_max_area == 0.8 and augs[1].ignored_category == 255
    assert mapper.ignore_label == 255
    cfg.INPUT.SEGMENTATION_AUGMENTATION = "LSJ"
    kinds = [type(a).__name__ for a in build_dataset_mapper(cfg, True).augmentations.augs]
    assert kinds == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    test_mapper = build_dataset_mapper(cfg, is_train=False)
    assert [type(a).__name__ for a in test_mapper.augmentations.augs] == ["ResizeShortestEdge"]
    cfg.INPUT.SEGMENTATION_AUGMENTATION = "DETR"
    with pytest.raises(ValueError, match="SEGMENTATION_AUGMENTATION"):
        build_dataset_mapper(cfg, is_train=True)


def test_ignore_label_comes_from_the_dataset_metadata():
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("glid_test_insdata_ignore77").set(ignore_label=77)
    MetadataCatalog.get("glid_test_insdata_no_ignore")  # COCO instances: none -> 255
    cfg = _cfg("glid_test_insdata_ignore77", "PanopticSegmentationDatasetMapper")
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.5
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert mapper.ignore_label == 77 and mapper.augmentations.augs[1].ignored_category == 77
    cfg.DATASETS.TRAIN = ("glid_test_insdata_no_ignore",)
    assert build_dataset_mapper(cfg, is_train=True).ignore_label == 255
    cfg.DATASETS.TRAIN = ("glid_test_insdata_ignore77", "glid_test_insdata_no_ignore")
    with pytest.raises(ValueError, match="ignore_label"):
        build_dataset_mapper(cfg, is_train=True)


def _hue_class(pixels: np.ndarray) -> int:
    """The thing class whose hue is nearest to the median hue of (N, 3) uint8 pixels."""
    hues = np.array([colorsys.rgb_to_hsv(*(p / 255.0))[0] * 360 for p in pixels])
    # circular median via the mean direction is enough here: the pixels share one hue
    angle = np.degrees(np.arctan2(np.sin(np.radians(hues)).mean(), np.cos(np.radians(hues)).mean()))
    dist = [abs((angle - h + 180) % 360 - 180) for h in SYNTH_THING_HUES]
    return int(np.argmin(dist))


def _check_thing_colours(out: dict, num_things: int) -> int:
    """Each thing mask's inner pixels have its class's hue; returns how many were checked."""
    image = out["image"].permute(1, 2, 0).numpy()
    checked = 0
    for mask, c in zip(out["instances"].gt_masks.tensor.numpy(), out["instances"].gt_classes):
        if c >= num_things:
            continue
        inner = _uniform(mask.astype(int), radius=2) & mask
        if inner.sum() < 20:
            continue
        assert _hue_class(image[inner]) == int(c), f"mask of class {int(c)} is not on its shape"
        checked += 1
    return checked


@pytest.mark.parametrize("recipe", ["SCALE_JITTER", "LSJ"])
def test_instance_mapper_on_generated_data(synth_root, recipe):
    dataset = f"{TEST_PREFIX}_instances_train"
    cfg = _cfg(dataset, "InstanceSegmentationDatasetMapper")
    cfg.INPUT.SEGMENTATION_AUGMENTATION = recipe
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.9  # the label map of the things is built
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert mapper.needs_label_map == (recipe == "SCALE_JITTER")
    dicts = DatasetCatalog.get(dataset)
    _seed(1)
    checked = 0
    for d in dicts:
        out = mapper(d)
        inst = out["instances"]
        hw = tuple(out["image"].shape[1:])
        assert max(hw) <= 96
        assert inst.gt_masks.tensor.shape[1:] == hw and len(inst) <= len(d["annotations"])
        assert torch.equal(inst.gt_boxes.tensor, _tight_boxes(inst.gt_masks.tensor))
        assert inst.gt_masks.tensor.flatten(1).any(1).all()
        checked += _check_thing_colours(out, len(SYNTH_THING_CLASSES))
    assert checked >= 5


@pytest.mark.parametrize("recipe", ["SCALE_JITTER", "LSJ"])
def test_panoptic_mapper_on_generated_data(synth_root, recipe):
    dataset = f"{TEST_PREFIX}_panoptic_train"
    cfg = _cfg(dataset, "PanopticSegmentationDatasetMapper")
    cfg.INPUT.SEGMENTATION_AUGMENTATION = recipe
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.9
    mapper = build_dataset_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(dataset)
    # without augmentation: one instance per non-crowd segment
    plain = _panoptic_mapper([])
    for d in dicts:
        out = plain(d)
        assert len(out["instances"]) == sum(not s["iscrowd"] for s in d["segments_info"])
    _seed(2)
    checked = 0
    for d in dicts:
        out = mapper(d)
        sem_seg, inst = out["sem_seg"], out["instances"]
        masks = inst.gt_masks.tensor
        assert masks.shape[1:] == sem_seg.shape == out["image"].shape[1:]
        for mask, c in zip(masks, inst.gt_classes.tolist()):
            assert (sem_seg[mask] == c).all()
        # no crowd in the generated data: the masks tile exactly the labelled pixels
        assert torch.equal(masks.sum(0) == 1, sem_seg != 255) and not (masks.sum(0) > 1).any()
        checked += _check_thing_colours(out, len(SYNTH_THING_CLASSES))
    assert checked >= 5


# ----------------------------------------------------------------------------------------------
# ADE20K prepare scripts and registration
# ----------------------------------------------------------------------------------------------


def _load_script(name: str):
    path = os.path.join(REPO_ROOT, "datasets", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"glid_test_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Classes (1-based, as in the semantic PNG): wall 1, sky 3, floor 4 (stuff); bed 8, person 13,
# chair 20 (things; instance codes 1, 4, 8).
_WALL, _SKY, _FLOOR, _BED, _PERSON, _CHAIR = 1, 3, 4, 8, 13, 20
_CODE = {_BED: 1, _PERSON: 4, _CHAIR: 8}


def _ade_image(kind: int) -> tuple[np.ndarray, np.ndarray]:
    """A (semantic, instance RGB) pair of 40x56; instances overlap stuff pixels on purpose."""
    sem = np.full((40, 56), _WALL, np.uint8)
    sem[:12] = _SKY
    sem[30:] = _FLOOR
    sem[36:, 50:] = 0  # "other"
    inst = np.zeros((40, 56, 3), np.uint8)

    def put(rows, cols, cls, iid, sem_too=True):
        if sem_too:
            sem[rows, cols] = cls
        inst[rows, cols, 0] = _CODE[cls]
        inst[rows, cols, 1] = iid

    put(slice(14, 28), slice(2, 20), _BED, 3)
    put(slice(5, 30), slice(24, 30), _PERSON, 7, sem_too=False)  # over sky and wall
    put(slice(5, 30), slice(32, 38), _PERSON, 9)
    if kind == 1:
        put(slice(20, 36), slice(40, 52), _CHAIR, 1)
        sem[2:6, 2:6] = _CHAIR  # a chair in the semantic map without instance: void
    return sem, inst


@pytest.fixture
def ade_root(tmp_path):
    """ADEChallengeData2016 with 2 training images and 1 validation image."""
    root = tmp_path / "datasets"
    ade = root / "ADEChallengeData2016"
    for folder, stems in (("training", ["ADE_train_00000001", "ADE_train_00000002"]),
                          ("validation", ["ADE_val_00000001"])):  # fmt: skip
        for sub in ("images", "annotations", "annotations_instance"):
            (ade / sub / folder).mkdir(parents=True)
        for kind, stem in enumerate(stems):
            sem, inst = _ade_image(kind)
            rgb = np.zeros((40, 56, 3), np.uint8) + 100
            Image.fromarray(rgb).save(ade / "images" / folder / f"{stem}.jpg")
            Image.fromarray(sem).save(ade / "annotations" / folder / f"{stem}.png")
            Image.fromarray(inst).save(ade / "annotations_instance" / folder / f"{stem}.png")
    return str(root)


def _prepare(ade_root: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        _load_script("prepare_ade20k_pan_seg").main(["--root", ade_root])
        _load_script("prepare_ade20k_ins_seg").main(["--root", ade_root])


def test_ade20k_instance_codes_are_the_thing_classes():
    assert len(ADE20K_THING_IDS) == 100 and len(ADE20K_150_CLASSES) == 150
    assert ADE20K_150_CLASSES[ADE20K_THING_IDS[0]] == "bed"  # instance code 1
    assert ADE20K_150_CLASSES[ADE20K_THING_IDS[3]] == "person"  # code 4
    assert ADE20K_150_CLASSES[ADE20K_THING_IDS[-1]] == "flag"  # code 100
    assert not {0, 1, 2, 3, 5} & set(ADE20K_THING_IDS)  # wall, building, sky, floor, ceiling


def test_ade20k_prepare_scripts_write_the_expected_files(ade_root):
    _prepare(ade_root)
    ade = os.path.join(ade_root, "ADEChallengeData2016")
    pan = json.load(open(os.path.join(ade, "ade20k_panoptic_train.json")))
    assert len(pan["categories"]) == 150 and sum(c["isthing"] for c in pan["categories"]) == 100
    ann = {a["image_id"]: a for a in pan["annotations"]}["ADE_train_00000002"]
    ids = np.asarray(Image.open(os.path.join(ade, "ade20k_panoptic_train", ann["file_name"])))
    ids = ids[..., 0].astype(int) + 256 * ids[..., 1] + 65536 * ids[..., 2]
    sem, inst = _ade_image(1)
    by_cat = sorted((s["category_id"], s["area"]) for s in ann["segments_info"])
    # stuff: wall, sky, floor minus the instance pixels; things: bed, 2 persons, chair
    thing_px = inst[..., 1] > 0
    expected = sorted(
        [(c - 1, int(((sem == c) & ~thing_px).sum())) for c in (_WALL, _SKY, _FLOOR)]
        + [(_BED - 1, 14 * 18), (_PERSON - 1, 25 * 6), (_PERSON - 1, 25 * 6), (_CHAIR - 1, 16 * 12)]
    )
    assert by_cat == expected
    for s in ann["segments_info"]:
        mask = ids == s["id"]
        ys, xs = np.nonzero(mask)
        assert s["area"] == mask.sum() and s["iscrowd"] == 0
        assert s["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
    # void: "other" and the chair pixels without instance
    assert (ids[36:, 50:] == 0).all() and (ids[2:6, 2:6] == 0).all()
    sem_d2 = np.asarray(
        Image.open(
            os.path.join(ade, "annotations_detectron2", "training", "ADE_train_00000002.png")
        )
    )
    assert np.array_equal(sem_d2, np.where(sem == 0, 255, sem.astype(int) - 1))
    ins = json.load(open(os.path.join(ade, "ade20k_instance_train.json")))
    assert sorted(c["id"] for c in ins["categories"]) == sorted(ADE20K_THING_IDS)
    assert len(ins["annotations"]) == 3 + 4 and len({a["id"] for a in ins["annotations"]}) == 7
    assert {a["category_id"] for a in ins["annotations"]} == {_BED - 1, _PERSON - 1, _CHAIR - 1}


def test_ade20k_outputs_load_through_registration_and_mappers(ade_root):
    _prepare(ade_root)
    prefix = "glid_test_ade20k"
    register_all_ade20k(ade_root, prefix=prefix)
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(f"{prefix}_panoptic_train")
    assert meta.evaluator_type == "ade20k_panoptic_seg" and meta.ignore_label == 255
    assert len(meta.stuff_classes) == len(meta.thing_classes) == 150
    assert sorted(meta.thing_dataset_id_to_contiguous_id) == sorted(ADE20K_THING_IDS)
    pan = DatasetCatalog.get(f"{prefix}_panoptic_train")
    assert [d["image_id"] for d in pan] == ["ADE_train_00000001", "ADE_train_00000002"]
    d = pan[1]
    assert os.path.isfile(d["sem_seg_file_name"]) and (d["height"], d["width"]) == (40, 56)
    things = {s["category_id"] for s in d["segments_info"] if s["isthing"]}
    assert things == {_BED - 1, _PERSON - 1, _CHAIR - 1}
    out = _panoptic_mapper([T.RandomFlip(1.0)])(d)
    assert len(out["instances"]) == len(d["segments_info"]) == 7
    for mask, c in zip(out["instances"].gt_masks.tensor, out["instances"].gt_classes.tolist()):
        assert (out["sem_seg"][mask] == c).all()

    ins_meta = MetadataCatalog.get(f"{prefix}_instance_val")
    assert ins_meta.evaluator_type == "coco" and len(ins_meta.thing_classes) == 100
    ins = DatasetCatalog.get(f"{prefix}_instance_val")
    assert len(ins) == 1 and ins[0]["image_id"] == "ADE_val_00000001"
    person = ADE20K_THING_IDS.index(_PERSON - 1)
    assert sorted(a["category_id"] for a in ins[0]["annotations"]) == [0, person, person]
    out = _instance_mapper([])(ins[0])
    sem, inst = _ade_image(0)
    got = sorted(m.sum().item() for m in out["instances"].gt_masks.tensor)
    assert got == sorted([14 * 18, 25 * 6, 25 * 6])
    assert torch.equal(
        out["instances"].gt_boxes.tensor, _tight_boxes(out["instances"].gt_masks.tensor)
    )


def test_ade20k_ground_truth_scores_perfectly_against_itself(ade_root, tmp_path):
    from panopticapi.evaluation import pq_compute
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _prepare(ade_root)
    ade = os.path.join(ade_root, "ADEChallengeData2016")
    gt_json = os.path.join(ade, "ade20k_panoptic_val.json")
    gt_dir = os.path.join(ade, "ade20k_panoptic_val")
    with contextlib.redirect_stdout(io.StringIO()):
        pq = pq_compute(gt_json, gt_json, gt_folder=gt_dir, pred_folder=gt_dir)
    assert pq["All"]["pq"] == pytest.approx(1.0) and pq["All"]["n"] == 5  # classes present
    assert pq["Things"]["pq"] == pytest.approx(1.0)

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(ade, "ade20k_instance_train.json"))
        results = [
            {k: a[k] for k in ("image_id", "category_id", "segmentation")} | {"score": 1.0}
            for a in gt.dataset["annotations"]
        ]
        evaluator = COCOeval(gt, gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_ade20k_missing_files_say_what_to_run(tmp_path):
    prefix = "glid_test_ade20k_missing"
    register_all_ade20k(str(tmp_path), prefix=prefix)
    with pytest.raises(FileNotFoundError, match="prepare_ade20k_pan_seg.py"):
        DatasetCatalog.get(f"{prefix}_panoptic_train")
    with pytest.raises(FileNotFoundError, match="prepare_ade20k_ins_seg.py"):
        DatasetCatalog.get(f"{prefix}_instance_val")
    script = _load_script("prepare_ade20k_pan_seg")
    with pytest.raises(FileNotFoundError, match="images"):
        script.main(["--root", str(tmp_path), "--splits", "val"])


def test_ade20k_instance_png_with_two_codes_for_one_id_is_an_error(ade_root):
    path = os.path.join(
        ade_root,
        "ADEChallengeData2016",
        "annotations_instance",
        "validation",
        "ADE_val_00000001.png",
    )
    inst = np.asarray(Image.open(path)).copy()
    inst[14, 2, 0] = _CODE[_CHAIR]  # one pixel of the bed (id 3) gets the chair's code
    Image.fromarray(inst).save(path)
    with pytest.raises(ValueError, match="ADE_val_00000001.png.*several category codes"):
        _load_script("prepare_ade20k_ins_seg").main(["--root", ade_root, "--splits", "val"])


def test_ade20k_semantic_values_above_150_are_an_error():
    script = _load_script("prepare_ade20k_pan_seg")
    sem, inst = _ade_image(0)
    sem[0, 0] = 151
    with pytest.raises(ValueError, match="expected 0..150"):
        script.panoptic_from_annotations(sem, inst, "x.png")
    ids, segments = script.panoptic_from_annotations(*_ade_image(0))
    assert sorted(s["category_id"] for s in segments) == [0, 2, 3, 7, 12, 12]
    assert np.array_equal(script.id_to_rgb(ids).astype(int) @ [1, 256, 65536], ids)
