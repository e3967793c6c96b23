"""LARS, layer-wise lr decay and the rest of ``build_optimizer``: optimizer choice and its
hyperparameters, parameter groups, gradient clipping."""

import io

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from glid.engine import LARS, build_optimizer, layer_decay_lr_factor
from tests.utils import make_tiny_cfg

# ---------------------------------------------------------------------------------------------
# LARS against its update rule, written out here in float64:
#   weights (ndim > 1):  d = g + wd w;  d *= tc ||w|| / ||d|| (1 if a norm is 0)
#   ndim <= 1:           d = g
#   m = mu m + d (m0 = 0);  w -= lr m
# ---------------------------------------------------------------------------------------------


def _tensor(values):
    return torch.tensor(values, dtype=torch.float64)


def _lars_weight_update(w, g, wd, tc):
    d = g + wd * w
    return d * (tc * w.norm() / d.norm())


def _two_groups():
    """Two param groups with different hyperparameters: a weight and a bias, another weight."""
    w = nn.Parameter(_tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]))
    b = nn.Parameter(_tensor([0.3, -0.2, 0.1]))
    v = nn.Parameter(_tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.2]]))
    groups = [
        {
            "params": [w, b],
            "lr": 0.1,
            "weight_decay": 0.2,
            "momentum": 0.9,
            "trust_coefficient": 0.5,
        },
        {"params": [v], "lr": 0.3, "weight_decay": 0.05, "momentum": 0.5, "trust_coefficient": 2.0},
    ]
    return (w, b, v), groups


GRADS_1 = (
    [[0.1, 0.2, -0.3], [0.4, -0.5, 0.6]],
    [1.0, -2.0, 3.0],
    [[0.3, 0.1], [-0.2, 0.4], [0.05, -0.6]],
)
GRADS_2 = (
    [[-0.2, 0.1, 0.05], [0.3, 0.3, -0.1]],
    [0.5, 0.5, -1.0],
    [[0.1, -0.1], [0.2, 0.2], [-0.3, 0.0]],
)


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = _tensor(g)


def test_lars_one_and_two_steps_follow_the_update_rule():
    (w, b, v), groups = _two_groups()
    w0, b0, v0 = w.detach().clone(), b.detach().clone(), v.detach().clone()
    opt = LARS(groups)
    g1 = [_tensor(g) for g in GRADS_1]
    g2 = [_tensor(g) for g in GRADS_2]

    _set_grads((w, b, v), GRADS_1)
    opt.step()
    mw = _lars_weight_update(w0, g1[0], 0.2, 0.5)
    mb = g1[1]
    mv = _lars_weight_update(v0, g1[2], 0.05, 2.0)
    w1, b1, v1 = w0 - 0.1 * mw, b0 - 0.1 * mb, v0 - 0.3 * mv
    torch.testing.assert_close(w.detach(), w1, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.detach(), b1, rtol=0, atol=1e-12)
    torch.testing.assert_close(v.detach(), v1, rtol=0, atol=1e-12)

    _set_grads((w, b, v), GRADS_2)
    opt.step()
    mw = 0.9 * mw + _lars_weight_update(w1, g2[0], 0.2, 0.5)
    mb = 0.9 * mb + g2[1]
    mv = 0.5 * mv + _lars_weight_update(v1, g2[2], 0.05, 2.0)
    torch.testing.assert_close(w.detach(), w1 - 0.1 * mw, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.detach(), b1 - 0.1 * mb, rtol=0, atol=1e-12)
    torch.testing.assert_close(v.detach(), v1 - 0.3 * mv, rtol=0, atol=1e-12)
    # The trust ratio changed the weights' step: plain SGD would differ.
    assert not torch.allclose(v1, v0 - 0.3 * (g1[2] + 0.05 * v0))


def test_lars_one_dim_params_get_no_weight_decay_and_no_trust_ratio():
    bias = nn.Parameter(_tensor([1.0, -2.0, 4.0]))
    scalar = nn.Parameter(_tensor(3.0))
    opt = LARS([bias, scalar], lr=0.5, weight_decay=10.0, momentum=0.9, trust_coefficient=1e-3)
    bias.grad, scalar.grad = _tensor([0.2, 0.4, -0.6]), _tensor(-1.0)
    opt.step()
    torch.testing.assert_close(bias.detach(), _tensor([0.9, -2.2, 4.3]), rtol=0, atol=1e-12)
    torch.testing.assert_close(scalar.detach(), _tensor(3.5), rtol=0, atol=1e-12)
    bias.grad, scalar.grad = _tensor([0.0, 0.0, 0.0]), _tensor(0.0)
    opt.step()  # momentum only: m = 0.9 g1
    torch.testing.assert_close(bias.detach(), _tensor([0.81, -2.38, 4.57]), rtol=0, atol=1e-12)
    torch.testing.assert_close(scalar.detach(), _tensor(3.95), rtol=0, atol=1e-12)


def test_lars_zero_norms_use_a_trust_ratio_of_one():
    zero_weight = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    still_weight = nn.Parameter(_tensor([[1.0, 2.0], [3.0, 4.0]]))
    zero_both = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    opt = LARS(
        [zero_weight, still_weight, zero_both],
        lr=0.5,
        weight_decay=0.0,
        momentum=0.9,
        trust_coefficient=1e-3,
    )
    zero_weight.grad = _tensor([[1.0, -2.0], [0.0, 4.0]])  # ||w|| = 0: plain SGD step
    still_weight.grad = torch.zeros(2, 2, dtype=torch.float64)  # ||d|| = 0: no step
    zero_both.grad = torch.zeros(2, 3, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(zero_weight.detach(), _tensor([[-0.5, 1.0], [0.0, -2.0]]))
    torch.testing.assert_close(still_weight.detach(), _tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(zero_both.detach(), torch.zeros(2, 3, dtype=torch.float64))
    for p in (zero_weight, still_weight, zero_both):
        assert torch.isfinite(opt.state[p]["momentum_buffer"]).all()
    # With weight decay a zero weight still has ||w|| = 0: ratio 1, d = g.
    w = nn.Parameter(torch.zeros(1, 2, dtype=torch.float64))
    opt = LARS([w], lr=1.0, weight_decay=0.5, momentum=0.0, trust_coefficient=1e-3)
    w.grad = _tensor([[3.0, -1.0]])
    opt.step()
    torch.testing.assert_close(w.detach(), _tensor([[-3.0, 1.0]]))


def test_lars_skips_params_without_grad_and_returns_the_closure_loss():
    w = nn.Parameter(_tensor([[1.0, 2.0]]))
    opt = LARS([w], lr=1.0)
    assert opt.step(closure=lambda: torch.tensor(7.0)).item() == 7.0
    assert torch.equal(w.detach(), _tensor([[1.0, 2.0]])) and len(opt.state) == 0


def test_lars_state_dict_round_trip_resumes_exactly():
    params, groups = _two_groups()
    opt = LARS(groups)
    _set_grads(params, GRADS_1)
    opt.step()
    _set_grads(params, GRADS_2)
    opt.step()
    buffer = io.BytesIO()  # through serialization, like a checkpoint (no shared tensors)
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    copies, groups2 = _two_groups()
    for c, p in zip(copies, params):
        c.data.copy_(p.detach())
    resumed = LARS(groups2)
    resumed.load_state_dict(saved)
    for key in ("lr", "weight_decay", "momentum", "trust_coefficient"):
        assert [g[key] for g in resumed.param_groups] == [g[key] for g in opt.param_groups]
    fresh_copies, groups3 = _two_groups()
    for c, p in zip(fresh_copies, params):
        c.data.copy_(p.detach())
    fresh = LARS(groups3)  # no momentum history: must end elsewhere

    for ps, o in ((params, opt), (copies, resumed), (fresh_copies, fresh)):
        _set_grads(ps, GRADS_1)
        o.step()
    for p, c, f in zip(params, copies, fresh_copies):
        assert torch.equal(p.detach(), c.detach())
        assert not torch.equal(p.detach(), f.detach())


@pytest.mark.parametrize(
    "kwargs", [{"lr": -1.0}, {"weight_decay": -0.1}, {"momentum": -0.5}, {"trust_coefficient": 0}]
)
def test_lars_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LARS([nn.Parameter(torch.ones(2, 2))], **kwargs)


# ---------------------------------------------------------------------------------------------
# Layer-wise lr decay
# ---------------------------------------------------------------------------------------------

TINY_DEPTHS = (1, 1, 2, 1)  # configs/quickstart/glid_synth_sem_tiny.yaml: L = 5
SWIN_B_DEPTHS = (2, 2, 18, 2)  # L = 24


@pytest.mark.parametrize(
    "depths, name, exponent",
    [
        (TINY_DEPTHS, "backbone.swin.patch_embed.proj.weight", 6),
        (TINY_DEPTHS, "backbone.swin.patch_embed.norm.bias", 6),
        (TINY_DEPTHS, "backbone.mask_token", 6),
        (TINY_DEPTHS, "backbone.swin.layers.0.blocks.0.attn.qkv.weight", 5),
        (TINY_DEPTHS, "backbone.swin.layers.1.downsample.reduction.weight", 5),
        (TINY_DEPTHS, "backbone.swin.layers.1.blocks.0.norm1.weight", 4),
        (TINY_DEPTHS, "backbone.swin.layers.2.downsample.norm.weight", 4),
        (TINY_DEPTHS, "backbone.swin.layers.2.blocks.0.mlp.fc1.weight", 3),
        (TINY_DEPTHS, "backbone.swin.layers.2.blocks.1.attn.relative_position_bias_table", 2),
        (TINY_DEPTHS, "backbone.swin.layers.3.downsample.reduction.weight", 2),
        (TINY_DEPTHS, "backbone.swin.layers.3.blocks.0.mlp.fc2.bias", 1),
        (TINY_DEPTHS, "backbone.output_norms.res5.weight", 0),
        (TINY_DEPTHS, "pixel_decoder.mask_features.weight", 0),
        (TINY_DEPTHS, "decoder.layers.0.self_attn.in_proj_weight", 0),
        (TINY_DEPTHS, "queries.mask_query", 0),
        (TINY_DEPTHS, "head.weight", 0),
        (SWIN_B_DEPTHS, "backbone.swin.patch_embed.proj.weight", 25),
        (SWIN_B_DEPTHS, "backbone.swin.layers.0.blocks.1.attn.qkv.weight", 23),
        (SWIN_B_DEPTHS, "backbone.swin.layers.2.downsample.reduction.weight", 21),
        (SWIN_B_DEPTHS, "backbone.swin.layers.2.blocks.0.attn.qkv.weight", 20),
        (SWIN_B_DEPTHS, "backbone.swin.layers.2.blocks.17.attn.qkv.weight", 3),
        (SWIN_B_DEPTHS, "backbone.swin.layers.3.downsample.reduction.weight", 3),
        (SWIN_B_DEPTHS, "backbone.swin.layers.3.blocks.1.mlp.fc2.weight", 1),
    ],
)
def test_layer_decay_lr_factor_rule(depths, name, exponent):
    assert layer_decay_lr_factor(name, depths, 0.5) == pytest.approx(0.5**exponent, rel=1e-12)
    assert layer_decay_lr_factor(name, depths, 1.0) == 1.0


@pytest.mark.parametrize(
    "name",
    [
        "backbone.swin.absolute_pos_embed",
        "backbone.swin.norm.weight",
        "backbone.swin.layers.4.blocks.0.norm1.weight",  # no stage 4
        "backbone.swin.layers.0.blocks.1.norm1.weight",  # stage 0 has 1 block
        "backbone.swin.layers.1.something.weight",
        "backbone.extra_token",
    ],
)
def test_layer_decay_rejects_unknown_encoder_names(name):
    with pytest.raises(ValueError, match="no layer rule for encoder parameter"):
        layer_decay_lr_factor(name, TINY_DEPTHS, 0.8)


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_layer_decay_outside_0_1_is_an_error(decay):
    with pytest.raises(ValueError, match="LAYER_DECAY must be in"):
        layer_decay_lr_factor("head.weight", TINY_DEPTHS, decay)
    cfg = make_tiny_cfg("SOLVER.LAYER_DECAY", decay)
    with pytest.raises(ValueError, match="LAYER_DECAY must be in"):
        build_optimizer(cfg, nn.Linear(2, 2))


def _group_of(optimizer, param):
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise AssertionError("parameter not in any group")


def _layer_decay_cfg(*opts):
    return make_tiny_cfg(
        "SOLVER.LAYER_DECAY", 0.5, "SOLVER.BACKBONE_MULTIPLIER", 1.0, "SOLVER.BASE_LR", 1e-3,
        "SOLVER.WEIGHT_DECAY", 0.05, "SOLVER.WEIGHT_DECAY_NORM", 0.0,
        "SOLVER.WEIGHT_DECAY_EMBED", 0.0, *opts,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny semantic model, its encoder mask token unfrozen (as a MIM model has it)."""
    model = build_model(make_tiny_cfg())
    model.backbone.mask_token.requires_grad_(True)
    return model


def test_layer_decay_param_groups_of_the_tiny_model(tiny_model):
    cfg = _layer_decay_cfg()
    assert tuple(cfg.MODEL.SWIN.DEPTHS) == TINY_DEPTHS
    opt = build_optimizer(cfg, tiny_model)
    named = dict(tiny_model.named_parameters())
    expected = {  # name: (lr, weight decay)
        "backbone.mask_token": (1e-3 * 0.5**6, 0.0),
        "backbone.swin.patch_embed.proj.weight": (1e-3 * 0.5**6, 0.05),
        "backbone.swin.patch_embed.norm.weight": (1e-3 * 0.5**6, 0.0),
        "backbone.swin.layers.0.blocks.0.attn.qkv.weight": (1e-3 * 0.5**5, 0.05),
        "backbone.swin.layers.0.blocks.0.attn.relative_position_bias_table": (1e-3 * 0.5**5, 0.0),
        "backbone.swin.layers.0.blocks.0.norm1.weight": (1e-3 * 0.5**5, 0.0),
        "backbone.swin.layers.1.downsample.reduction.weight": (1e-3 * 0.5**5, 0.05),
        "backbone.swin.layers.2.downsample.norm.bias": (1e-3 * 0.5**4, 0.0),
        "backbone.swin.layers.2.blocks.1.mlp.fc1.weight": (1e-3 * 0.5**2, 0.05),
        "backbone.swin.layers.3.blocks.0.mlp.fc2.weight": (1e-3 * 0.5, 0.05),
        "backbone.output_norms.res2.weight": (1e-3, 0.0),
        "pixel_decoder.mask_features.weight": (1e-3, 0.05),
        "decoder.level_embed": (1e-3, 0.0),
        "decoder.layers.0.self_attn.in_proj_weight": (1e-3, 0.05),
        "queries.mask_query": (1e-3, 0.0),
        "head.weight": (1e-3, 0.05),
    }
    for name, (lr, wd) in expected.items():
        group = _group_of(opt, named[name])
        assert group["lr"] == pytest.approx(lr, rel=1e-12), name
        assert group["weight_decay"] == wd, name
    trainable = [p for p in tiny_model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)


def test_layer_decay_with_a_backbone_multiplier_is_an_error(tiny_model):
    cfg = _layer_decay_cfg("SOLVER.BACKBONE_MULTIPLIER", 0.1)
    with pytest.raises(ValueError, match=r"set SOLVER\.BACKBONE_MULTIPLIER to 1\.0"):
        build_optimizer(cfg, tiny_model)
    # Without layer decay the multiplier applies as before.
    opt = build_optimizer(make_tiny_cfg("SOLVER.BACKBONE_MULTIPLIER", 0.1), tiny_model)
    qkv = tiny_model.backbone.swin.layers[3].blocks[0].attn.qkv.weight
    assert _group_of(opt, qkv)["lr"] == pytest.approx(1e-4)


def test_layer_decay_unknown_encoder_parameter_in_a_model_raises():
    model = build_model(make_tiny_cfg())
    model.backbone.swin.register_parameter("extra_token", nn.Parameter(torch.zeros(1, 4)))
    with pytest.raises(ValueError, match="backbone.swin.extra_token"):
        build_optimizer(_layer_decay_cfg(), model)


# ---------------------------------------------------------------------------------------------
# Optimizer choice and hyperparameters from the config
# ---------------------------------------------------------------------------------------------


def _two_linears():
    return nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1, bias=False))


@pytest.mark.parametrize("name", ["SGD", "sgd"])
def test_sgd_from_config(name):
    cfg = make_tiny_cfg(
        "SOLVER.OPTIMIZER", name, "SOLVER.MOMENTUM", 0.8, "SOLVER.NESTEROV", True,
        "SOLVER.BASE_LR", 0.02,
    )  # fmt: skip
    opt = build_optimizer(cfg, _two_linears())
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"] is True
    assert all(g["lr"] == 0.02 and g["momentum"] == 0.8 for g in opt.param_groups)


def test_adamw_betas_from_config():
    cfg = make_tiny_cfg("SOLVER.BETAS", (0.8, 0.95))
    opt = build_optimizer(cfg, _two_linears())
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.95) for g in opt.param_groups)


def test_lars_from_config():
    cfg = make_tiny_cfg(
        "SOLVER.OPTIMIZER", "LARS", "SOLVER.MOMENTUM", 0.7, "SOLVER.LARS_TRUST_COEFFICIENT", 0.02,
        "SOLVER.WEIGHT_DECAY", 0.1, "SOLVER.BASE_LR", 0.5,
    )  # fmt: skip
    model = _two_linears()
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, LARS)
    for g in opt.param_groups:
        assert (g["lr"], g["momentum"], g["trust_coefficient"]) == (0.5, 0.7, 0.02)
        assert g["weight_decay"] == 0.1


def test_lars_with_nesterov_is_an_error():
    cfg = make_tiny_cfg("SOLVER.OPTIMIZER", "LARS", "SOLVER.NESTEROV", True)
    with pytest.raises(ValueError, match="SOLVER.NESTEROV is not supported by LARS"):
        build_optimizer(cfg, _two_linears())


def test_unsupported_optimizer_names_the_choices():
    cfg = make_tiny_cfg("SOLVER.OPTIMIZER", "Adam")
    with pytest.raises(
        ValueError, match=r"SOLVER\.OPTIMIZER='Adam' is not supported; use ADAMW, " r"SGD or LARS"
    ):
        build_optimizer(cfg, _two_linears())


# ---------------------------------------------------------------------------------------------
# Gradient clipping: a (2,)-weight with grad (3, -4) and a (1,)-weight with grad (12,)
#   full_model, L2:   one norm sqrt(9 + 16 + 144) = 13 -> 6.5: everything x 0.5
#   full_model, inf:  one norm max = 12 -> 6: everything x 0.5 (L2 would give x 6/13)
#   norm (per parameter): ||(3, -4)|| = 5 <= 6.5 stays, 12 -> 6.5
#   value: each entry clamped to [-2, 2]
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "clip_type, norm_type, clip_value, expected_a, expected_b",
    [
        ("full_model", 2.0, 6.5, [1.5, -2.0], [6.0]),
        ("full_model", "inf", 6.0, [1.5, -2.0], [6.0]),
        ("norm", 2.0, 6.5, [3.0, -4.0], [6.5]),
        ("value", 2.0, 2.0, [2.0, -2.0], [2.0]),
    ],
)
def test_gradient_clipping_types(clip_type, norm_type, clip_value, expected_a, expected_b):
    cfg = make_tiny_cfg(
        "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type,
        "SOLVER.CLIP_GRADIENTS.NORM_TYPE", float(norm_type),
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", clip_value, "SOLVER.OPTIMIZER", "SGD",
        "SOLVER.MOMENTUM", 0.0, "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.BASE_LR", 1.0,
    )  # fmt: skip
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(1))
    model = nn.Module()
    model.a, model.b = a, b
    opt = build_optimizer(cfg, model)
    a.grad, b.grad = torch.tensor([3.0, -4.0]), torch.tensor([12.0])
    opt.step()
    assert a.grad.tolist() == pytest.approx(expected_a)
    assert b.grad.tolist() == pytest.approx(expected_b)
    # SGD, lr 1, no momentum: the step used the clipped gradients.
    assert a.detach().tolist() == pytest.approx([-x for x in expected_a])
    assert b.detach().tolist() == pytest.approx([-x for x in expected_b])


def test_clipping_disabled_leaves_gradients():
    cfg = make_tiny_cfg(
        "SOLVER.CLIP_GRADIENTS.ENABLED", False, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1e-3
    )
    model = _two_linears()
    opt = build_optimizer(cfg, model)
    assert type(opt) is torch.optim.AdamW
    grads = [torch.full_like(p, 100.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt.step()
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
