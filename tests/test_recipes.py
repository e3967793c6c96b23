"""The full-size configs: every one loads; the pre-training and ImageNet ones carry the paper's
recipe (Tab. 5) and our documented choices; the Swin-B pre-training model hands off to every
ImageNet classification model with exactly the head new."""

import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY

import glid
from tests.utils import REPO_ROOT

CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(REPO_ROOT, "configs", "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)
IMAGENET_EPOCH = 1281167  # training images


def _cfg(name: str, *opts):
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", name))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads(path):
    cfg = _cfg(os.path.basename(path))
    assert cfg.MODEL.META_ARCHITECTURE == "GLID"
    assert os.path.basename(path).startswith(("ade20k_", "coco_", "imagenet_", "nyuv2_"))


def _epochs(cfg, iters: int) -> float:
    return iters * cfg.SOLVER.IMS_PER_BATCH / IMAGENET_EPOCH


def test_pretraining_recipe_is_tab5():
    cfg = _cfg("imagenet_pretrain_glid.yaml")
    s = cfg.SOLVER
    assert cfg.MODEL.GLID.TASK == "mim" and cfg.MODEL.GLID.MIM.USE_DECODER
    assert s.OPTIMIZER == "ADAMW" and tuple(s.BETAS) == (0.9, 0.95)
    assert s.IMS_PER_BATCH == 1024
    assert s.BASE_LR == pytest.approx(1.5e-4 * 1024 / 256)
    assert s.WEIGHT_DECAY == 0.05 and s.BACKBONE_MULTIPLIER == 1.0
    assert s.LR_SCHEDULER_NAME == "WarmupCosineLR"
    assert _epochs(cfg, s.WARMUP_ITERS) == pytest.approx(40, abs=0.05)
    assert _epochs(cfg, s.MAX_ITER) == pytest.approx(800, abs=0.5)
    assert cfg.MODEL.GLID.MIM.XAVIER_INIT and cfg.MODEL.GLID.MIM.UNIT_SIZE == 32
    assert cfg.INPUT.RANDOM_RESIZED_CROP.SIZE == 224
    assert not _cfg("imagenet_pretrain_encoder_only.yaml").MODEL.GLID.MIM.USE_DECODER


@pytest.mark.parametrize("setting", ["", "_encoder"])
def test_classification_recipes(setting):
    features = "encoder" if setting else "cls_query"
    lin = _cfg(f"imagenet_cls_linprobe_glid{setting}.yaml")
    assert lin.MODEL.GLID.CLASSIFICATION.FEATURES == features
    assert lin.MODEL.GLID.CLASSIFICATION.LINEAR_PROBE
    assert lin.SOLVER.OPTIMIZER == "LARS" and lin.SOLVER.WEIGHT_DECAY == 0.0
    assert lin.SOLVER.BASE_LR == pytest.approx(0.1 * lin.SOLVER.IMS_PER_BATCH / 256)
    assert _epochs(lin, lin.SOLVER.MAX_ITER) == pytest.approx(90, abs=0.1)
    ft = _cfg(f"imagenet_cls_finetune_glid{setting}.yaml")
    assert ft.MODEL.GLID.CLASSIFICATION.FEATURES == features
    assert not ft.MODEL.GLID.CLASSIFICATION.LINEAR_PROBE
    assert ft.SOLVER.LAYER_DECAY < 1.0 and ft.SOLVER.BACKBONE_MULTIPLIER == 1.0
    assert ft.MODEL.SWIN.DROP_PATH_RATE > 0 and ft.INPUT.RAND_AUGMENT
    assert ft.MODEL.GLID.CLASSIFICATION.MIXUP > 0 and ft.MODEL.GLID.CLASSIFICATION.CUTMIX > 0
    assert _epochs(ft, ft.SOLVER.MAX_ITER) == pytest.approx(100, abs=0.1)


def _shapes(name: str) -> dict:
    cfg = _cfg(name, "MODEL.DEVICE", "cpu")
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_swin_b_pretraining_fits_every_imagenet_classification_model():
    pretrained = _shapes("imagenet_pretrain_glid.yaml")
    assert pretrained["head.weight"] == (3 * 32 * 32, 256)
    for name in (
        "imagenet_cls_linprobe_glid.yaml",
        "imagenet_cls_finetune_glid.yaml",
        "imagenet_cls_linprobe_glid_encoder.yaml",
        "imagenet_cls_finetune_glid_encoder.yaml",
    ):
        model = _shapes(name)
        own = {k for k in model if k.startswith(("head.", "task."))}
        assert {k for k in model if k.startswith("head.")} == {"head.weight", "head.bias"}
        assert {k: v for k, v in model.items() if k not in own} == {
            k: v for k, v in pretrained.items() if not k.startswith("head.")
        }, name
        width = 1024 if "encoder" in name else 256
        assert model["head.weight"] == (1000, width), name


def test_pose_recipe_is_tab8():
    cfg = _cfg("coco_pose_glid.yaml")
    s, pose = cfg.SOLVER, cfg.MODEL.GLID.POSE
    assert cfg.MODEL.GLID.TASK == "pose" and cfg.MODEL.GLID.NUM_QUERIES == pose.NUM_KEYPOINTS == 17
    assert s.OPTIMIZER == "ADAMW" and s.BASE_LR == 5e-4 and s.LAYER_DECAY == 0.8
    assert s.BACKBONE_MULTIPLIER == 1.0 and s.IMS_PER_BATCH == 512 and s.WEIGHT_DECAY == 0.1
    assert cfg.MODEL.SWIN.DROP_PATH_RATE == 0.3
    persons = 149813  # COCO train2017 persons with a labelled keypoint
    epochs = [it * s.IMS_PER_BATCH / persons for it in (*s.STEPS, s.MAX_ITER)]
    assert epochs == pytest.approx([170, 200, 210], abs=0.01)
    assert s.LR_SCHEDULER_NAME == "WarmupMultiStepLR" and s.GAMMA == 0.1
    assert tuple(cfg.INPUT.POSE.CROP_SIZE) == (256, 192) and pose.FLIP_TEST
    assert cfg.INPUT.POSE.FLIP_PROB > 0 and cfg.INPUT.POSE.HALF_BODY_PROB > 0
    assert cfg.INPUT.POSE.ROTATION_PROB > 0 and cfg.INPUT.POSE.SCALE_FACTOR > 0
    assert cfg.INPUT.POSE.COLOR_JITTER > 0
