"""Depth: the bins head, the SILog loss, inference sizes and the depth evaluator, on hand-set
inputs, and the NYUv2 recipe."""

import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import ImageList
from PIL import Image


def depth_module():
    from glid.modeling.tasks import depth

    return depth


def make_task(**kwargs):
    args = {"min_depth": 1e-3, "max_depth": 10.0, "deep_supervision": True}
    args.update(kwargs)
    return depth_module().DepthEstimationTask(**args)


# ---------------------------------------------------------------- bins head


def test_bin_centres_uniform_widths_tile_the_range():
    d = depth_module()
    centres = d.bin_centres(torch.zeros(1, 4), 2.0, 10.0)
    assert torch.allclose(centres, torch.tensor([[3.0, 5.0, 7.0, 9.0]]))


def test_bin_widths_sum_to_the_range():
    d = depth_module()
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    centres = d.bin_centres(logits, 0.5, 4.0)
    widths = logits.softmax(-1) * 3.5
    # Edges from centres: the last edge is max, the first is min.
    last_edge = centres[:, -1] + widths[:, -1] / 2
    first_edge = centres[:, 0] - widths[:, 0] / 2
    assert torch.allclose(last_edge, torch.full((3,), 4.0), atol=1e-5)
    assert torch.allclose(first_edge, torch.full((3,), 0.5), atol=1e-5)
    assert torch.all(centres[:, 1:] > centres[:, :-1])


def test_one_dominant_query_gives_its_centre():
    d = depth_module()
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    centres = d.bin_centres(logits, 1e-3, 10.0)
    embed = torch.zeros(1, 3, 2)
    embed[0, 1, 0] = 100.0  # query 1 wins everywhere (features are positive in channel 0)
    features = torch.ones(1, 2, 4, 5)
    depth = d.bins_depth(logits, embed, features, 1e-3, 10.0)
    assert depth.shape == (1, 1, 4, 5)
    assert torch.allclose(depth, centres[0, 1].expand(1, 1, 4, 5))


def test_uniform_probabilities_give_the_mean_of_the_centres():
    d = depth_module()
    logits = torch.tensor([[0.3, -2.0, 1.5, 0.0]])
    centres = d.bin_centres(logits, 1e-3, 10.0)
    depth = d.bins_depth(logits, torch.zeros(1, 4, 8), torch.randn(1, 8, 3, 3), 1e-3, 10.0)
    assert torch.allclose(depth, centres.mean().expand(1, 1, 3, 3))


def test_predictions_split_the_head_answers():
    task = make_task(min_depth=1.0, max_depth=5.0)
    answers = {"bin_logit": torch.zeros(2, 4, 1), "bin_embed": torch.zeros(2, 4, 6)}
    out = task.predictions(answers, torch.randn(2, 6, 8, 8), None)
    assert out["pred_depth"].shape == (2, 1, 8, 8)
    assert torch.allclose(out["pred_depth"], torch.full((2, 1, 8, 8), 3.0))


# ---------------------------------------------------------------- SILog


def test_silog_by_hand():
    d = depth_module()
    pred = torch.tensor([1.0, 2.0, 4.0, 1.0])
    gt = torch.tensor([1.0, 1.0, 1.0, 1.0])
    valid = torch.tensor([True, True, True, False])
    g = np.log([1.0, 2.0, 4.0])
    expected = 10.0 * math.sqrt((g**2).mean() - 0.85 * g.mean() ** 2)
    assert d.silog_loss(pred, gt, valid, 0.85, 10.0).item() == pytest.approx(expected, rel=1e-4)


def test_silog_is_scale_invariant_with_lambda_one():
    d = depth_module()
    gt = torch.tensor([1.0, 2.0, 3.0])
    valid = torch.ones(3, dtype=torch.bool)
    assert d.silog_loss(2.5 * gt, gt, valid, 1.0, 10.0).item() < 0.02


def _hand_batch(task, pred_value, gt, pad_to):
    """A batch of one image of gt's size padded to ``pad_to``, with a constant prediction."""
    h, w = gt.shape
    images = ImageList(torch.zeros(1, 3, *pad_to), [(h, w)])
    preds = [{"pred_depth": torch.full((1, 1, pad_to[0] // 4, pad_to[1] // 4), pred_value)}]
    return images, preds


def test_loss_ignores_invalid_and_padded_pixels():
    task = make_task(min_depth=0.5, max_depth=8.0, deep_supervision=False)
    gt = torch.tensor([[2.0, 4.0, 0.0, 9.0], [2.0, 4.0, 0.3, 0.0]])  # 0, 0.3 and 9 are invalid
    images, preds = _hand_batch(task, 2.0, gt, (8, 8))
    loss = task.losses(preds, [{"depth": gt}], images)
    g = np.log([1.0, 0.5, 1.0, 0.5])
    expected = 10.0 * math.sqrt((g**2).mean() - 0.85 * g.mean() ** 2)
    assert set(loss) == {"loss_depth"}
    assert loss["loss_depth"].item() == pytest.approx(expected, rel=1e-3)


def test_deep_supervision_keys():
    task = make_task()
    gt = torch.full((8, 8), 2.0)
    images, preds = _hand_batch(task, 1.0, gt, (8, 8))
    loss = task.losses(preds * 3, [{"depth": gt}], images)
    assert set(loss) == {"loss_depth", "loss_depth_0", "loss_depth_1"}
    last_only = make_task(deep_supervision=False).losses(preds * 3, [{"depth": gt}], images)
    assert set(last_only) == {"loss_depth"}


def test_inference_crops_the_padding_and_resizes_to_the_input_size():
    task = make_task()
    images = ImageList(torch.zeros(2, 3, 32, 32), [(32, 24), (16, 32)])
    pred = torch.zeros(2, 1, 8, 8)
    pred[:, :, :, 6:] = 9.0  # the padding columns of image 0 (24..31)
    pred[0, :, :, :6] = 1.0
    pred[1] = 3.0
    inputs = [{"height": 64, "width": 48}, {}]
    out = task.inference({"pred_depth": pred}, inputs, images)
    assert out[0]["depth"].shape == (64, 48) and out[1]["depth"].shape == (16, 32)
    assert out[0]["depth"][:, :40].max().item() == pytest.approx(1.0)
    assert out[0]["depth"].max().item() < 9.0 * 0.5  # the padding's 9 only bleeds through the edge
    assert torch.allclose(out[1]["depth"], torch.full((16, 32), 3.0))


def test_merge_flipped_averages_the_map_and_the_flipped_maps_mirror():
    d = depth_module()
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(d.merge_flipped(a, a.flip(-1)), a)
    assert torch.equal(d.merge_flipped(a, a), torch.tensor([[2.0, 2.0, 2.0]]))
    task = make_task(flip_test=True)
    out = task.merge_flipped([{"depth": a}], [{"depth": a}], [{}])
    assert torch.equal(out[0]["depth"], torch.tensor([[2.0, 2.0, 2.0]]))


def test_flip_test_runs_the_model_on_the_flipped_image():
    from detectron2.modeling import build_model

    from tests.task_harness import tiny_task_cfg

    torch.manual_seed(0)
    cfg = tiny_task_cfg("depth")
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    x = {"image": image, "height": 32, "width": 48}
    with torch.no_grad():
        plain = model([x])[0]["depth"]
        mirrored = model([dict(x, image=image.flip(-1))])[0]["depth"]
        model.task.flip_test = True
        both = model([x])[0]["depth"]
    assert both.shape == (32, 48)
    assert torch.allclose(both, 0.5 * (plain + mirrored.flip(-1)), atol=1e-5)
    assert not torch.allclose(both, plain, atol=1e-4)


# ---------------------------------------------------------------- evaluator


def _register(name, **meta):
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(
            evaluator_type="depth", depth_scale=1000.0, min_depth=1e-3, max_depth=10.0, **meta
        )
    return name


def test_depth_metrics_by_hand():
    from glid.evaluation.depth_evaluation import depth_metrics

    pred = np.array([1.0, 1.5, 2.0, 3.8])
    gt = np.array([1.0, 1.0, 2.0, 2.0])  # ratios 1, 1.5, 1, 1.9
    m = depth_metrics(pred, gt)
    assert m["delta1"] == pytest.approx(50.0)
    assert m["delta2"] == pytest.approx(75.0)  # 1.5 < 1.5625 < 1.9
    assert m["delta3"] == pytest.approx(100.0)  # 1.9 < 1.953125
    assert m["AbsRel"] == pytest.approx((0.5 + 0.9) / 4)
    assert m["SqRel"] == pytest.approx((0.25 + 3.24 / 2) / 4)
    assert m["RMSE"] == pytest.approx(math.sqrt((0.25 + 3.24) / 4))
    a, b = math.log(1.5), math.log(1.9)
    assert m["RMSE-log"] == pytest.approx(math.sqrt((a * a + b * b) / 4))
    assert m["log10"] == pytest.approx((math.log10(1.5) + math.log10(1.9)) / 4)
    assert m["SILog"] == pytest.approx(100 * math.sqrt((a * a + b * b) / 4 - ((a + b) / 4) ** 2))


def test_evaluator_masks_invalid_pixels_and_clips(tmp_path):
    from glid.evaluation.depth_evaluation import DepthEvaluator

    ev = DepthEvaluator(_register("glid_test_depth_eval_plain"), distributed=False)
    gt_mm = np.array([[1000, 2000, 0], [12000, 1000, 1000]], dtype=np.uint16)
    path = os.path.join(tmp_path, "d.png")
    Image.fromarray(gt_mm).save(path)
    pred = torch.tensor([[1.0, 2.0, 5.0], [1.0, 20.0, 1.0]])  # 20 is clipped to 10
    ev.reset()
    ev.process([{"depth_file_name": path}], [{"depth": pred}])
    m = ev.evaluate()["depth"]
    # valid: (1,1), (2,2), (1,10), (1,1)
    assert m["RMSE"] == pytest.approx(math.sqrt(81 / 4))
    assert m["delta1"] == pytest.approx(75.0)
    assert m["AbsRel"] == pytest.approx(9 / 4)


def test_evaluator_averages_per_image(tmp_path):
    from glid.evaluation.depth_evaluation import DepthEvaluator

    ev = DepthEvaluator(_register("glid_test_depth_eval_plain"), distributed=False)
    ev.reset()
    ev.process_arrays(np.full((2, 2), 2.0), np.full((2, 2), 1.0))  # RMSE 1
    ev.process_arrays(np.array([[1.0, 4.0]]), np.array([[1.0, 1.0]]))  # RMSE sqrt(4.5)
    ev.process_arrays(np.full((3, 1), 5.0), np.full((3, 1), 5.0))  # RMSE 0
    m = ev.evaluate()["depth"]
    assert m["RMSE"] == pytest.approx((1 + math.sqrt(4.5)) / 3)  # the mean, not the pixels'
    assert m["delta1"] == pytest.approx((0 + 50 + 100) / 3)


def test_eigen_crop_mask_on_nyu_and_scaled_sizes():
    from glid.evaluation.depth_evaluation import eigen_crop_mask

    m = eigen_crop_mask(480, 640)
    assert m.sum() == (471 - 45) * (601 - 41)
    assert m[45, 41] and m[470, 600] and not m[44, 41] and not m[45, 40]
    assert not m[471, 100] and not m[100, 601]
    half = eigen_crop_mask(240, 320)
    # 22.5:235.5 rows and 20.5:300.5 columns, rounded half up
    assert half[23, 21] and not half[22, 21] and not half[23, 20]
    assert half[235, 300] and not half[236, 300] and not half[235, 301]


def test_evaluator_eigen_crop(tmp_path):
    from glid.evaluation.depth_evaluation import DepthEvaluator

    gt = np.full((480, 640), 2.0)
    pred = np.full((480, 640), 2.0)
    pred[:45] = 8.0  # wrong outside the crop only
    pred[:, 601:] = 8.0
    ev = DepthEvaluator(_register("glid_test_depth_eval_eigen", eigen_crop=True), False)
    ev.reset()
    ev.process_arrays(pred, gt)
    assert ev.evaluate()["depth"]["RMSE"] == pytest.approx(0.0)
    ev = DepthEvaluator(_register("glid_test_depth_eval_plain"), False)
    ev.reset()
    ev.process_arrays(pred, gt)
    assert ev.evaluate()["depth"]["RMSE"] > 1.0


def test_evaluator_gathers_every_process(monkeypatch):
    from detectron2.utils import comm

    from glid.evaluation.depth_evaluation import DepthEvaluator

    other_rank = [
        {
            k: 10.0
            for k in (
                "delta1",
                "delta2",
                "delta3",
                "AbsRel",
                "SqRel",
                "RMSE",
                "RMSE-log",
                "log10",
                "SILog",
            )
        }
    ]
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, other_rank])
    ev = DepthEvaluator(_register("glid_test_depth_eval_plain"), distributed=True)
    ev.reset()
    ev.process_arrays(np.full((2, 2), 2.0), np.full((2, 2), 1.0))  # RMSE 1
    assert ev.evaluate()["depth"]["RMSE"] == pytest.approx(5.5)
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert ev.evaluate() == {}


def test_depth_evaluator_is_registered(tiny_cfg):
    from glid.evaluation import build_evaluator
    from glid.evaluation.build import EVALUATOR_REGISTRY

    assert "depth" in EVALUATOR_REGISTRY
    ev = EVALUATOR_REGISTRY.get("depth")(tiny_cfg, _register("glid_test_depth_eval_plain"), "")
    assert type(ev).__name__ == "DepthEvaluator"
    assert build_evaluator  # the registry is what build_evaluator reads


# ---------------------------------------------------------------- recipe


def test_nyuv2_recipe_is_tab9():
    from detectron2.config import get_cfg

    import glid
    from glid.engine.lr_scheduler import build_lr_scheduler
    from tests.utils import REPO_ROOT

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "nyuv2_depth_glid.yaml"))
    s = cfg.SOLVER
    assert cfg.MODEL.GLID.TASK == "depth" and cfg.MODEL.GLID.NUM_QUERIES == 64
    assert (s.OPTIMIZER, s.BASE_LR, s.BACKBONE_MULTIPLIER) == ("ADAMW", 1e-4, 1.0)
    assert (s.IMS_PER_BATCH, s.WEIGHT_DECAY, tuple(s.BETAS)) == (16, 0.05, (0.9, 0.999))
    assert s.MAX_ITER == 38400 and s.WARMUP_ITERS == round(0.3 * 38400)
    assert cfg.MODEL.SWIN.DROP_PATH_RATE == 0.1
    assert cfg.DATASETS.TRAIN == ("nyuv2_depth_train",)
    assert cfg.DATASETS.TEST == ("nyuv2_depth_test",)
    assert (cfg.MODEL.GLID.DEPTH.MIN_DEPTH, cfg.MODEL.GLID.DEPTH.MAX_DEPTH) == (1e-3, 10.0)
    assert cfg.MODEL.GLID.DEPTH.FLIP_TEST
    # Linear warm-up to the full rate at 30 %, then cosine over the remaining 70 % down to 0.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=s.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(s.MAX_ITER):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 1e-6
    assert lrs[5760] == pytest.approx(0.5e-4, rel=0.01)  # half-way through the warm-up
    assert max(lrs) == pytest.approx(1e-4, rel=1e-3) and lrs.index(max(lrs)) in (11519, 11520)
    assert lrs[11520 + 13440] == pytest.approx(0.5e-4, rel=0.01)  # half-way through the cosine
    assert lrs[-1] < 1e-8


def test_demo_draws_depth_with_a_labelled_scale_bar():
    import sys

    import numpy as np

    from tests.utils import REPO_ROOT

    sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
    from predictor import draw_depth

    image = np.zeros((60, 80, 3), dtype=np.uint8)
    depth = np.tile(np.linspace(1.0, 4.0, 80, dtype=np.float32), (60, 1))
    out = draw_depth(image, depth)
    assert out.shape == (60, 80 + 80 + 96, 3)
    colour = out[:, 80:160]
    assert colour[:, 0].mean() < colour[:, -1].mean()  # near dark, far bright
    bar = out[:, 160 + 4 : 160 + 20].astype(int)
    assert bar[0].mean() > bar[-1].mean()  # far at the top of the bar
    assert (out[:, 160 + 24 :] < 128).any()  # the labels are drawn
