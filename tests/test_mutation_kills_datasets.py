"""Tests written to kill surviving mutants of glid/data/datasets (tools/mutation_test.sh).

Registration runs in these tests' own bodies (not only in the session fixture), so that a
mutant of a registrar is checked against a test that calls it."""

import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from glid.data.datasets import register_all_ade20k
from glid.data.datasets.ade20k_meta import INSTANCE_CODE_TO_CLASS150, decode_instance_png
from glid.data.datasets.register_ade20k import ade20k_dataset_names
from glid.data.datasets.register_imagenet import load_imagenet
from glid.data.datasets.register_synthetic import register_all_synthetic


def test_decode_instance_png_marks_pixels_without_instance():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (13, 1, 0)  # instance code 13, instance id 1
    classes, ids = decode_instance_png(rgb)
    c = INSTANCE_CODE_TO_CLASS150[13 - 1] - 1  # its 0-based SceneParsing class (27)
    assert classes.dtype == np.int64 and ids.dtype == np.int64
    assert classes.tolist() == [[-1, c, -1], [-1, -1, -1]]
    assert ids.tolist() == [[0, 1, 0], [0, 0, 0]]


def test_ade20k_registration_names_and_instance_json(tmp_path):
    prefix = "glid_kill_ade20k"
    names = register_all_ade20k(str(tmp_path), prefix=prefix)
    expected = [f"{prefix}_{k}_{s}" for k in ("panoptic", "instance") for s in ("train", "val")]
    assert names == ade20k_dataset_names(prefix) == expected
    assert all(n in DatasetCatalog for n in names)
    ade = os.path.join(str(tmp_path), "ADEChallengeData2016")
    for split in ("train", "val"):  # the panoptic evaluator's thing AP reads this file
        meta = MetadataCatalog.get(f"{prefix}_panoptic_{split}")
        assert meta.json_file == os.path.join(ade, f"ade20k_instance_{split}.json")


def test_imagenet_without_images_names_the_folder(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"no images under {tmp_path / 'train'}"):
        load_imagenet(str(tmp_path), "train")


def test_synthetic_registration_metadata(synth_root):
    prefix = "glid_kill_synth"
    register_all_synthetic(synth_root, prefix=prefix)
    d = os.path.join(synth_root, "glid_synth")
    sem = MetadataCatalog.get(f"{prefix}_sem_seg_val")
    assert sem.evaluator_type == "sem_seg"
    ins = MetadataCatalog.get(f"{prefix}_instances_val")
    assert len(ins.thing_colors) == len(ins.thing_classes) > 0
    pan = MetadataCatalog.get(f"{prefix}_panoptic_val")
    assert pan.image_root == os.path.join(d, "images", "val")
    kp = MetadataCatalog.get(f"{prefix}_keypoints_val")
    assert kp.thing_classes == ["person"] and len(kp.keypoint_names) == 17
    assert kp.json_file == os.path.join(d, "annotations", "person_keypoints_val.json")
    persons = DatasetCatalog.get(f"{prefix}_keypoints_val")
    assert persons and all(len(a["keypoints"]) == 51 for r in persons for a in r["annotations"])


def test_ade20k_instance_json_with_other_categories_is_named(tmp_path):
    import json
    import re

    from glid.data.datasets.ade20k_meta import ADE20K_THING_IDS
    from glid.data.datasets.register_ade20k import load_ade20k_instance_json

    path = tmp_path / "ins.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1}]}))
    first = ADE20K_THING_IDS[:4]
    with pytest.raises(ValueError, match=re.escape(f"(0-based: {first}...), got [1]... (1 ids)")):
        load_ade20k_instance_json(str(path), str(tmp_path))
