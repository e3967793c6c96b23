"""Optimizer parameter groups, gradient clipping and learning-rate schedules."""

import pytest
import torch
from detectron2.modeling import build_model

from glid.engine import build_lr_scheduler, build_optimizer
from tests.utils import make_tiny_cfg


def _group_of(optimizer, param):
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise AssertionError("parameter not in any group")


def test_param_groups_lr_and_weight_decay():
    cfg = make_tiny_cfg(
        "SOLVER.BASE_LR", 1e-4, "SOLVER.BACKBONE_MULTIPLIER", 0.1, "SOLVER.WEIGHT_DECAY", 0.05
    )
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    swin = model.backbone.swin
    qkv = swin.layers[0].blocks[0].attn.qkv.weight
    assert _group_of(opt, qkv)["lr"] == pytest.approx(1e-5)
    assert _group_of(opt, qkv)["weight_decay"] == 0.05
    assert _group_of(opt, model.head.weight)["lr"] == pytest.approx(1e-4)
    assert _group_of(opt, model.head.weight)["weight_decay"] == 0.05
    no_decay = [
        swin.layers[0].blocks[0].attn.relative_position_bias_table,
        model.queries.mask_query,
        model.decoder.level_embed,
        model.decoder.norm.weight,
        model.backbone.output_norms["res2"].weight,
    ]
    for p in no_decay:
        assert _group_of(opt, p)["weight_decay"] == 0.0
    # Tokens the semantic task does not use are frozen and left out.
    for p in (model.backbone.mask_token, model.queries.cls_query):
        assert not p.requires_grad
        assert not any(p is q for g in opt.param_groups for q in g["params"])
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len([p for p in model.parameters() if p.requires_grad])


def test_full_model_gradient_clipping():
    cfg = make_tiny_cfg(
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0, "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.BASE_LR", 1.0
    )
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    )
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    opt = build_optimizer(cfg, model)
    model[0].weight.grad = torch.tensor([[3.0, 0.0]])
    model[1].weight.grad = torch.tensor([[4.0]])
    opt.step()
    # One norm over all parameters: 5 -> clipped to 1, i.e. grads (0.6, 0, 0.8).
    assert model[0].weight.grad[0].tolist() == pytest.approx([0.6, 0.0])
    assert model[1].weight.grad.item() == pytest.approx(0.8)


def test_poly_schedule_with_warmup():
    cfg = make_tiny_cfg(
        "SOLVER.BASE_LR", 1.0, "SOLVER.MAX_ITER", 100, "SOLVER.WARMUP_ITERS", 10,
        "SOLVER.WARMUP_FACTOR", 0.1, "SOLVER.POLY_LR_POWER", 0.9,
    )  # fmt: skip
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    model = torch.nn.Linear(1, 1)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx((1 - 50 / 100) ** 0.9)
    assert lrs[99] == pytest.approx((1 - 99 / 100) ** 0.9)


def test_other_schedules_come_from_detectron2():
    cfg = make_tiny_cfg(
        "SOLVER.LR_SCHEDULER_NAME",
        "WarmupMultiStepLR",
        "SOLVER.STEPS",
        (40,),
        "SOLVER.MAX_ITER",
        50,
    )
    opt = build_optimizer(cfg, torch.nn.Linear(1, 1))
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(45):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.SOLVER.BASE_LR * 0.1)
