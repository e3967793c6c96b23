"""Pixel decoders: output contract, Tab. 2's parameter and FLOP figures."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

import glid
from glid.modeling.pixel_decoder import build_pixel_decoder
from tests.utils import REPO_ROOT, make_tiny_cfg

# Tab. 2 (GLID supplementary): FLOPs / params of the two pixel decoders, Swin-B, 640x640.
TAB2 = {"BiFPN": (5.0e6, 33.8e9), "MSDeformAttn": (5.5e6, 55.3e9)}
MASK2FORMER_MSDEFORMATTN_PARAMS = 5_544_384  # Mask2Former's own decoder on Swin-B channels


def swin_b_cfg(pixel_decoder):
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(f"{REPO_ROOT}/configs/ade20k_sem_glid.yaml")
    cfg.MODEL.GLID.PIXEL_DECODER = pixel_decoder
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def swin_b_features(size=(640, 640)):
    h, w = size
    return {
        name: torch.randn(1, c, h // s, w // s)
        for name, c, s in [
            ("res2", 128, 4),
            ("res3", 256, 8),
            ("res4", 512, 16),
            ("res5", 1024, 32),
        ]
    }


def swin_b_shapes():
    cfg = swin_b_cfg("BiFPN")
    return build_backbone(cfg).output_shape()


@pytest.mark.parametrize("name", ["BiFPN", "MSDeformAttn"])
def test_output_contract(name):
    cfg = make_tiny_cfg("MODEL.GLID.PIXEL_DECODER", name, "MODEL.GLID.MSDEFORMATTN.NUM_LAYERS", 2)
    backbone = build_backbone(cfg)
    decoder = build_pixel_decoder(cfg, backbone.output_shape())
    feats = backbone(torch.randn(2, 3, 64, 96))
    mask_features, multi_scale = decoder(feats)
    assert mask_features.shape == (2, cfg.MODEL.GLID.MASK_DIM, 16, 24)
    assert [tuple(f.shape) for f in multi_scale] == [(2, 64, 2, 3), (2, 64, 4, 6), (2, 64, 8, 12)]
    (mask_features.sum() + sum(f.sum() for f in multi_scale)).backward()
    assert all(p.grad is not None for p in decoder.parameters() if p.requires_grad)


def test_msdeformattn_params_match_mask2former():
    decoder = build_pixel_decoder(swin_b_cfg("MSDeformAttn"), swin_b_shapes())
    assert sum(p.numel() for p in decoder.parameters()) == MASK2FORMER_MSDEFORMATTN_PARAMS


@pytest.mark.slow
@pytest.mark.parametrize("name", ["BiFPN", "MSDeformAttn"])
def test_params_and_flops_match_tab2(name):
    from tools.analyze_model import count

    decoder = build_pixel_decoder(swin_b_cfg(name), swin_b_shapes()).eval()
    with torch.no_grad():
        params, flops = count(decoder, (swin_b_features(),))
    target_params, target_flops = TAB2[name]
    assert abs(params / target_params - 1) < 0.02, params
    assert abs(flops / target_flops - 1) < 0.05, flops


def test_msdeformattn_module_compiles_fullgraph():
    from glid.modeling.pixel_decoder.msdeformattn import MSDeformAttn, encoder_reference_points

    torch.manual_seed(0)
    attn = MSDeformAttn(dim=16, num_levels=2, num_heads=2, num_points=2)
    shapes = [(4, 6), (2, 3)]
    spatial_shapes = torch.tensor(shapes)
    start = torch.tensor([0, 24])
    value = torch.randn(2, 30, 16, requires_grad=True)
    ref = encoder_reference_points(shapes, 2, "cpu")
    eager = attn(value, ref, value, spatial_shapes, start)
    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    out = compiled(value, ref, value, spatial_shapes, start)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    (grad_eager,) = torch.autograd.grad(eager.square().sum(), value)
    (grad_compiled,) = torch.autograd.grad(out.square().sum(), value)
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=1e-5, atol=1e-6)


def test_msdeformattn_autocast_keeps_locations_fp32(monkeypatch):
    from glid.modeling.pixel_decoder import msdeformattn

    seen = {}
    real_op = msdeformattn.ms_deform_attn

    def spy(value, spatial_shapes, level_start_index, locations, weights):
        seen.update(locations=locations.dtype, weights=weights.dtype)
        return real_op(value, spatial_shapes, level_start_index, locations, weights)

    attn = msdeformattn.MSDeformAttn(dim=16, num_levels=1, num_heads=2, num_points=2)
    monkeypatch.setattr(msdeformattn, "ms_deform_attn", spy)
    value = torch.randn(1, 12, 16)
    ref = msdeformattn.encoder_reference_points([(3, 4)], 1, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(value, ref, value, torch.tensor([[3, 4]]), torch.tensor([0]))
    assert seen == {"locations": torch.float32, "weights": torch.float32}


def test_msdeformattn_encoder_reference_points_x_is_width_y_is_height(monkeypatch):
    # Every pixel's centre, normalized, (x, y) with x along the width and y along the height, in
    # the row-major order of the flattened maps. A 2 x 3 level (H = 2, W = 3) by hand:
    # x in {1/6, 1/2, 5/6} (columns), y in {1/4, 3/4} (rows).
    from glid.modeling.pixel_decoder import msdeformattn

    level_2x3 = [
        (1 / 6, 1 / 4), (1 / 2, 1 / 4), (5 / 6, 1 / 4),
        (1 / 6, 3 / 4), (1 / 2, 3 / 4), (5 / 6, 3 / 4),
    ]  # fmt: skip
    level_1x2 = [(1 / 4, 1 / 2), (3 / 4, 1 / 2)]  # H = 1, W = 2
    ref = msdeformattn.encoder_reference_points([(2, 3), (1, 2)], 2, "cpu")
    assert ref.shape == (2, 6 + 2, 2, 2)  # (batch, S, levels, (x, y))
    want = torch.tensor(level_2x3 + level_1x2)
    for b in range(2):
        for lvl in range(2):  # the same points are repeated for every level
            torch.testing.assert_close(ref[b, :, lvl], want, rtol=0, atol=1e-7)

    # The decoder itself passes these points for its non-square levels: a 64 x 96 image gives
    # res5 / res4 / res3 maps of 2 x 3, 4 x 6 and 8 x 12 (H x W), low resolution first.
    seen = {}
    layer_forward = msdeformattn.MSDeformAttnEncoderLayer.forward

    def spy(self, src, pos, reference_points, spatial_shapes, level_start_index):
        seen.setdefault("ref", reference_points.detach().clone())
        seen.setdefault("shapes", spatial_shapes.tolist())
        return layer_forward(self, src, pos, reference_points, spatial_shapes, level_start_index)

    monkeypatch.setattr(msdeformattn.MSDeformAttnEncoderLayer, "forward", spy)
    cfg = make_tiny_cfg(
        "MODEL.GLID.PIXEL_DECODER", "MSDeformAttn", "MODEL.GLID.MSDEFORMATTN.NUM_LAYERS", 1
    )
    backbone = build_backbone(cfg)
    decoder = build_pixel_decoder(cfg, backbone.output_shape())
    with torch.no_grad():
        decoder(backbone(torch.randn(1, 3, 64, 96)))
    assert seen["shapes"] == [[2, 3], [4, 6], [8, 12]]
    ref = seen["ref"]
    assert ref.shape == (1, 6 + 24 + 96, 3, 2)
    torch.testing.assert_close(ref[0, :6, 0], torch.tensor(level_2x3), rtol=0, atol=1e-7)
    # The 4 x 6 level: row 1, column 4 (index 1 * 6 + 4) is at x = 4.5 / 6, y = 1.5 / 4.
    torch.testing.assert_close(ref[0, 6 + 10, 1], torch.tensor([4.5 / 6, 1.5 / 4]))
    # The 8 x 12 level: row 7, column 0 (index 7 * 12) is at x = 0.5 / 12, y = 7.5 / 8.
    torch.testing.assert_close(ref[0, 30 + 84, 2], torch.tensor([0.5 / 12, 7.5 / 8]))
