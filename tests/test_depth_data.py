"""Depth data: the NYUv2 mapper (alignment, scaling, invalid pixels, errors), the NYUv2
registration and datasets/prepare_nyuv2.py on a fake labeled .mat."""

import importlib.util
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from glid.data.dataset_mappers import DATASET_MAPPER_REGISTRY, DepthDatasetMapper
from glid.data.dataset_mappers.depth_mapper import DepthColorAugmentation
from tests.utils import make_tiny_cfg

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_pair(tmp_path, rgb, depth_u16, name="pair"):
    img = tmp_path / f"{name}_rgb.png"
    dep = tmp_path / f"{name}_depth.png"
    Image.fromarray(rgb).save(img)
    Image.fromarray(depth_u16).save(dep)  # uint16 -> 16-bit PNG
    return {
        "file_name": str(img),
        "depth_file_name": str(dep),
        "height": rgb.shape[0],
        "width": rgb.shape[1],
    }


def _coded_pair(tmp_path, h=40, w=56):
    """Red channel = 2 * column + 1 (odd, unique per column), green = 3 * row; depth in mm =
    100 * red, so aligned outputs satisfy 10 * depth == red (metres, scale 1000)."""
    cols = np.arange(w)[None, :].repeat(h, 0)
    rows = np.arange(h)[:, None].repeat(w, 1)
    rgb = np.stack([2 * cols + 1, 3 * rows, np.full((h, w), 50)], -1).astype(np.uint8)
    depth = rgb[..., 0].astype(np.uint16) * 100
    return rgb, depth


def _mapper(augs, is_train=True, scale=1000.0):
    return DepthDatasetMapper(is_train, augmentations=augs, image_format="RGB", depth_scale=scale)


@pytest.mark.parametrize(
    "augs",
    [
        [T.RandomFlip(prob=1.0)],
        [T.RandomCrop("absolute", (24, 32))],
        [T.RandomCrop("absolute", (24, 32)), T.RandomFlip(prob=1.0)],
    ],
    ids=["flip", "crop", "crop+flip"],
)
def test_depth_follows_image_through_flip_and_crop(tmp_path, augs):
    rgb, depth = _coded_pair(tmp_path)
    d = _write_pair(tmp_path, rgb, depth)
    for seed in range(3):
        np.random.seed(seed)
        out = _mapper(augs)(d)
        image, dep = out["image"], out["depth"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert dep.dtype == torch.float32 and dep.shape == image.shape[1:]
        np.testing.assert_allclose(10 * dep.numpy(), image[0].numpy(), rtol=1e-6)
        if any(isinstance(a, T.RandomFlip) for a in augs):  # red decreases along a flipped row
            assert (np.diff(image[0].numpy().astype(int), axis=1) < 0).all()
        if any(isinstance(a, T.RandomCrop) for a in augs):
            assert tuple(dep.shape) == (24, 32)


def test_rotation_keeps_alignment_and_never_blends_invalid(tmp_path):
    h, w = 64, 80
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = 200
    depth = np.full((h, w), 2000, np.uint16)  # 2 m
    depth[20:44, 30:50] = 5000  # a 5 m block, also bright green in the image
    rgb[20:44, 30:50, 1] = 255
    depth[::7, ::5] = 0  # scattered invalid pixels
    d = _write_pair(tmp_path, rgb, depth)
    rotation = T.RandomRotation([10.0, 10.0], expand=False, sample_style="range")
    out = _mapper([rotation])(d)
    dep, image = out["depth"].numpy(), out["image"].numpy()
    assert dep.shape == (h, w)
    # Nearest neighbour: only the source values (0, 2 m, 5 m), no interpolated mixtures.
    assert set(np.unique(dep).tolist()) <= {0.0, 2.0, 5.0}
    assert (dep == 0).sum() > 0 and (dep == 5.0).sum() > 300
    # The 5 m block lies where the image is green (bilinear edges aside).
    green = image[1] > 200
    block = dep == 5.0
    assert (block & green).sum() / block.sum() > 0.9
    # Rotated in from outside the canvas: invalid depth.
    assert dep[0, 0] == 0 and dep[-1, -1] == 0


def test_sixteen_bit_scaling_and_zero_stays_invalid(tmp_path):
    rgb = np.full((6, 8, 3), 9, np.uint8)
    depth = np.array([[0, 1, 999, 1000, 65535, 12345, 0, 3]] * 6, np.uint16)
    d = _write_pair(tmp_path, rgb, depth)
    out = _mapper([], scale=1000.0)(d)
    np.testing.assert_allclose(out["depth"][0].numpy(), depth[0] / 1000.0, rtol=1e-6)
    assert (out["depth"][:, [0, 6]] == 0).all()
    out = _mapper([], scale=256.0)(d)
    np.testing.assert_allclose(out["depth"][0].numpy(), depth[0] / 256.0, rtol=1e-6)


def test_errors_name_the_file_and_sizes(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    d = _write_pair(tmp_path, rgb, np.ones((10, 11), np.uint16), "mismatch")
    with pytest.raises(ValueError, match=r"mismatch_depth\.png.*10x11.*10x12"):
        _mapper([])(d)
    d = _write_pair(tmp_path, rgb, np.ones((10, 12), np.uint16), "eight")
    Image.fromarray(np.ones((10, 12), np.uint8)).save(d["depth_file_name"])
    with pytest.raises(ValueError, match=r"eight_depth\.png.*16-bit"):
        _mapper([])(d)


def test_test_mode_reads_the_image_only(tmp_path):
    rgb, depth = _coded_pair(tmp_path)
    d = _write_pair(tmp_path, rgb, depth)
    os.remove(d["depth_file_name"])  # not read in test mode
    out = DepthDatasetMapper(False, augmentations=[], image_format="RGB")(d)
    assert "depth" not in out and out["depth_file_name"] == d["depth_file_name"]
    assert (out["height"], out["width"]) == rgb.shape[:2]
    assert tuple(out["image"].shape) == (3,) + rgb.shape[:2]
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), rgb)


def test_color_aug_changes_the_image_only(tmp_path):
    rgb, depth = _coded_pair(tmp_path)
    d = _write_pair(tmp_path, rgb, depth)
    np.random.seed(0)
    out = _mapper([DepthColorAugmentation(prob=1.0)])(d)
    assert not torch.equal(out["image"], torch.as_tensor(rgb).permute(2, 0, 1))
    np.testing.assert_allclose(out["depth"].numpy(), depth / 1000.0, rtol=1e-6)


def test_mapper_from_config_on_generated_data(synth_root):
    cfg = make_tiny_cfg(
        "DATASETS.TRAIN", "('glid_test_depth_train',)",
        "INPUT.DATASET_MAPPER_NAME", "DepthDatasetMapper",
        "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(96, 128)",
    )  # fmt: skip
    assert DATASET_MAPPER_REGISTRY.get("DepthDatasetMapper") is DepthDatasetMapper
    mapper = DepthDatasetMapper(cfg, True)
    kinds = [type(a) for a in mapper.augmentations.augs]
    assert kinds == [T.RandomRotation, T.RandomCrop, T.RandomFlip, DepthColorAugmentation]
    dicts = DatasetCatalog.get("glid_test_depth_train")
    scale = MetadataCatalog.get("glid_test_depth_train").depth_scale
    for d in dicts[:3]:
        out = mapper(d)
        assert tuple(out["image"].shape) == (3, 96, 128) and tuple(out["depth"].shape) == (96, 128)
        dep = out["depth"].numpy()
        assert dep.max() <= 65535 / scale and 0.5 < dep[dep > 0].mean() < 10.0
    raw = np.asarray(Image.open(dicts[0]["depth_file_name"]))
    plain = DepthDatasetMapper(True, augmentations=[], image_format="RGB", depth_scale=scale)
    np.testing.assert_allclose(plain(dicts[0])["depth"].numpy(), raw / scale, rtol=1e-6)
    test_mapper = DepthDatasetMapper(cfg, False)
    assert test_mapper.augmentations.augs == []
    out = test_mapper(dicts[0])
    assert "depth" not in out and tuple(out["image"].shape[1:]) == raw.shape
    cfg.INPUT.DEPTH_ROTATION_DEGREES, cfg.INPUT.DEPTH_COLOR_AUG_PROB = 0.0, 0.0
    cfg.INPUT.CROP.ENABLED = False
    assert [type(a) for a in DepthDatasetMapper(cfg, True).augmentations.augs] == [T.RandomFlip]
    MetadataCatalog.get("glid_test_depth_noscale").set(evaluator_type="depth")
    cfg.DATASETS.TRAIN = ("glid_test_depth_noscale",)
    with pytest.raises(ValueError, match="depth_scale"):
        DepthDatasetMapper(cfg, True)


# ---------------------------------------------------------------------------------------------
# NYUv2: prepare script and registration
# ---------------------------------------------------------------------------------------------


def _prepare_module():
    path = os.path.join(REPO_ROOT, "datasets", "prepare_nyuv2.py")
    spec = importlib.util.spec_from_file_location("prepare_nyuv2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_labeled_mat(tmp_path, n=7, h=12, w=20):
    """A labeled .mat as MATLAB v7.3 stores it: images (N, 3, W, H), depths (N, W, H)."""
    h5py = pytest.importorskip("h5py")
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    images_hwc = np.zeros((n, h, w, 3), np.uint8)
    depths_hw = np.zeros((n, h, w))
    for i in range(n):
        # Smooth, distinctive patterns (JPEG-safe): red ramps along columns, green along rows.
        images_hwc[i, ..., 0] = np.linspace(0, 240, w)[None, :]
        images_hwc[i, ..., 1] = np.linspace(0, 240, h)[:, None]
        images_hwc[i, ..., 2] = 20 * i
        depths_hw[i] = 0.5 + 0.1 * np.arange(w)[None, :] + 0.01 * np.arange(h)[:, None] + i
    depths_hw[0, 0, 0] = 0.0
    depths_hw[0, 0, 1] = np.nan
    depths_hw[0, 0, 2] = -1.0  # no measurement
    depths_hw += rng.uniform(-1e-5, 1e-5, depths_hw.shape) * (depths_hw > 0)
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(mat, "w") as f:
        f["images"] = images_hwc.transpose(0, 3, 2, 1)  # (N, 3, W, H)
        f["depths"] = depths_hw.transpose(0, 2, 1).astype(np.float32)  # (N, W, H)
        # sceneTypes: a MATLAB cell of strings = references to (len, 1) uint16 char arrays.
        refs = f.create_dataset("sceneTypes", (1, n), dtype=h5py.ref_dtype)
        for i in range(n):
            name = "kitchen" if i % 2 == 0 else "bath"
            chars = np.array([[ord(c)] for c in name], np.uint16)
            refs[0, i] = f.create_dataset(f"#refs#/s{i}", data=chars).ref
    splits = tmp_path / "splits.mat"
    savemat(
        splits, {"trainNdxs": np.array([[1], [3], [4]]), "testNdxs": np.array([[2], [5], [6], [7]])}
    )
    return str(mat), str(splits), images_hwc, depths_hw


def test_prepare_nyuv2_round_trip(tmp_path):
    prepare = _prepare_module()
    mat, splits, images, depths = _fake_labeled_mat(tmp_path)
    root = tmp_path / "data"
    counts = prepare.prepare_nyuv2(mat, splits, str(root))
    assert counts == {"train": 3, "test": 4}
    nyu = root / "nyu_depth_v2"
    test_lines = (nyu / "nyudepthv2_test_files_with_gt.txt").read_text().splitlines()
    assert len(test_lines) == 4 and test_lines[0].split()[2] == "518.8579"
    from glid.data.datasets.register_nyuv2 import load_nyuv2

    for split, wanted in (("train", [0, 2, 3]), ("test", [1, 4, 5, 6])):
        dicts = load_nyuv2(str(nyu), split)
        assert len(dicts) == len(wanted)
        for d, i in zip(dicts, wanted):
            assert f"/{'kitchen' if i % 2 == 0 else 'bath'}/rgb_{i + 1:05d}.jpg" in d["file_name"]
            assert (d["height"], d["width"]) == (12, 20)
            rgb = np.asarray(Image.open(d["file_name"]).convert("RGB")).astype(int)
            assert np.abs(rgb - images[i]).mean() < 4  # JPEG, but not transposed / swapped
            dep = np.asarray(Image.open(d["depth_file_name"]))
            assert dep.dtype == np.uint16 and dep.shape == (12, 20)
            expected = np.rint(np.clip(np.nan_to_num(depths[i]), 0, None) * 1000)
            np.testing.assert_array_equal(dep, expected)
    first_train = np.asarray(Image.open(load_nyuv2(str(nyu), "train")[0]["depth_file_name"]))
    assert (first_train[0, :3] == 0).all()  # 0, NaN and negative -> invalid
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare.prepare_nyuv2(mat, splits, str(root))
    assert prepare.prepare_nyuv2(mat, splits, str(root), overwrite=True) == counts


def test_nyuv2_registration(tmp_path):
    from glid.data.datasets import nyuv2_dataset_names, register_nyuv2

    assert {"nyuv2_depth_train", "nyuv2_depth_test"} <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("nyuv2_depth_test")
    assert meta.evaluator_type == "depth" and meta.eigen_crop is True
    assert (meta.depth_scale, meta.min_depth, meta.max_depth) == (1000.0, 1e-3, 10.0)
    prefix = "glid_test_nyuv2_fake"
    names = register_nyuv2(str(tmp_path), prefix=prefix)
    assert names == nyuv2_dataset_names(prefix) == [f"{prefix}_train", f"{prefix}_test"]
    with pytest.raises(
        FileNotFoundError, match=r"nyudepthv2_train_files_with_gt\.txt.*prepare_nyuv2"
    ):
        DatasetCatalog.get(f"{prefix}_train")
    # A BTS-style tree: training pairs under sync/, test pairs under official_splits/test/.
    nyu = tmp_path / "nyu_depth_v2"
    for sub, split_name in (("sync", "train"), (os.path.join("official_splits", "test"), "test")):
        (nyu / sub / "kitchen_0001").mkdir(parents=True)
        Image.fromarray(np.zeros((6, 9, 3), np.uint8)).save(
            nyu / sub / "kitchen_0001" / "rgb_00001.jpg"
        )
        Image.fromarray(np.ones((6, 9), np.uint16)).save(
            nyu / sub / "kitchen_0001" / "sync_depth_00001.png"
        )
        (nyu / f"nyudepthv2_{split_name}_files_with_gt.txt").write_text(
            "/kitchen_0001/rgb_00001.jpg /kitchen_0001/sync_depth_00001.png 518.8579\n"
        )
    for split, sub in (("train", "sync"), ("test", os.path.join("official_splits", "test"))):
        (d,) = DatasetCatalog.get(f"{prefix}_{split}")
        assert d["file_name"] == str(nyu / sub / "kitchen_0001" / "rgb_00001.jpg")
        assert d["depth_file_name"] == str(nyu / sub / "kitchen_0001" / "sync_depth_00001.png")
        assert (d["height"], d["width"], d["focal_length"]) == (6, 9, 518.8579)
    os.remove(nyu / "sync" / "kitchen_0001" / "rgb_00001.jpg")
    with pytest.raises(FileNotFoundError, match=r"rgb_00001\.jpg.*prepare_nyuv2"):
        DatasetCatalog.get(f"{prefix}_train")
