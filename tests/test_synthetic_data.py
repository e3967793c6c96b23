"""Tests of the built-in synthetic dataset: formats, determinism, registration and loaders."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from glid.data import (
    COCO_PERSON_KEYPOINT_NAMES,
    SYNTH_SEM_SEG_CLASSES,
    SYNTH_STUFF_CLASSES,
    SYNTH_STUFF_DATASET_IDS,
    SYNTH_THING_CLASSES,
    SYNTH_THING_DATASET_IDS,
    load_depth_pairs,
    load_image_folder,
    register_all_synthetic,
)
from glid.data.synthetic import generate_synthetic_dataset
from glid.data.synthetic.shapes import mask_to_polygons, sample_shape, shape_mask

NUM_TRAIN, NUM_VAL = 6, 4
HW = (96, 128)  # non-square on purpose
NUM_CLASSES = len(SYNTH_SEM_SEG_CLASSES)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("synth")
    out = generate_synthetic_dataset(
        str(root), seed=3, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=HW
    )
    return Path(out)


@pytest.fixture(scope="module")
def prefix() -> str:
    """A dataset-name prefix unique to this test run."""
    return f"test_synth_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def registered(synth: Path, prefix: str):
    """Registers ``synth`` under ``prefix``; yields {"<task>_<split>": name}."""
    names = register_all_synthetic(str(synth.parent), prefix=prefix)
    yield {n[len(prefix) + 1 :]: n for n in names}
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _read(path: Path | str) -> np.ndarray:
    """Reads a label image unchanged (RGB order for colour PNGs)."""
    return np.asarray(Image.open(path))


def _load_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _files(d: Path) -> dict[str, Path]:
    return {str(p.relative_to(d)): p for p in sorted(d.rglob("*")) if p.is_file()}


def test_class_lists() -> None:
    assert SYNTH_THING_CLASSES == ("circle", "square", "triangle", "ellipse", "cross", "star")
    assert SYNTH_STUFF_CLASSES == ("sky", "wall", "grass")
    assert SYNTH_SEM_SEG_CLASSES == SYNTH_THING_CLASSES + SYNTH_STUFF_CLASSES
    assert SYNTH_THING_DATASET_IDS == (1, 2, 3, 5, 7, 9)  # COCO-like gaps


def test_layout(synth: Path) -> None:
    files = _files(synth)
    for split, n in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        for pattern in (
            f"images/{split}/*.jpg",
            f"sem_seg/{split}/*.png",
            f"panoptic_{split}/*.png",
            f"keypoint_images/{split}/*.jpg",
            f"depth/{split}/*_rgb.jpg",
            f"depth/{split}/*_depth.png",
            f"classification/{split}/*/*.jpg",
        ):
            assert len(list(synth.glob(pattern))) == n, pattern
        for name in ("instances", "panoptic", "person_keypoints"):
            assert f"annotations/{name}_{split}.json" in files
        assert f"depth/{split}.txt" in files
    assert (synth / "images/train/000001.jpg").is_file()
    manifest = _load_json(synth / "manifest.json")
    assert manifest["seed"] == 3 and manifest["image_size"] == list(HW)
    assert not [p for p in synth.parent.iterdir() if p.name.startswith(".glid_synth")]


def test_determinism(tmp_path: Path) -> None:
    kwargs = {"num_train": 2, "num_val": 1, "image_size": (64, 80)}
    a = Path(generate_synthetic_dataset(str(tmp_path / "a"), seed=7, **kwargs))
    b = Path(generate_synthetic_dataset(str(tmp_path / "b"), seed=7, **kwargs))
    c = Path(generate_synthetic_dataset(str(tmp_path / "c"), seed=8, **kwargs))
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert files_a.keys() == files_b.keys() == files_c.keys()
    for rel, path in files_a.items():
        assert path.read_bytes() == files_b[rel].read_bytes(), rel
    labels = [r for r in files_a if r.endswith((".png", ".json")) and r != "manifest.json"]
    differing = [r for r in labels if files_a[r].read_bytes() != files_c[r].read_bytes()]
    assert len(differing) == len(labels)


def test_idempotent_and_regenerates_on_change(tmp_path: Path) -> None:
    kwargs = {"seed": 1, "num_train": 1, "num_val": 1, "image_size": (48, 48)}
    out = Path(generate_synthetic_dataset(str(tmp_path), **kwargs))
    mtimes = {r: p.stat().st_mtime_ns for r, p in _files(out).items()}
    assert generate_synthetic_dataset(str(tmp_path), **kwargs) == str(out)
    assert {r: p.stat().st_mtime_ns for r, p in _files(out).items()} == mtimes
    generate_synthetic_dataset(str(tmp_path), **{**kwargs, "num_train": 2})
    assert len(list((out / "images/train").glob("*.jpg"))) == 2
    assert _load_json(out / "manifest.json")["num_train"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glid_synth"]  # no tmp/old dirs left


def test_default_root_follows_detectron2_datasets(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    out = generate_synthetic_dataset(num_train=1, num_val=1, image_size=(32, 32))
    assert out == str(tmp_path / "glid_synth")


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one image per split, got num_train=0"):
        generate_synthetic_dataset(str(tmp_path), num_train=0)
    with pytest.raises(ValueError, match="num_val=0"):
        generate_synthetic_dataset(str(tmp_path), num_val=0)
    with pytest.raises(ValueError, match=r"at least 32x32, got \(16, 64\)"):
        generate_synthetic_dataset(str(tmp_path), image_size=(16, 64))
    with pytest.raises(ValueError, match=r"got \(64, 31\)"):
        generate_synthetic_dataset(str(tmp_path), image_size=(64, 31))
    assert not list(tmp_path.iterdir())  # nothing written


def test_polygons_reproduce_masks() -> None:
    rng = np.random.default_rng(0)
    for label in range(len(SYNTH_THING_CLASSES)):
        mask = shape_mask(sample_shape(rng, (64, 64), label, center=(0.0, 1.0)), (64, 64))
        if not mask.any():
            continue
        polys = mask_to_polygons(mask)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
        rle = mask_util.merge(mask_util.frPyObjects(polys, 64, 64))
        assert np.array_equal(mask_util.decode(rle).astype(bool), mask)


def test_semantic_labels(synth: Path) -> None:
    ignored = total = 0
    for path in sorted(synth.glob("sem_seg/*/*.png")):
        sem = _read(path)
        assert sem.dtype == np.uint8 and sem.shape == HW
        assert set(np.unique(sem).tolist()) <= set(range(NUM_CLASSES)) | {255}
        assert (sem >= len(SYNTH_THING_CLASSES)).any()  # some stuff everywhere
        ignored, total = ignored + int((sem == 255).sum()), total + sem.size
    assert 0 < ignored < 0.1 * total


@pytest.mark.parametrize("split", ["train", "val"])
def test_instances_match_semantic(synth: Path, split: str) -> None:
    coco = COCO(str(synth / f"annotations/instances_{split}.json"))
    assert sorted(coco.getCatIds()) == list(SYNTH_THING_DATASET_IDS)
    contiguous = {cid: i for i, cid in enumerate(SYNTH_THING_DATASET_IDS)}
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        assert (info["height"], info["width"]) == HW
        sem = _read(synth / "sem_seg" / split / info["file_name"].replace(".jpg", ".png"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 5
        union = np.zeros((NUM_CLASSES, *HW), bool)
        for ann in anns:
            assert ann["iscrowd"] == 0 and all(len(p) >= 6 for p in ann["segmentation"])
            mask = coco.annToMask(ann).astype(bool)
            cls = contiguous[ann["category_id"]]
            assert (sem[mask] == cls).mean() > 0.9
            assert int(mask.sum()) == ann["area"]  # polygons trace the pixel outlines
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert abs(xs.min() - x) <= 1 and abs(xs.max() + 1 - (x + w)) <= 1
            assert abs(ys.min() - y) <= 1 and abs(ys.max() + 1 - (y + h)) <= 1
            union[cls] |= mask
        for cls in {contiguous[a["category_id"]] for a in anns}:
            label = sem == cls
            assert (union[cls] & label).sum() / (union[cls] | label).sum() > 0.9


@pytest.mark.parametrize("split", ["train", "val"])
def test_panoptic_png_matches_json(synth: Path, split: str) -> None:
    pan = _load_json(synth / f"annotations/panoptic_{split}.json")
    isthing = {c["id"]: c["isthing"] for c in pan["categories"]}
    assert sorted(isthing) == sorted(SYNTH_THING_DATASET_IDS + SYNTH_STUFF_DATASET_IDS)
    all_ids = SYNTH_THING_DATASET_IDS + SYNTH_STUFF_DATASET_IDS
    assert len(pan["annotations"]) == len(pan["images"])
    for ann in pan["annotations"]:
        ids = rgb2id(_read(synth / f"panoptic_{split}" / ann["file_name"]))
        sem = _read(synth / "sem_seg" / split / ann["file_name"])
        segs = {s["id"]: s for s in ann["segments_info"]}
        present, counts = np.unique(ids[ids > 0], return_counts=True)
        assert dict(zip(present.tolist(), counts.tolist())) == {
            k: s["area"] for k, s in segs.items()
        }
        assert np.array_equal(ids == 0, sem == 255)  # void == unlabeled
        for seg in segs.values():
            assert seg["isthing"] == isthing[seg["category_id"]] and seg["iscrowd"] == 0
            assert np.all(sem[ids == seg["id"]] == all_ids.index(seg["category_id"]))


@pytest.mark.parametrize("split", ["train", "val"])
def test_keypoints(synth: Path, split: str) -> None:
    data = _load_json(synth / f"annotations/person_keypoints_{split}.json")
    (cat,) = data["categories"]
    assert cat["id"] == 1 and cat["name"] == "person"
    assert cat["keypoints"] == list(COCO_PERSON_KEYPOINT_NAMES)
    assert len(cat["skeleton"]) == 19 and min(min(e) for e in cat["skeleton"]) == 1
    coco = COCO(str(synth / f"annotations/person_keypoints_{split}.json"))
    h, w = HW
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 2
        for ann in anns:
            kps = np.array(ann["keypoints"]).reshape(17, 3)
            assert set(kps[:, 2].tolist()) <= {0, 1, 2}
            assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum()) >= 1
            assert np.all(kps[kps[:, 2] == 0, :2] == 0)
            x, y, bw, bh = ann["bbox"]
            for kx, ky, _ in kps[kps[:, 2] > 0]:
                assert 0 <= kx < w and 0 <= ky < h
                assert x <= kx < x + bw and y <= ky < y + bh
            mask = coco.annToMask(ann)
            assert int(mask.sum()) == ann["area"]


def test_depth_pngs(synth: Path, registered: dict) -> None:
    dicts = DatasetCatalog.get(registered["depth_train"])
    assert len(dicts) == NUM_TRAIN
    meta = MetadataCatalog.get(registered["depth_train"])
    assert meta.evaluator_type == "depth" and meta.depth_scale == 1000.0
    for d in dicts:
        assert (d["height"], d["width"]) == HW and d["focal_length"] > 0
        depth = cv2.imread(d["depth_file_name"], cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and depth.shape == HW
        valid = depth > 0
        assert 0.9 < valid.mean() < 1.0  # a few invalid pixels
        metres = depth[valid] / meta.depth_scale
        assert metres.min() >= 0.5 and metres.max() <= 10.0 <= meta.max_depth
        assert _read(d["file_name"]).shape == (*HW, 3)


def test_classification(synth: Path, registered: dict) -> None:
    for split, n in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        folders = sorted(p.name for p in (synth / "classification" / split).iterdir())
        assert folders == sorted(SYNTH_THING_CLASSES)
        name = registered[f"cls_{split}"]
        classes = MetadataCatalog.get(name).classes
        assert classes == list(SYNTH_THING_CLASSES)
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == n
        for d in dicts:
            assert classes[d["class_id"]] == Path(d["file_name"]).parent.name
            assert (d["height"], d["width"]) == HW


def test_generic_loaders_read_real_layouts(synth: Path, tmp_path: Path) -> None:
    split_file = tmp_path / "nyu_train_files.txt"  # BTS style: leading "/", focal column
    split_file.write_text(
        "# rgb depth focal\n/train/000002_rgb.jpg /train/000002_depth.png 518.8\n"
    )
    (d,) = load_depth_pairs(str(split_file), root=str(synth / "depth"))
    assert d["file_name"] == str(synth / "depth/train/000002_rgb.jpg")
    assert d["depth_file_name"] == str(synth / "depth/train/000002_depth.png")
    assert d["focal_length"] == 518.8 and (d["height"], d["width"]) == HW
    dicts = load_image_folder(str(synth / "classification/val"), read_sizes=False)
    assert len(dicts) == NUM_VAL and "height" not in dicts[0]
    names = sorted(SYNTH_THING_CLASSES)  # default class ids follow sorted folder names
    assert all(names[d["class_id"]] == Path(d["file_name"]).parent.name for d in dicts)
    with pytest.raises(ValueError, match="not in classes"):
        load_image_folder(str(synth / "classification/val"), classes=["circle"])


def test_all_registered_datasets_load(registered: dict) -> None:
    assert len(registered) == 12
    for key, name in registered.items():
        split = key.rsplit("_", 1)[1]
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == (NUM_TRAIN if split == "train" else NUM_VAL), name
        assert all(os.path.isfile(d["file_name"]) for d in dicts), name
    sem = DatasetCatalog.get(registered["sem_seg_val"])
    assert all(os.path.isfile(d["sem_seg_file_name"]) for d in sem)
    for d in DatasetCatalog.get(registered["instances_train"]):
        assert {a["category_id"] for a in d["annotations"]} <= set(range(6))
    for d in DatasetCatalog.get(registered["panoptic_train"]):
        assert os.path.isfile(d["pan_seg_file_name"])
        for s in d["segments_info"]:
            assert s["isthing"] == (s["category_id"] < len(SYNTH_THING_CLASSES))
    for d in DatasetCatalog.get(registered["keypoints_val"]):
        assert all(len(a["keypoints"]) == 51 for a in d["annotations"])


def test_metadata(registered: dict) -> None:
    sem = MetadataCatalog.get(registered["sem_seg_train"])
    assert sem.stuff_classes == list(SYNTH_SEM_SEG_CLASSES) and sem.ignore_label == 255
    assert sem.evaluator_type == "sem_seg" and len(sem.stuff_colors) == NUM_CLASSES
    inst = MetadataCatalog.get(registered["instances_train"])
    assert inst.evaluator_type == "coco" and inst.thing_classes == list(SYNTH_THING_CLASSES)
    pan = MetadataCatalog.get(registered["panoptic_train"])
    assert pan.evaluator_type == "coco_panoptic_seg" and pan.ignore_label == 255
    assert pan.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 5: 3, 7: 4, 9: 5}
    assert pan.stuff_dataset_id_to_contiguous_id == {12: 6, 15: 7, 20: 8}
    kp = MetadataCatalog.get(registered["keypoints_train"])
    assert kp.keypoint_names == list(COCO_PERSON_KEYPOINT_NAMES)
    assert ("left_wrist", "right_wrist") in kp.keypoint_flip_map
    assert len(kp.keypoint_connection_rules) == 19


def test_missing_data_raises_clear_error(tmp_path: Path) -> None:
    prefix = f"test_missing_{uuid.uuid4().hex[:8]}"
    names = register_all_synthetic(str(tmp_path), prefix=prefix)
    try:
        assert not list(tmp_path.iterdir())  # registering reads and writes nothing
        for name in names:
            with pytest.raises(FileNotFoundError, match="prepare_synthetic.py") as err:
                DatasetCatalog.get(name)
            assert str(tmp_path / "glid_synth") in str(err.value)
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_reregistration_is_safe(registered: dict, prefix: str, tmp_path: Path) -> None:
    before = {n: DatasetCatalog[n] for n in registered.values()}
    assert sorted(register_all_synthetic(str(tmp_path), prefix=prefix)) == sorted(before)
    assert all(DatasetCatalog[n] is f for n, f in before.items())


def test_default_names_registered_on_import() -> None:
    for task in ("sem_seg", "instances", "panoptic", "keypoints", "depth", "cls"):
        for split in ("train", "val"):
            assert f"glid_synth_{task}_{split}" in DatasetCatalog
