"""Every registered synthetic split of every task, loaded from the generated data: record counts,
required keys and metadata; and a pin of a small generated dataset (mutation-test gaps,
issue 13)."""

from __future__ import annotations

import hashlib
import math
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from glid.data import (
    COCO_PERSON_KEYPOINT_NAMES,
    SYNTH_SEM_SEG_CLASSES,
    SYNTH_THING_CLASSES,
    register_all_synthetic,
)
from glid.data.datasets.register_synthetic import (
    DEPTH_METADATA,
    load_depth_pairs,
    load_image_folder,
    synthetic_dataset_names,
)
from glid.data.datasets.synthetic_meta import (
    SYNTH_STUFF_COLORS,
    SYNTH_THING_COLORS,
    default_root,
    hsv_to_rgb,
    synthetic_dir,
)
from tests.task_harness import TEST_PREFIX

# The ``synth_root`` fixture (tests/conftest.py): 8 train and 4 val images of 128 x 128.
COUNTS = {"train": 8, "val": 4}
HW = (128, 128)
TASKS = ("sem_seg", "instances", "panoptic", "keypoints", "depth", "cls")
ALL_COLORS = [list(c) for c in SYNTH_THING_COLORS + SYNTH_STUFF_COLORS]
THING_IDS = {1: 0, 2: 1, 3: 2, 5: 3, 7: 4, 9: 5}
STUFF_IDS = {12: 6, 15: 7, 20: 8}
FLIP_MAP = [
    ("left_eye", "right_eye"), ("left_ear", "right_ear"), ("left_shoulder", "right_shoulder"),
    ("left_elbow", "right_elbow"), ("left_wrist", "right_wrist"), ("left_hip", "right_hip"),
    ("left_knee", "right_knee"), ("left_ankle", "right_ankle"),
]  # fmt: skip


def test_dataset_names():
    assert synthetic_dataset_names("p") == [f"p_{t}_{s}" for t in TASKS for s in ("train", "val")]
    assert synthetic_dataset_names() == synthetic_dataset_names("glid_synth")
    assert synthetic_dataset_names()[0] == "glid_synth_sem_seg_train"


def test_registration_keeps_names_taken_and_registers_the_rest(tmp_path, caplog):
    import logging
    import uuid

    prefix = f"glid_test_keep_{uuid.uuid4().hex[:6]}"
    taken = f"{prefix}_sem_seg_train"  # the first name registered
    DatasetCatalog.register(taken, list)
    missing = []
    try:
        with caplog.at_level(logging.DEBUG, logger="glid.data.datasets.register_synthetic"):
            names = register_all_synthetic(str(tmp_path), prefix=prefix)
        assert names == synthetic_dataset_names(prefix)
        assert all(n in DatasetCatalog for n in names)
        assert DatasetCatalog.get(taken) == []  # the one already there is kept
        assert f"{taken} is already registered; keeping it" in caplog.messages
        # Without a prefix: the default names (registered on import, so kept as they are).
        missing = [n for n in synthetic_dataset_names("glid_synth") if n not in DatasetCatalog]
        assert register_all_synthetic(str(tmp_path)) == synthetic_dataset_names("glid_synth")
    finally:
        for name in synthetic_dataset_names(prefix) + missing:
            DatasetCatalog.pop(name, None)
            MetadataCatalog.pop(name, None)


def test_default_root_and_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert default_root() == "datasets" and synthetic_dir() == os.path.join(
        "datasets", "glid_synth"
    )
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert synthetic_dir() == os.path.join(str(tmp_path), "glid_synth")
    assert synthetic_dir("r") == os.path.join("r", "glid_synth")


def test_colors_pinned():
    assert hsv_to_rgb(0, 1, 1) == (255, 0, 0) and hsv_to_rgb(120, 1, 1) == (0, 255, 0)
    assert hsv_to_rgb(240, 1, 1) == (0, 0, 255) and hsv_to_rgb(600, 1, 1) == (0, 0, 255)
    assert hsv_to_rgb(275, 0.8, 0.9) == (153, 46, 230)  # colorsys, by hand: (0.6, 0.18, 0.9)
    assert SYNTH_THING_COLORS == (
        (230, 34, 34), (230, 132, 34), (230, 223, 34), (148, 34, 230), (230, 34, 164),
        (34, 230, 197),
    )  # fmt: skip


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _check_sem_seg(dicts, d, split, meta):
    for r in dicts:
        assert set(r) == {"file_name", "sem_seg_file_name"}
        assert r["file_name"].startswith(os.path.join(d, "images", split) + os.sep)
        assert r["sem_seg_file_name"].startswith(os.path.join(d, "sem_seg", split) + os.sep)
        assert _stem(r["file_name"]) == _stem(r["sem_seg_file_name"])
    assert meta.stuff_classes == list(SYNTH_SEM_SEG_CLASSES) and meta.stuff_colors == ALL_COLORS
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert meta.image_root == os.path.join(d, "images", split)
    assert meta.sem_seg_root == os.path.join(d, "sem_seg", split)


def _check_annotated(dicts, images, classes):
    for r in dicts:
        assert {"file_name", "height", "width", "image_id", "annotations"} <= set(r)
        assert r["file_name"].startswith(images + os.sep) and (r["height"], r["width"]) == HW
        for a in r["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS and len(a["bbox"]) == 4
            assert a["iscrowd"] == 0 and 0 <= a["category_id"] < classes
            assert a["segmentation"]
    assert sorted(r["image_id"] for r in dicts) == list(range(1, len(dicts) + 1))
    assert sum(len(r["annotations"]) for r in dicts) >= len(dicts)


def _check_instances(dicts, d, split, meta):
    _check_annotated(dicts, os.path.join(d, "images", split), len(SYNTH_THING_CLASSES))
    assert meta.evaluator_type == "coco"
    assert meta.thing_classes == list(SYNTH_THING_CLASSES)
    assert meta.thing_colors == [list(c) for c in SYNTH_THING_COLORS]
    assert meta.thing_dataset_id_to_contiguous_id == THING_IDS
    assert meta.json_file == os.path.join(d, "annotations", f"instances_{split}.json")
    assert meta.image_root == os.path.join(d, "images", split)


def _check_panoptic(dicts, d, split, meta):
    for r in dicts:
        assert {"file_name", "image_id", "pan_seg_file_name", "segments_info"} <= set(r)
        assert r["pan_seg_file_name"].startswith(os.path.join(d, f"panoptic_{split}") + os.sep)
        assert _stem(r["file_name"]) == _stem(r["pan_seg_file_name"])
        assert r["segments_info"]
        for s in r["segments_info"]:
            assert {"id", "category_id", "isthing", "iscrowd", "bbox", "area"} <= set(s)
            assert 0 <= s["category_id"] < len(SYNTH_SEM_SEG_CLASSES)
            assert s["isthing"] == (s["category_id"] < len(SYNTH_THING_CLASSES))
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.ignore_label == 255 and meta.label_divisor == 1000
    assert meta.thing_classes == meta.stuff_classes == list(SYNTH_SEM_SEG_CLASSES)
    assert meta.thing_colors == meta.stuff_colors == ALL_COLORS
    assert meta.thing_dataset_id_to_contiguous_id == THING_IDS
    assert meta.stuff_dataset_id_to_contiguous_id == STUFF_IDS
    assert meta.panoptic_root == os.path.join(d, f"panoptic_{split}")
    assert meta.panoptic_json == os.path.join(d, "annotations", f"panoptic_{split}.json")
    assert meta.json_file == os.path.join(d, "annotations", f"instances_{split}.json")
    assert meta.image_root == os.path.join(d, "images", split)


def _check_keypoints(dicts, d, split, meta):
    _check_annotated(dicts, os.path.join(d, "keypoint_images", split), 1)
    for r in dicts:
        for a in r["annotations"]:
            assert len(a["keypoints"]) == 3 * 17
    assert meta.evaluator_type == "coco" and meta.thing_classes == ["person"]
    assert meta.thing_colors == [[220, 20, 60]]
    assert meta.keypoint_names == list(COCO_PERSON_KEYPOINT_NAMES)
    assert meta.keypoint_flip_map == FLIP_MAP
    rules = meta.keypoint_connection_rules
    assert len(rules) == 19 and rules[0] == ("left_ankle", "left_knee", (255, 128, 0))
    assert ("nose", "left_eye", (255, 128, 0)) in rules  # COCO's (1, 2), 1-based
    assert meta.json_file == os.path.join(d, "annotations", f"person_keypoints_{split}.json")


def _check_depth(dicts, d, split, meta):
    for i, r in enumerate(dicts):
        assert set(r) == {"file_name", "depth_file_name", "height", "width", "image_id"} | {
            "focal_length"
        }
        assert r["image_id"] == i and (r["height"], r["width"]) == HW
        assert r["file_name"].startswith(os.path.join(d, "depth", split) + os.sep)
        assert r["file_name"].endswith("_rgb.jpg") and r["depth_file_name"].endswith("_depth.png")
        assert r["focal_length"] > 0
    assert meta.evaluator_type == "depth"
    assert meta.split_file == os.path.join(d, "depth", f"{split}.txt")
    assert (meta.depth_scale, meta.min_depth, meta.max_depth) == (1000.0, 1e-3, 10.0)
    assert DEPTH_METADATA == {"depth_scale": 1000.0, "min_depth": 1e-3, "max_depth": 10.0}


def _check_cls(dicts, d, split, meta):
    root = os.path.join(d, "classification", split)
    for i, r in enumerate(dicts):
        assert set(r) == {"file_name", "class_id", "image_id", "height", "width"}
        assert r["image_id"] == i and (r["height"], r["width"]) == HW
        class_dir = os.path.dirname(r["file_name"])
        assert os.path.dirname(class_dir) == root
        assert os.path.basename(class_dir) == SYNTH_THING_CLASSES[r["class_id"]]
    assert meta.evaluator_type == "classification" and meta.image_root == root
    assert meta.classes == list(SYNTH_THING_CLASSES)


CHECKS = {
    "sem_seg": _check_sem_seg,
    "instances": _check_instances,
    "panoptic": _check_panoptic,
    "keypoints": _check_keypoints,
    "depth": _check_depth,
    "cls": _check_cls,
}


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("task", TASKS)
def test_every_registered_split_loads(synth_root, task, split):
    name = f"{TEST_PREFIX}_{task}_{split}"
    d = os.path.join(synth_root, "glid_synth")
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == COUNTS[split], name
    assert all(os.path.isfile(r["file_name"]) for r in dicts)
    for key in ("sem_seg_file_name", "pan_seg_file_name", "depth_file_name"):
        assert all(os.path.isfile(r[key]) for r in dicts if key in r)
    assert len({r["file_name"] for r in dicts}) == len(dicts)
    CHECKS[task](dicts, d, split, MetadataCatalog.get(name))


# ----------------------------------------------------------------------------------------------
# A pin of the generated data
# ----------------------------------------------------------------------------------------------

# sha256 of generate_synthetic_dataset(tmp, seed=0, num_train=2, num_val=1, image_size=(64, 64)):
# every file's relative path, then its content — the bytes of JSON and text files, the decoded
# pixels (dtype, shape, values) of PNGs and, separately, of JPEGs (so neither depends on the
# encoder's compression, and a new JPEG library shows as a JPEG-only change). When the generator
# changes on purpose (bump FORMAT_VERSION then), print the two values with
#   .venv/bin/python -c "import tests.test_synthetic_registration as t; print(t.digests())"
# and paste them here.
PINNED_LOSSLESS = "e5feda63e82c1febfe52abe726cce1beb829eacb87698d32127196737e15c391"
PINNED_JPEG_PIXELS = "1cf0fd5e355228ff0d48d8209017e96717855a13e85465fcd3a32aa408db6f31"


def _pixels(path: str) -> bytes:
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return f"{array.dtype}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()


def digests(root: str | None = None) -> tuple[str, str]:
    """The two sha256 digests of the small generated dataset (generated under ``root``)."""
    import tempfile

    from glid.data.synthetic import generate_synthetic_dataset

    root = tempfile.mkdtemp() if root is None else root
    out = generate_synthetic_dataset(root, seed=0, num_train=2, num_val=1, image_size=(64, 64))
    lossless, jpeg = hashlib.sha256(), hashlib.sha256()
    paths = sorted(
        os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out) for f in files
    )
    for rel in paths:
        path = os.path.join(out, rel)
        h = jpeg if rel.endswith(".jpg") else lossless
        h.update(rel.replace(os.sep, "/").encode() + b"\0")
        if rel.endswith((".png", ".jpg")):
            h.update(_pixels(path))
        else:
            assert rel.endswith((".json", ".txt")), rel
            with open(path, "rb") as f:
                h.update(f.read())
    return lossless.hexdigest(), jpeg.hexdigest()


def test_generated_data_is_pinned(tmp_path):
    lossless, jpeg = digests(str(tmp_path))
    assert lossless == PINNED_LOSSLESS, "generated labels / annotations changed (see comment)"
    assert jpeg == PINNED_JPEG_PIXELS, "generated images changed (see comment)"


def test_depth_split_file_lines(synth_root, tmp_path):
    """Blank lines and ``#`` comments (whole or trailing) are skipped, the focal column is
    optional, and a line with one path is an error naming the file and the line."""
    depth = os.path.join(synth_root, "glid_synth", "depth")
    split_file = tmp_path / "split.txt"
    split_file.write_text(
        "\n# header # with a second hash\ntrain/000001_rgb.jpg train/000001_depth.png  # no f\n"
        "   \n/train/000002_rgb.jpg /train/000002_depth.png 500.5\n"
    )
    a, b = load_depth_pairs(str(split_file), root=depth)
    assert "focal_length" not in a and b["focal_length"] == 500.5
    assert (a["image_id"], b["image_id"]) == (0, 1)
    assert a["file_name"] == os.path.join(depth, "train", "000001_rgb.jpg")
    assert b["depth_file_name"] == os.path.join(depth, "train", "000002_depth.png")
    # Only a leading "/" is stripped; paths are relative to the split file's folder by default.
    import shutil

    shutil.copy(a["file_name"], tmp_path / "X_rgb.jpg")
    (tmp_path / "x.txt").write_text("X_rgb.jpg X_depth.png 1.5\n")
    (c,) = load_depth_pairs(str(tmp_path / "x.txt"))
    assert c["file_name"] == str(tmp_path / "X_rgb.jpg")
    assert c["depth_file_name"] == str(tmp_path / "X_depth.png")
    (tmp_path / "bad.txt").write_text("train/000001_rgb.jpg\n")
    with pytest.raises(ValueError, match=r"bad\.txt: expected 'rgb depth \[focal\]'"):
        load_depth_pairs(str(tmp_path / "bad.txt"), root=depth)


def test_image_folder_skips_other_files_and_missing_classes(tmp_path):
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
    cv2.imwrite(str(tmp_path / "a" / "1.png"), np.zeros((5, 7, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b" / "2.JPG"), np.zeros((6, 4, 3), np.uint8))
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    dicts = load_image_folder(str(tmp_path), classes=["c", "b", "a"])  # no folder for "c"
    assert [(os.path.basename(d["file_name"]), d["class_id"]) for d in dicts] == [
        ("2.JPG", 1),
        ("1.png", 2),
    ]
    assert [(d["height"], d["width"], d["image_id"]) for d in dicts] == [(6, 4, 0), (5, 7, 1)]
    assert [d["class_id"] for d in load_image_folder(str(tmp_path))] == [0, 1]  # sorted: a, b
    with pytest.raises(ValueError, match=r"folders \['b'\] not in classes"):
        load_image_folder(str(tmp_path), classes=["a"])


def test_missing_data_error_names_the_root_and_the_commands(tmp_path):
    import uuid

    prefix = f"glid_test_missing_{uuid.uuid4().hex[:6]}"
    root = str(tmp_path / "nowhere")
    names = register_all_synthetic(root, prefix=prefix)
    try:
        for name in names:
            with pytest.raises(FileNotFoundError) as error:
                DatasetCatalog.get(name)
            message = str(error.value)
            assert message.startswith(os.path.join(root, "glid_synth") + os.sep)
            assert f"under {root!r} has not been generated" in message
            assert f"python datasets/prepare_synthetic.py --root {root}`" in message
            assert f"generate_synthetic_dataset({root!r})" in message
    finally:
        for name in names:
            DatasetCatalog.pop(name, None)
            MetadataCatalog.pop(name, None)


def test_generation_is_logged(tmp_path, caplog):
    import logging

    from glid.data.synthetic import generate_synthetic_dataset

    with caplog.at_level(logging.INFO, logger="glid.data.synthetic.writer"):
        out = generate_synthetic_dataset(str(tmp_path), num_train=1, num_val=1, image_size=(32, 32))
        generate_synthetic_dataset(str(tmp_path), num_train=1, num_val=1, image_size=(32, 32))
    first, second = caplog.messages
    assert first.startswith(f"Generated synthetic dataset {out} in ") and first.endswith("s")
    assert 0.0 <= float(first.rsplit(" ", 1)[1][:-1]) < 300.0  # the time it took, in seconds
    assert second == f"Synthetic dataset {out} is up to date"


def _disc(hw, cx, cy, r):
    ys, xs = np.mgrid[: hw[0], : hw[1]]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def test_annotatable_rejects_small_parts_slivers_and_holes():
    """An instance is annotated only if every part is big (>= min_area // 3), has a core that
    survives a 3x3 erosion, and the mask has no holes."""
    from glid.data.synthetic.shapes import annotatable

    hw = (40, 40)
    disc = _disc(hw, 25, 25, 8)  # ~200 px
    assert annotatable(disc, min_area=100)
    assert not annotatable(np.zeros(hw, bool), min_area=1)
    # A second, small part scanned first (top left): 5 x 5 = 25 px < 100 // 3.
    two = disc.copy()
    two[1:6, 1:6] = True
    assert not annotatable(two, min_area=100)
    assert annotatable(two, min_area=75)  # 25 px >= 75 // 3
    # A 2-px-wide bar: big enough, but no 3x3-eroded core.
    bar = np.zeros(hw, bool)
    bar[5:7, 2:38] = True
    assert not annotatable(bar, min_area=30)
    # A ring (the disc with a hole).
    ring = disc & ~_disc(hw, 25, 25, 3)
    assert not annotatable(ring, min_area=30)


def test_unit_outlines_by_hand():
    """Circumradius 1 around 0: the triangle points up (image y down) at -90, 30, 150 degrees,
    the square's corners on the diagonals, the star alternates radii 1 and 0.45."""
    from glid.data.synthetic.shapes import _unit_outline

    s3 = math.sqrt(3) / 2
    tri = _unit_outline("triangle", 0.5)
    np.testing.assert_allclose(tri, [[0, -1], [s3, 0.5], [-s3, 0.5]], atol=1e-12)
    sq = _unit_outline("square", 0.5)
    h = math.sqrt(0.5)
    np.testing.assert_allclose(sq, [[h, h], [-h, h], [-h, -h], [h, -h]], atol=1e-12)
    star = _unit_outline("star", 0.5)
    assert star.shape == (10, 2)
    np.testing.assert_allclose(np.hypot(*star.T), [1.0, 0.45] * 5, atol=1e-12)
    ellipse = _unit_outline("ellipse", 0.5)
    assert ellipse.shape == (48, 2) and np.abs(ellipse[:, 1]).max() == pytest.approx(0.5)
    assert np.hypot(*_unit_outline("circle", 0.5).T) == pytest.approx(np.ones(48))
    with pytest.raises(ValueError, match="unknown shape class 'hexagon'"):
        _unit_outline("hexagon", 0.5)
