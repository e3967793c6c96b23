"""Optimizer parameter groups, gradient clipping and learning-rate schedules."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import glid
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


# ---- learning-rate schedules against their closed form, at every iteration ----
#
# The schedules are detectron2's ``WarmupParamScheduler`` (fvcore) around a main schedule S(t),
# t in [0, 1], S(0) = 1, as ``LRMultiplier``: the lr of param group g at iteration i (the lr its
# optimizer step uses) is  base_lr x multiplier(g) x f(i),  with W = WARMUP_ITERS, M = MAX_ITER,
# w0 = WARMUP_FACTOR:
#   i <  W, "linear":   f = w0 x (1 - i/W) + E x i/W, where E = S(W/M) is the main schedule's
#                       value where warm-up ends (E = S(0) = 1 with RESCALE_INTERVAL);
#   i <  W, "constant": f = w0;
#   i >= W:             f = S(i/M)   (RESCALE_INTERVAL: S((i - W)/(M - W))).
# Main schedules: WarmupPolyLR (GLID) S = (1 - t)^POLY_LR_POWER; WarmupMultiStepLR
# S = GAMMA^#{s in STEPS: s <= t M}; WarmupCosineLR S = e + (1 - e)(1 + cos(pi t))/2 with
# e = BASE_LR_END / BASE_LR; WarmupStepWithFixedGammaLR S = GAMMA^floor(t (NUM_DECAYS + 1)).
# (Mask2Former's own WarmupPolyLR instead multiplies a warm-up factor w0 (1 - i/W) + i/W by
# (1 - i/M)^p; detectron2 interpolates towards the value where warm-up ends.)

M, W, W0, BASE_LR, BACKBONE_MULT = 60, 10, 0.1, 0.5, 0.1
STEPS, GAMMA, POWER, LR_END, NUM_DECAYS = (25, 40), 0.1, 0.9, 0.02, 2


def _main_schedule(name, t):
    if name == "WarmupPolyLR":
        return (1 - t) ** POWER
    if name == "WarmupMultiStepLR":
        return GAMMA ** sum(s <= round(t * M, 9) for s in STEPS)
    if name == "WarmupCosineLR":
        e = LR_END / BASE_LR
        return e + (1 - e) * (1 + math.cos(math.pi * t)) / 2
    if name == "WarmupStepWithFixedGammaLR":
        return GAMMA ** math.floor(round(t * (NUM_DECAYS + 1), 9))
    raise AssertionError(name)


def _closed_form(name, method, rescale, i):
    """The lr multiplier f(i) of the comment above."""
    if i < W:
        if method == "constant":
            return W0
        end = 1.0 if rescale else _main_schedule(name, W / M)
        return W0 * (1 - i / W) + end * i / W
    return _main_schedule(name, (i - W) / (M - W) if rescale else i / M)


def _schedule_cfg(name, method, rescale):
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_list(
        ["SOLVER.LR_SCHEDULER_NAME", name, "SOLVER.WARMUP_METHOD", method,
         "SOLVER.RESCALE_INTERVAL", rescale, "SOLVER.MAX_ITER", M, "SOLVER.WARMUP_ITERS", W,
         "SOLVER.WARMUP_FACTOR", W0, "SOLVER.BASE_LR", BASE_LR,
         "SOLVER.BACKBONE_MULTIPLIER", BACKBONE_MULT, "SOLVER.STEPS", STEPS,
         "SOLVER.GAMMA", GAMMA, "SOLVER.POLY_LR_POWER", POWER, "SOLVER.BASE_LR_END", LR_END,
         "SOLVER.NUM_DECAYS", NUM_DECAYS]
    )  # fmt: skip
    return cfg


class _BackboneAndHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        self.head = torch.nn.Linear(2, 1)


def _optimizer_and_scheduler(cfg, model):
    opt = build_optimizer(cfg, model)
    return opt, build_lr_scheduler(cfg, opt)


def _group_base_lrs(opt, model):
    """BASE_LR x BACKBONE_MULTIPLIER for the encoder's groups, BASE_LR for the others."""
    backbone = {id(p) for p in model.backbone.parameters()}
    bases = []
    for g in opt.param_groups:
        in_backbone = {id(p) in backbone for p in g["params"]}
        assert len(in_backbone) == 1, "a group mixes encoder and other parameters"
        bases.append(BASE_LR * (BACKBONE_MULT if in_backbone.pop() else 1.0))
    assert BASE_LR * BACKBONE_MULT in bases and BASE_LR in bases
    return bases


def _run(opt, sched, iterations):
    """The lr of every group at each iteration, stepped as detectron2's ``LRScheduler`` hook
    does: also after the last iteration (t = 1, where fvcore's StepWithFixedGamma schedule
    indexed past its values)."""
    lrs = []
    for _ in iterations:
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs


def _assert_closed_form(lrs, iterations, bases, name, method, rescale):
    # rel 1e-12: the same real numbers, computed in another order than fvcore's.
    for i, group_lrs in zip(iterations, lrs):
        f = _closed_form(name, method, rescale, i)
        expected = [base * f for base in bases]
        assert group_lrs == pytest.approx(expected, rel=1e-12, abs=0), (i, group_lrs, expected)


SCHEDULES = [
    (name, method, rescale)
    for name in (
        "WarmupPolyLR",
        "WarmupMultiStepLR",
        "WarmupCosineLR",
        "WarmupStepWithFixedGammaLR",
    )
    for method in ("linear", "constant")
    for rescale in ((False, True) if name in ("WarmupPolyLR", "WarmupCosineLR") else (False,))
]


@pytest.mark.parametrize("name,method,rescale", SCHEDULES)
def test_schedule_matches_closed_form_at_every_iteration(name, method, rescale):
    cfg = _schedule_cfg(name, method, rescale)
    model = _BackboneAndHead()
    opt, sched = _optimizer_and_scheduler(cfg, model)
    bases = _group_base_lrs(opt, model)
    lrs = _run(opt, sched, range(M))
    _assert_closed_form(lrs, range(M), bases, name, method, rescale)
    # The closed form itself: warm-up starts at w0 and (linear) climbs; the schedule decays.
    assert _closed_form(name, method, rescale, 0) == pytest.approx(W0)
    assert _closed_form(name, method, rescale, M - 1) < _closed_form(name, method, rescale, W)


@pytest.mark.parametrize(
    "name,method", [("WarmupPolyLR", "linear"), ("WarmupMultiStepLR", "constant")]
)
@pytest.mark.parametrize("k", [W // 2, 30])
def test_schedule_resumes_from_its_state_dict(name, method, k):
    """Optimizer + scheduler state after k iterations, loaded into freshly built ones (as a
    resumed run does): the lr continues at iteration k, not at 0."""
    cfg = _schedule_cfg(name, method, False)
    model = _BackboneAndHead()
    opt, sched = _optimizer_and_scheduler(cfg, model)
    _run(opt, sched, range(k))
    saved = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    opt2, sched2 = _optimizer_and_scheduler(cfg, model)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    lrs = _run(opt2, sched2, range(k, M))
    _assert_closed_form(lrs, range(k, M), _group_base_lrs(opt2, model), name, method, False)
