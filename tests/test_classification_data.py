"""The data side of pre-training and classification: ImageNet registration, the image-level
mapper (crop, flip, RandAugment, test crop, channel order), the top-k evaluator, and the
deterministic nested training fractions through the training loader."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from glid.data.dataset_mappers import (
    DATASET_MAPPER_REGISTRY,
    ImageClassificationDatasetMapper,
    build_dataset_mapper,
)
from glid.data.dataset_mappers.classification_mapper import (
    CenterCropResize,
    RandomResizedCrop,
    rand_augment_hparams,
)
from glid.data.datasets import register_imagenet
from glid.data.subset import subset_dataset_dicts
from glid.engine.resume import build_train_loader, seed_all_rngs
from glid.evaluation import ClassificationEvaluator, build_evaluator
from tests.task_harness import TEST_PREFIX
from tests.utils import REPO_ROOT, make_tiny_cfg

# ----------------------------------------------------------------------------------------------
# ImageNet registration
# ----------------------------------------------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n02102040"]


def _write_jpeg(path, hw=(12, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((*hw, 3), 128, np.uint8)).save(path)


@pytest.fixture
def imagenet_root(tmp_path):
    """A tiny ImageFolder tree: 3 classes, written in unsorted order, 2 (train) / 1 (val)
    images each; returns (root, a dataset-name prefix unique to this test)."""
    for wnid in reversed(WNIDS):
        for i in range(2):
            _write_jpeg(str(tmp_path / "imagenet" / "train" / wnid / f"{wnid}_{i}.JPEG"))
        _write_jpeg(str(tmp_path / "imagenet" / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG"))
    return str(tmp_path), f"test_imagenet_{tmp_path.name}"


def test_imagenet_is_registered_by_default():
    for name in ("imagenet_train", "imagenet_val"):
        assert name in DatasetCatalog
        assert MetadataCatalog.get(name).evaluator_type == "classification"


def test_imagenet_registration_reads_the_image_folder_tree(imagenet_root):
    root, prefix = imagenet_root
    assert register_imagenet(root, prefix=prefix) == [f"{prefix}_train", f"{prefix}_val"]
    assert register_imagenet(root, prefix=prefix) == [f"{prefix}_train", f"{prefix}_val"]
    train = DatasetCatalog.get(f"{prefix}_train")
    val = DatasetCatalog.get(f"{prefix}_val")
    assert len(train) == 6 and len(val) == 3
    for d in train + val:
        wnid = os.path.basename(os.path.dirname(d["file_name"]))
        assert d["class_id"] == WNIDS.index(wnid)  # sorted folder order
        assert "height" not in d and "width" not in d  # headers are not read
    assert sorted(d["image_id"] for d in train) == list(range(6))
    for name in (f"{prefix}_train", f"{prefix}_val"):
        metadata = MetadataCatalog.get(name)
        assert metadata.evaluator_type == "classification"
        assert metadata.classes == WNIDS


def test_imagenet_val_folders_must_match_train(imagenet_root):
    root, prefix = imagenet_root
    _write_jpeg(os.path.join(root, "imagenet", "val", "n09999999", "x.JPEG"))
    os.rename(
        os.path.join(root, "imagenet", "val", WNIDS[0]),
        os.path.join(root, "imagenet", "val_moved"),
    )
    register_imagenet(root, prefix=prefix)
    with pytest.raises(ValueError, match="n09999999") as error:
        DatasetCatalog.get(f"{prefix}_val")
    assert WNIDS[0] in str(error.value)
    assert len(DatasetCatalog.get(f"{prefix}_train")) == 6


def test_imagenet_flat_val_is_explained(tmp_path):
    _write_jpeg(str(tmp_path / "imagenet" / "train" / WNIDS[0] / "a.JPEG"))
    _write_jpeg(str(tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG"))
    prefix = f"test_imagenet_flat_{tmp_path.name}"
    register_imagenet(str(tmp_path), prefix=prefix)
    with pytest.raises(ValueError, match="holds loose images"):
        DatasetCatalog.get(f"{prefix}_val")


def test_imagenet_missing_root_names_path_and_layout(tmp_path):
    prefix = f"test_imagenet_missing_{tmp_path.name}"
    register_imagenet(str(tmp_path / "nowhere"), prefix=prefix)  # lazy: nothing read yet
    for split in ("train", "val"):
        with pytest.raises(FileNotFoundError) as error:
            DatasetCatalog.get(f"{prefix}_{split}")
        message = str(error.value)
        assert os.path.join(str(tmp_path / "nowhere"), "imagenet", split) in message
        assert "imagenet/train/<wnid>/*.JPEG" in message


# ----------------------------------------------------------------------------------------------
# The mapper
# ----------------------------------------------------------------------------------------------


def _cfg(*opts):
    return make_tiny_cfg("INPUT.FORMAT", "RGB", *opts)


def _save_png(tmp_path, image: np.ndarray, name="image.png") -> dict:
    path = str(tmp_path / name)
    Image.fromarray(image).save(path)
    return {"file_name": path, "class_id": np.int64(3), "image_id": 7}


def _map(cfg, record, is_train=True, seed=0):
    mapper = ImageClassificationDatasetMapper(cfg, is_train)
    seed_all_rngs(seed)
    return mapper(record)


def _random_image(hw, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def test_mapper_is_registered():
    assert DATASET_MAPPER_REGISTRY.get("ImageClassificationDatasetMapper") is (
        ImageClassificationDatasetMapper
    )
    cfg = _cfg("INPUT.DATASET_MAPPER_NAME", "ImageClassificationDatasetMapper")
    assert isinstance(build_dataset_mapper(cfg, True), ImageClassificationDatasetMapper)


@pytest.mark.parametrize("is_train", [True, False])
def test_mapper_output_fields(tmp_path, is_train):
    record = _save_png(tmp_path, _random_image((50, 70)))
    out = _map(_cfg("INPUT.RANDOM_RESIZED_CROP.SIZE", "32"), record, is_train)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 32, 32)
    assert out["class_id"] == 3 and type(out["class_id"]) is int
    assert (out["height"], out["width"]) == (50, 70)
    assert out["image_id"] == 7 and out["file_name"] == record["file_name"]
    assert "height" not in record  # the input dict is not modified


def test_random_resized_crop_honours_scale_and_ratio():
    height, width = 300, 400
    for scale, ratio in [((0.3, 0.5), (0.5, 2.0)), ((0.05, 0.1), (0.9, 1.1))]:
        rrc = RandomResizedCrop(64, scale, ratio)
        np.random.seed(0)
        areas, ratios = [], []
        for _ in range(300):
            x0, y0, w, h = rrc.crop_box(height, width)
            assert 0 <= x0 and x0 + w <= width and 0 <= y0 and y0 + h <= height
            areas.append(w * h / (height * width))
            ratios.append(w / h)
        # Rounding the sides to pixels moves the area and ratio a little.
        assert scale[0] * 0.97 <= min(areas) and max(areas) <= scale[1] * 1.03
        assert ratio[0] * 0.97 <= min(ratios) and max(ratios) <= ratio[1] * 1.03
        # ... and the whole ranges are used.
        span = scale[1] - scale[0]
        assert min(areas) < scale[0] + 0.1 * span and max(areas) > scale[1] - 0.1 * span
        log_span = math.log(ratio[1] / ratio[0])
        assert math.log(min(ratios) / ratio[0]) < 0.1 * log_span
        assert math.log(ratio[1] / max(ratios)) < 0.1 * log_span


def test_random_resized_crop_falls_back_to_a_centred_clamped_box():
    rrc = RandomResizedCrop(8, (0.99, 1.0), (1.0, 1.0))  # a 1.0-ratio box of 99 % never fits
    np.random.seed(0)
    assert rrc.crop_box(10, 40) == (15, 0, 10, 10)


def test_mapper_crops_a_window_of_the_configured_scale(tmp_path):
    """SCALE 0.25 of a 64x64 image, ratio 1, SIZE 32: the output is an unresized 32x32 window
    of the image (pixels encode their coordinates), possibly mirrored."""
    ys, xs = np.mgrid[:64, :64]
    image = np.stack([xs * 4, ys * 4, np.full_like(xs, 9)], -1).astype(np.uint8)
    record = _save_png(tmp_path, image)
    cfg = _cfg(
        "INPUT.RANDOM_RESIZED_CROP.SIZE", "32",
        "INPUT.RANDOM_RESIZED_CROP.SCALE", "(0.25, 0.25)",
        "INPUT.RANDOM_RESIZED_CROP.RATIO", "(1.0, 1.0)",
    )  # fmt: skip
    origins = set()
    for seed in range(12):
        out = _map(cfg, record, seed=seed)["image"].permute(1, 2, 0).numpy()
        x0, y0 = int(out[:, :, 0].min()) // 4, int(out[0, 0, 1]) // 4
        window = image[y0 : y0 + 32, x0 : x0 + 32]
        assert np.array_equal(out, window) or np.array_equal(out, window[:, ::-1])
        origins.add((x0, y0))
    assert len(origins) > 3  # the window moves with the seed


def test_flip_happens_about_half_the_time(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16, 0] = 255  # left red
    image[:, 16:, 2] = 255  # right blue
    record = _save_png(tmp_path, image)
    cfg = _cfg(
        "INPUT.RANDOM_RESIZED_CROP.SIZE", "32",
        "INPUT.RANDOM_RESIZED_CROP.SCALE", "(1.0, 1.0)",
        "INPUT.RANDOM_RESIZED_CROP.RATIO", "(1.0, 1.0)",
    )  # fmt: skip
    flipped = []
    for seed in range(40):
        out = _map(cfg, record, seed=seed)["image"].permute(1, 2, 0).numpy()
        assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
        flipped.append(not np.array_equal(out, image))
    assert 8 <= sum(flipped) <= 32
    # Under the same seed, the same outcome.
    again = _map(cfg, record, seed=3)["image"].permute(1, 2, 0).numpy()
    assert np.array_equal(again, image[:, ::-1]) == flipped[3]


def test_test_transform_is_the_exact_centre_crop(tmp_path):
    # SIZE 28 / 0.875 = 32 = the shorter side: no resize; the centre 28x28 of 32x44 is at (8, 2).
    image = _random_image((32, 44))
    record = _save_png(tmp_path, image)
    cfg = _cfg("INPUT.RANDOM_RESIZED_CROP.SIZE", "28", "INPUT.RAND_AUGMENT", "rand-m9-n2")
    for seed in (0, 1):
        out = _map(cfg, record, is_train=False, seed=seed)["image"].permute(1, 2, 0).numpy()
        assert np.array_equal(out, image[2:30, 8:36])
    # Portrait: the shorter side is the width.
    record = _save_png(tmp_path, image.transpose(1, 0, 2).copy(), "portrait.png")
    out = _map(cfg, record, is_train=False)["image"].permute(1, 2, 0).numpy()
    assert np.array_equal(out, image.transpose(1, 0, 2)[8:36, 2:30])


@pytest.mark.parametrize("hw", [(300, 500), (500, 300)])
def test_test_transform_sizes_follow_torchvision(hw):
    """Shorter side int(224 / 0.875) = 256, longer int(256 * 5 / 3) = 426 (truncated, not
    rounded to 427), centre crop at round((426 - 224) / 2) = 101."""
    resize, crop = CenterCropResize(224, 0.875).get_transform(np.zeros((*hw, 3), np.uint8))
    assert (resize.new_h, resize.new_w) == ((256, 426) if hw[0] < hw[1] else (426, 256))
    assert (crop.x0, crop.y0, crop.w, crop.h) == (
        (101, 16, 224, 224) if hw[0] < hw[1] else (16, 101, 224, 224)
    )


def _bicubic(image: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))


def test_test_transform_resizes_the_shorter_side_first(tmp_path):
    """64x88, SIZE 28 / 0.875 = 32: bicubic to 32x44, then the centre 28x28 at (8, 2)."""
    image = _random_image((64, 88))
    record = _save_png(tmp_path, image)
    out = _map(_cfg("INPUT.RANDOM_RESIZED_CROP.SIZE", "28"), record, is_train=False)
    expected = _bicubic(image, 32, 44)[2:30, 8:36]
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), expected)


def test_train_crop_is_resized_bicubic(tmp_path):
    image = _random_image((64, 64))
    record = _save_png(tmp_path, image)
    cfg = _cfg(
        "INPUT.RANDOM_RESIZED_CROP.SIZE", "24",
        "INPUT.RANDOM_RESIZED_CROP.SCALE", "(1.0, 1.0)",
        "INPUT.RANDOM_RESIZED_CROP.RATIO", "(1.0, 1.0)",
    )  # fmt: skip
    expected = _bicubic(image, 24, 24)
    for seed in range(2):
        out = _map(cfg, record, seed=seed)["image"].permute(1, 2, 0).numpy()
        assert np.array_equal(out, expected) or np.array_equal(out, expected[:, ::-1])


RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
WHOLE_IMAGE = (
    "INPUT.RANDOM_RESIZED_CROP.SIZE", "40",
    "INPUT.RANDOM_RESIZED_CROP.SCALE", "(1.0, 1.0)",
    "INPUT.RANDOM_RESIZED_CROP.RATIO", "(1.0, 1.0)",
)  # fmt: skip


def test_rand_augment_changes_the_image_reproducibly(tmp_path):
    ys, xs = np.mgrid[:40, :40]
    image = np.stack([xs * 6, ys * 6, (xs + ys) * 3], -1).astype(np.uint8)
    record = _save_png(tmp_path, image)
    plain = _cfg(*WHOLE_IMAGE)
    augmented = _cfg(*WHOLE_IMAGE, "INPUT.RAND_AUGMENT", RAND_AUGMENT)
    changed, outputs = 0, []
    for seed in range(6):
        reference = _map(plain, record, seed=seed)["image"]
        out = _map(augmented, record, seed=seed)["image"]
        assert torch.equal(out, _map(augmented, record, seed=seed)["image"])  # reproducible
        changed += not torch.equal(out, reference)
        outputs.append(out)
    assert changed >= 3
    assert len({o.numpy().tobytes() for o in outputs}) >= 4  # seeds draw different ops


def test_rand_augment_draws_from_python_random(tmp_path):
    """The loader seeds python's, numpy's and torch's generators; RandAugment must depend on
    them (python's ``random`` decides whether each op applies)."""
    record = _save_png(tmp_path, _random_image((40, 40)))
    cfg = _cfg(*WHOLE_IMAGE, "INPUT.RAND_AUGMENT", RAND_AUGMENT)
    mapper = ImageClassificationDatasetMapper(cfg, True)
    results = set()
    for py_seed in range(6):
        seed_all_rngs(0)
        random.seed(py_seed)
        results.add(mapper(record)["image"].numpy().tobytes())
    assert len(results) > 1


@pytest.mark.parametrize("rand_augment", ["", RAND_AUGMENT])
@pytest.mark.parametrize("is_train", [True, False])
def test_bgr_is_rgb_reversed(tmp_path, rand_augment, is_train):
    image = _random_image((40, 52))
    image[:, :, 0] //= 2  # channels with different statistics
    record = _save_png(tmp_path, image)
    opts = (*WHOLE_IMAGE[:2], "INPUT.RAND_AUGMENT", rand_augment)
    rgb = _cfg(*opts)
    bgr = _cfg(*opts)
    bgr.INPUT.FORMAT = "BGR"
    bgr.MODEL.PIXEL_MEAN = list(rgb.MODEL.PIXEL_MEAN)[::-1]
    for seed in range(3):
        out_rgb = _map(rgb, record, is_train, seed)["image"]
        out_bgr = _map(bgr, record, is_train, seed)["image"]
        assert torch.equal(out_bgr, out_rgb.flip(0))
        assert not torch.equal(out_bgr, out_rgb)


def test_rand_augment_hparams_as_timm():
    """Fill colour = the pixel mean as RGB ints (whatever INPUT.FORMAT), translation 45 %."""
    assert rand_augment_hparams(224, [1.4, 2.0, 255.6], "RGB")["img_mean"] == (1, 2, 255)
    hparams = rand_augment_hparams(200, [255.6, 2.0, 1.4], "BGR")
    assert hparams["img_mean"] == (1, 2, 255) and hparams["translate_const"] == 90
    assert hparams["interpolation"] == Image.BICUBIC


def test_mapper_rejects_other_formats():
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        ImageClassificationDatasetMapper(_cfg("INPUT.FORMAT", "L"), True)


def test_mapper_on_the_generated_classification_data(synth_root):
    cfg = _cfg("INPUT.RANDOM_RESIZED_CROP.SIZE", "48", "INPUT.RAND_AUGMENT", RAND_AUGMENT)
    dicts = DatasetCatalog.get(f"{TEST_PREFIX}_cls_train")[:3]
    for is_train in (True, False):
        for d in dicts:
            out = _map(cfg, d, is_train)
            assert out["image"].shape == (3, 48, 48) and out["class_id"] == d["class_id"]


# ----------------------------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------------------------


def _evaluate(logits: list[list[float]], targets: list[int], **kwargs) -> dict:
    evaluator = ClassificationEvaluator("hand_made", **kwargs)
    evaluator.reset()
    for i, (row, target) in enumerate(zip(logits, targets)):
        evaluator.process(
            [{"class_id": target, "image_id": i, "file_name": f"{i}.jpg"}],
            [{"classification": torch.tensor(row)}],
        )
    return evaluator.evaluate()


def test_evaluator_top1_top5():
    logits = [
        [0.0, 1.0, 9.0, 2.0, 3.0, 4.0, 5.0],  # target 2: rank 1
        [3.0, 1.0, 2.0, 9.0, 8.0, 7.0, 0.0],  # target 0: rank 4
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # target 6: rank 7
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # target 4: rank 5
    ]
    results = _evaluate(logits, [2, 0, 6, 4])
    assert list(results) == ["classification"]
    assert results["classification"]["top1"] == pytest.approx(25.0)
    assert results["classification"]["top5"] == pytest.approx(75.0)


def test_evaluator_fewer_classes_than_k(tmp_path):
    logits = [[0.1, 0.5, 0.2], [2.0, -1.0, 0.0], [0.0, 0.0, 3.0]]
    results = _evaluate(logits, [0, 0, 2], output_dir=str(tmp_path), topk=(1, 2, 5))
    assert results["classification"] == pytest.approx(
        {"top1": 200 / 3, "top2": 200 / 3, "top5": 100}
    )
    with open(tmp_path / "classification_predictions.json") as f:
        saved = json.load(f)
    assert [p["class_id"] for p in saved] == [0, 0, 2]
    assert saved[0]["topk"] == [1, 2, 0] and saved[0]["file_name"] == "0.jpg"
    assert sum(saved[0]["scores"]) == pytest.approx(1.0)


def test_evaluator_gathers_all_processes(monkeypatch):
    from detectron2.utils import comm

    other_rank = [{"class_id": 1, "topk": [0, 1], "scores": [0.6, 0.4]}]
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, other_rank])
    evaluator = ClassificationEvaluator("two_ranks", topk=(1, 2))
    evaluator.process([{"class_id": 0}], [{"classification": torch.tensor([2.0, 1.0])}])
    assert evaluator.evaluate()["classification"] == {"top1": 50.0, "top2": 100.0}
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert evaluator.evaluate() == {}


def test_evaluator_without_images_raises():
    evaluator = ClassificationEvaluator("empty")
    evaluator.reset()
    with pytest.raises(RuntimeError, match="no predictions"):
        evaluator.evaluate()


def test_evaluator_rejects_batched_logits():
    evaluator = ClassificationEvaluator("bad")
    with pytest.raises(ValueError, match=r"\(C,\)"):
        evaluator.process([{"class_id": 0}], [{"classification": torch.zeros(2, 5)}])


def test_evaluator_is_built_for_classification_datasets(tmp_path):
    evaluator = build_evaluator(make_tiny_cfg(), "glid_synth_cls_val", str(tmp_path))
    assert isinstance(evaluator, ClassificationEvaluator)
    assert evaluator.output_dir == str(tmp_path)


# ----------------------------------------------------------------------------------------------
# Training fractions
# ----------------------------------------------------------------------------------------------


def _dicts(n: int, root: str = "/data/imagenet/train") -> list[dict]:
    return [{"file_name": f"{root}/c{i % 7}/img{i}.JPEG", "image_id": i} for i in range(n)]


def _names(dicts: list[dict]) -> list[str]:
    return [d["file_name"] for d in dicts]


def test_subset_is_deterministic_nested_and_ordered():
    dicts = _dicts(1000)
    for seed in (0, 1, 2):
        subsets = {f: subset_dataset_dicts(dicts, f, seed) for f in (0.1, 0.2, 0.5)}
        assert subsets[0.1] == subset_dataset_dicts(_dicts(1000), 0.1, seed)
        assert set(_names(subsets[0.1])) < set(_names(subsets[0.2])) < set(_names(subsets[0.5]))
        for subset in subsets.values():
            ids = [d["image_id"] for d in subset]
            assert ids == sorted(ids)
        # Not simply the first images.
        assert [d["image_id"] for d in subsets[0.1]] != list(range(100))


@pytest.mark.parametrize("n", [1, 3, 10, 33, 1000])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_subset_size(n, fraction):
    assert len(subset_dataset_dicts(_dicts(n), fraction, 0)) == max(1, round(fraction * n))


def test_subset_full_and_empty():
    dicts = _dicts(5)
    assert subset_dataset_dicts(dicts, 1.0, 0) is dicts
    assert subset_dataset_dicts([], 0.5, 0) == []


def test_subset_ignores_input_order_and_location():
    dicts = _dicts(200)
    shuffled = dicts[:]
    random.Random(0).shuffle(shuffled)
    chosen = set(_names(subset_dataset_dicts(dicts, 0.3, 5)))
    assert set(_names(subset_dataset_dicts(shuffled, 0.3, 5))) == chosen
    elsewhere = subset_dataset_dicts(_dicts(200, "/mnt/other/imagenet/train"), 0.3, 5)
    assert [d["image_id"] for d in elsewhere] == [
        d["image_id"] for d in subset_dataset_dicts(dicts, 0.3, 5)
    ]


def test_subset_depends_on_the_seed():
    dicts = _dicts(200)
    subsets = {tuple(_names(subset_dataset_dicts(dicts, 0.1, seed))) for seed in range(4)}
    assert len(subsets) == 4


def test_subset_is_the_same_in_every_process():
    """Not python's salted ``hash``: other hash seeds in fresh interpreters give the same."""
    script = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('subset', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "dicts = [{'file_name': f'/d/c{i % 7}/img{i}.JPEG'} for i in range(300)]\n"
        "print(json.dumps([d['file_name'] for d in m.subset_dataset_dicts(dicts, 0.1, 3)]))\n"
    )
    module = os.path.join(REPO_ROOT, "glid", "data", "subset.py")
    expected = _names(subset_dataset_dicts(_dicts(300, "/d"), 0.1, 3))
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run(
            [sys.executable, "-c", script, module], env=env, capture_output=True, check=True
        )
        assert json.loads(out.stdout) == expected


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, math.nan])
def test_subset_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="DATASETS.TRAIN_FRACTION"):
        subset_dataset_dicts(_dicts(10), fraction, 0)


def _loader_cfg(*opts):
    return make_tiny_cfg(
        "SEED", "0",
        "SOLVER.IMS_PER_BATCH", "2",
        "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.ASPECT_RATIO_GROUPING", "False",
        *opts,
    )  # fmt: skip


def _files_seen(loader, batches: int) -> set[str]:
    seen = set()
    for _, batch in zip(range(batches), loader):
        seen.update(d["file_name"] for d in batch)
    return seen


def test_train_fraction_through_the_loader(synth_root, caplog):
    train = f"{TEST_PREFIX}_cls_train"
    dicts = DatasetCatalog.get(train)
    assert len(dicts) == 8
    cfg = _loader_cfg(
        "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TRAIN_FRACTION", "0.5",
        "DATASETS.TRAIN_FRACTION_SEED", "1",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="glid.engine.resume"):
        loader = build_train_loader(cfg, mapper=lambda d: d)
    expected = _names(subset_dataset_dicts(dicts, 0.5, 1))
    assert len(expected) == 4
    assert _names(loader.dataset) == expected
    assert _files_seen(loader, 12) == set(expected)
    assert f"using 4 of 8 images of {train} (DATASETS.TRAIN_FRACTION=0.5)" in caplog.text
    # Other training seeds, the same images.
    cfg.SEED = 7
    assert _names(build_train_loader(cfg, mapper=lambda d: d).dataset) == expected
    # Fraction 1: all images.
    cfg.DATASETS.TRAIN_FRACTION = 1.0
    assert _files_seen(build_train_loader(cfg, mapper=lambda d: d), 12) == set(_names(dicts))


def test_train_fraction_applies_to_each_dataset(synth_root):
    names = (f"{TEST_PREFIX}_cls_train", f"{TEST_PREFIX}_cls_val")
    fraction, seed = 0.25, 0
    cfg = _loader_cfg(
        "DATASETS.TRAIN", str(names),
        "DATASETS.TRAIN_FRACTION", str(fraction),
        "DATASETS.TRAIN_FRACTION_SEED", str(seed),
    )  # fmt: skip
    per_dataset = [subset_dataset_dicts(DatasetCatalog.get(n), fraction, seed) for n in names]
    assert [len(p) for p in per_dataset] == [2, 1]
    expected = [f for p in per_dataset for f in _names(p)]
    pooled = subset_dataset_dicts([d for n in names for d in DatasetCatalog.get(n)], fraction, seed)
    assert set(_names(pooled)) != set(expected)  # the test tells the two apart
    loader = build_train_loader(cfg, mapper=lambda d: d)
    assert _names(loader.dataset) == expected
