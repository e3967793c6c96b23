"""Pixel decoders in detail: the BiFPN graph and its node convs, the deformable encoder's
initialization and the config keys that shape it (mutation-test gaps, issue 13)."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from glid.modeling.pixel_decoder import bifpn, build_pixel_decoder, msdeformattn
from tests.utils import make_tiny_cfg

# ----------------------------------------------------------------------------------------------
# BiFPN
# ----------------------------------------------------------------------------------------------

# EfficientDet's BiFPN by hand: (level, inputs) per node, top-down then bottom-up; an input index
# counts the input levels first (0 = finest), then every earlier node's output. The top level's
# bottom-up node fuses only its input and the level below (it has no top-down node).
BIFPN_GRAPHS = {
    3: ([(1, (1, 2)), (0, (0, 3)), (1, (1, 3, 4)), (2, (2, 5))], (4, 5, 6)),
    4: (
        [(2, (2, 3)), (1, (1, 4)), (0, (0, 5)), (1, (1, 5, 6)), (2, (2, 4, 7)), (3, (3, 8))],
        (6, 7, 8, 9),
    ),
    5: (
        [
            (3, (3, 4)), (2, (2, 5)), (1, (1, 6)), (0, (0, 7)),
            (1, (1, 7, 8)), (2, (2, 6, 9)), (3, (3, 5, 10)), (4, (4, 11)),
        ],
        (8, 9, 10, 11, 12),
    ),
}  # fmt: skip


@pytest.mark.parametrize("num_levels", sorted(BIFPN_GRAPHS))
def test_bifpn_graph_by_hand(num_levels):
    nodes, outputs = bifpn.bifpn_nodes(num_levels)
    want_nodes, want_outputs = BIFPN_GRAPHS[num_levels]
    assert [(n.level, n.inputs) for n in nodes] == want_nodes
    assert outputs == want_outputs


def _resample_by_hand(x, level_from, level_to):
    """Adjacent levels only: nearest 2x upsampling, or a 3x3 max-pool of stride 2 (pad 1)."""
    if level_from == level_to:
        return x
    if level_from > level_to:  # coarser -> finer
        return x.repeat_interleave(2, -2).repeat_interleave(2, -1)
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def test_bifpn_layer_fuses_each_nodes_inputs(monkeypatch):
    """Every node receives its inputs (resampled to its level) and its own weights; the layer
    returns each level's last node. Convs are identities, so a node's output is its fusion."""
    torch.manual_seed(0)
    layer = bifpn.BiFPNLayer(4, channels=3, conv_type="sep", norm="", eps=1e-3)
    layer.convs = nn.ModuleList([nn.Identity() for _ in layer.convs])
    with torch.no_grad():  # distinct positive weights per node
        for w in layer.fusion_weights:
            w.uniform_(0.5, 2.0)
    calls = []
    real = bifpn.fast_normalized_fusion

    def spy(inputs, weights, eps=1e-4, activation="silu"):  # the op's defaults
        out = real(inputs, weights, eps=eps, activation=activation)
        calls.append(([t.clone() for t in inputs], weights, eps, activation, out))
        return out

    monkeypatch.setattr(bifpn, "fast_normalized_fusion", spy)
    sizes = [(16, 24), (8, 12), (4, 6), (2, 3)]  # non-square, strides 4..32
    feats = [torch.randn(2, 3, h, w) for h, w in sizes]
    with torch.no_grad():
        outs = layer(feats)

    want_nodes, want_outputs = BIFPN_GRAPHS[4]
    assert len(calls) == len(want_nodes)
    maps, levels = list(feats), [0, 1, 2, 3]
    for k, ((level, inputs), call) in enumerate(zip(want_nodes, calls)):
        got_inputs, weights, eps, activation, out = call
        assert weights is layer.fusion_weights[k] and weights.shape == (len(inputs),)
        assert (eps, activation) == (1e-3, "silu")
        assert len(got_inputs) == len(inputs), k
        for i, got in zip(inputs, got_inputs):
            want = _resample_by_hand(maps[i], levels[i], level)
            assert got.shape[-2:] == sizes[level], (k, i)
            assert torch.equal(got, want), (k, i)
        maps.append(out)
        levels.append(level)
    assert len(outs) == 4
    for level, (got, i) in enumerate(zip(outs, want_outputs)):
        assert got is maps[i] and got.shape[-2:] == sizes[level]


def _conv_ref(x, conv):
    """A detectron2 Conv2d (no bias) + its GroupNorm, from its weights."""
    y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    norm = conv.norm
    return F.group_norm(y, norm.num_groups, norm.weight, norm.bias, norm.eps)


def test_bifpn_conv_types_from_config():
    """``CONV_TYPES`` lists the repeats: "conv" = one full 3x3 conv + GN, "sep" = depthwise 3x3
    then pointwise 1x1 + GN; no biases. Checked by shape, parameter count and output."""
    cfg = make_tiny_cfg(
        "MODEL.GLID.BIFPN.CONV_TYPES", "['conv', 'sep']", "MODEL.GLID.BIFPN.FUSION_EPS", 0.01
    )
    c = cfg.MODEL.GLID.HIDDEN_DIM
    shapes = {f"res{i + 2}": ShapeSpec(channels=8 * 2**i, stride=4 * 2**i) for i in range(4)}
    decoder = build_pixel_decoder(cfg, shapes)
    assert len(decoder.layers) == 2 and [layer.eps for layer in decoder.layers] == [0.01, 0.01]
    full, sep = decoder.layers
    x = torch.randn(1, c, 5, 7)
    for conv in full.convs:  # 6 nodes over 4 levels
        assert isinstance(conv, nn.Conv2d) and not isinstance(conv, nn.Sequential)
        assert conv.weight.shape == (c, c, 3, 3) and conv.groups == 1 and conv.bias is None
        assert conv.padding == (1, 1) and conv.stride == (1, 1)
        assert isinstance(conv.norm, nn.GroupNorm) and conv.norm.num_groups == 32
        assert sum(p.numel() for p in conv.parameters()) == 9 * c * c + 2 * c
        with torch.no_grad():
            torch.testing.assert_close(conv(x), _conv_ref(x, conv))
    for conv in sep.convs:
        assert isinstance(conv, nn.Sequential) and len(conv) == 2
        depthwise, pointwise = conv
        assert depthwise.weight.shape == (c, 1, 3, 3) and depthwise.groups == c
        assert depthwise.padding == (1, 1) and depthwise.bias is None
        assert depthwise.norm is None and depthwise.activation is None
        assert pointwise.weight.shape == (c, c, 1, 1) and pointwise.bias is None
        assert isinstance(pointwise.norm, nn.GroupNorm)
        assert sum(p.numel() for p in conv.parameters()) == 9 * c + c * c + 2 * c
        with torch.no_grad():
            y = F.conv2d(x, depthwise.weight, padding=1, groups=c)
            torch.testing.assert_close(conv(x), _conv_ref(y, pointwise))
    # The whole decoder: the 1x1 input projections, the two repeats and the mask projection.
    mask_dim = cfg.MODEL.GLID.MASK_DIM
    proj = sum(s.channels * c + 2 * c for s in shapes.values())
    fusion_weights = 2 + 2 + 2 + 3 + 3 + 2  # per repeat: one weight per node input
    repeats = 6 * (9 * c * c + 2 * c) + 6 * (9 * c + c * c + 2 * c) + 2 * fusion_weights
    assert sum(p.numel() for p in decoder.parameters()) == proj + repeats + c * mask_dim + mask_dim
    feats = {
        n: torch.randn(1, s.channels, 64 // s.stride, 96 // s.stride) for n, s in shapes.items()
    }
    mask_features, multi_scale = decoder(feats)
    assert mask_features.shape == (1, mask_dim, 16, 24)
    assert [tuple(f.shape[-2:]) for f in multi_scale] == [(2, 3), (4, 6), (8, 12)]


def test_bifpn_norm_key_reaches_the_convs():
    cfg = make_tiny_cfg("MODEL.GLID.BIFPN.NORM", "BN", "MODEL.GLID.BIFPN.CONV_TYPES", "['conv']")
    shapes = {f"res{i + 2}": ShapeSpec(channels=8, stride=4 * 2**i) for i in range(4)}
    decoder = build_pixel_decoder(cfg, shapes)
    assert all(isinstance(c.norm, nn.BatchNorm2d) for c in decoder.layers[0].convs)
    assert all(isinstance(p.norm, nn.BatchNorm2d) for p in decoder.input_proj)


def test_bifpn_decoder_outputs_are_the_last_repeat_levels(monkeypatch):
    """mask features = the 1x1 projection of the last repeat's stride-4 map; the multi-scale
    features are its stride 32, 16, 8 maps, in that order."""
    cfg = make_tiny_cfg("MODEL.GLID.BIFPN.CONV_TYPES", "['sep', 'sep']")
    shapes = {f"res{i + 2}": ShapeSpec(channels=8, stride=4 * 2**i) for i in range(4)}
    decoder = build_pixel_decoder(cfg, shapes).eval()
    seen = []
    forward = bifpn.BiFPNLayer.forward
    monkeypatch.setattr(
        bifpn.BiFPNLayer, "forward", lambda self, f: seen.append(forward(self, f)) or seen[-1]
    )
    feats = {n: torch.randn(1, 8, 64 // s.stride, 64 // s.stride) for n, s in shapes.items()}
    with torch.no_grad():
        mask_features, multi_scale = decoder(feats)
    assert len(seen) == 2
    last = seen[-1]
    assert torch.equal(mask_features, decoder.mask_features(last[0]))
    assert all(a is b for a, b in zip(multi_scale, [last[3], last[2], last[1]], strict=True))


def test_bifpn_errors_name_the_key():
    shapes = {f"res{i + 2}": ShapeSpec(channels=8, stride=4 * 2**i) for i in range(4)}
    kw = dict(conv_dim=32, mask_dim=32, norm="GN")
    with pytest.raises(ValueError, match=r"'conv' or 'sep', got 'dw'"):
        bifpn.BiFPNPixelDecoder(shapes, conv_types=("dw",), **kw)
    with pytest.raises(ValueError, match=r"MODEL\.GLID\.BIFPN\.CONV_TYPES"):
        bifpn.BiFPNPixelDecoder(shapes, conv_types=(), **kw)
    del shapes["res3"]
    with pytest.raises(ValueError, match=r"BiFPN needs encoder features \['res3'\]"):
        bifpn.BiFPNPixelDecoder(shapes, conv_types=("sep",), **kw)


# ----------------------------------------------------------------------------------------------
# Multi-scale deformable attention encoder
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads,levels,points", [(8, 3, 4), (4, 2, 2), (6, 1, 3)])
def test_sampling_offsets_start_on_rays(heads, levels, points):
    """Deformable DETR's init: head m's offsets point along angle 2 pi m / M, scaled so the
    larger of |dx|, |dy| is 1, then p-th point (1-based) p steps out, the same on every level;
    zero weight matrices (offsets and weights do not depend on the query at first), uniform
    attention, zero projection biases."""
    attn = msdeformattn.MSDeformAttn(dim=24, num_levels=levels, num_heads=heads, num_points=points)
    bias = attn.sampling_offsets.bias.view(heads, levels, points, 2)
    for m in range(heads):
        angle = 2 * math.pi * m / heads
        dx, dy = math.cos(angle), math.sin(angle)
        scale = max(abs(dx), abs(dy))
        for lvl in range(levels):
            for p in range(points):
                want = torch.tensor([dx / scale * (p + 1), dy / scale * (p + 1)])
                torch.testing.assert_close(bias[m, lvl, p], want, rtol=1e-6, atol=1e-6)
    assert not attn.sampling_offsets.weight.any()
    assert not attn.attention_weights.weight.any() and not attn.attention_weights.bias.any()
    assert not attn.value_proj.bias.any() and not attn.output_proj.bias.any()
    assert attn.value_proj.weight.std() > 0 and attn.output_proj.weight.std() > 0


def test_sampling_offsets_eight_heads_by_hand():
    """M = 8: the eight compass directions, as Deformable DETR's grid (the first point)."""
    attn = msdeformattn.MSDeformAttn(dim=16, num_levels=1, num_heads=8, num_points=2)
    bias = attn.sampling_offsets.bias.view(8, 1, 2, 2)
    compass = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]
    torch.testing.assert_close(bias[:, 0, 0], torch.tensor(compass, dtype=torch.float32))
    torch.testing.assert_close(bias[:, 0, 1], 2 * torch.tensor(compass, dtype=torch.float32))


def test_initial_locations_and_weights_reach_the_op(monkeypatch):
    """At init every query samples ref + offset / (W, H) with uniform weights 1 / (L P)."""
    seen = {}
    real_op = msdeformattn.ms_deform_attn

    def spy(value, spatial_shapes, level_start_index, locations, weights):
        seen.update(value=value, locations=locations, weights=weights)
        return real_op(value, spatial_shapes, level_start_index, locations, weights)

    monkeypatch.setattr(msdeformattn, "ms_deform_attn", spy)
    heads, levels, points, dim = 4, 2, 2, 8
    attn = msdeformattn.MSDeformAttn(dim, levels, heads, points)
    shapes = [(3, 5), (2, 4)]
    ref = msdeformattn.encoder_reference_points(shapes, 1, "cpu")
    value = torch.randn(1, 15 + 8, dim)
    with torch.no_grad():
        out = attn(value, ref, value, torch.tensor(shapes), torch.tensor([0, 15]))
    assert out.shape == (1, 23, dim)
    assert seen["value"].shape == (1, 23, heads, dim // heads)
    locations, weights = seen["locations"], seen["weights"]
    assert locations.shape == (1, 23, heads, levels, points, 2)
    assert weights.shape == (1, 23, heads, levels, points)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / (levels * points)))
    q = 7  # any query; head 1 of 4 points up (+y): dy = p / H on each level
    for lvl, (h, w) in enumerate(shapes):
        for p in range(points):
            want = ref[0, q, lvl] + torch.tensor([0.0, (p + 1) / h])
            torch.testing.assert_close(locations[0, q, 1, lvl, p], want, rtol=0, atol=1e-6)
            want = ref[0, q, lvl] + torch.tensor([(p + 1) / w, 0.0])  # head 0: +x
            torch.testing.assert_close(locations[0, q, 0, lvl, p], want, rtol=0, atol=1e-6)


def test_msdeformattn_rejects_heads_not_dividing_dim():
    with pytest.raises(ValueError, match="dim 10 must be divisible by num_heads 4"):
        msdeformattn.MSDeformAttn(dim=10, num_levels=1, num_heads=4, num_points=2)


def _msdeform_decoder(*opts):
    cfg = make_tiny_cfg("MODEL.GLID.PIXEL_DECODER", "MSDeformAttn", *opts)
    backbone = build_backbone(cfg)
    return cfg, backbone, build_pixel_decoder(cfg, backbone.output_shape())


def test_msdeformattn_config_keys_reach_the_layers(monkeypatch):
    """NUM_LAYERS, NUM_HEADS, NUM_POINTS (here 2, not the default 4), DIM_FEEDFORWARD and
    DROPOUT shape every encoder layer; the op gets P = 2 locations per head and level."""
    cfg, backbone, decoder = _msdeform_decoder(
        "MODEL.GLID.MSDEFORMATTN.NUM_LAYERS", 2,
        "MODEL.GLID.MSDEFORMATTN.NUM_HEADS", 4,
        "MODEL.GLID.MSDEFORMATTN.NUM_POINTS", 2,
        "MODEL.GLID.MSDEFORMATTN.DIM_FEEDFORWARD", 48,
        "MODEL.GLID.MSDEFORMATTN.DROPOUT", 0.25,
    )  # fmt: skip
    d = cfg.MODEL.GLID.HIDDEN_DIM
    assert len(decoder.layers) == 2
    for layer in decoder.layers:
        attn = layer.self_attn
        assert (attn.num_heads, attn.num_levels, attn.num_points) == (4, 3, 2)
        assert attn.sampling_offsets.out_features == 4 * 3 * 2 * 2
        assert attn.attention_weights.out_features == 4 * 3 * 2
        assert layer.ffn[0].out_features == 48 and layer.ffn[3].in_features == 48
        dropouts = [m for m in layer.modules() if isinstance(m, nn.Dropout)]
        assert len(dropouts) == 2 and all(m.p == 0.25 for m in dropouts)
        assert layer.norm1.normalized_shape == (d,) and layer.norm2.normalized_shape == (d,)

    seen = []
    real_op = msdeformattn.ms_deform_attn

    def spy(value, spatial_shapes, level_start_index, locations, weights):
        seen.append((tuple(value.shape), tuple(locations.shape), tuple(weights.shape)))
        return real_op(value, spatial_shapes, level_start_index, locations, weights)

    monkeypatch.setattr(msdeformattn, "ms_deform_attn", spy)
    feats = backbone(torch.randn(1, 3, 64, 64))
    decoder.eval()
    with torch.no_grad():
        a = decoder(feats)
        b = decoder(feats)
    s = 2 * 2 + 4 * 4 + 8 * 8
    assert seen == [((1, s, 4, d // 4), (1, s, 4, 3, 2, 2), (1, s, 4, 3, 2))] * 4
    assert torch.equal(a[0], b[0])  # eval: no dropout
    decoder.train()
    with torch.no_grad():
        c = decoder(feats)
        e = decoder(feats)
    assert not torch.equal(c[0], e[0])  # training: the dropout of 0.25 draws


def test_msdeformattn_default_shape_and_norm():
    """The defaults of Mask2Former's encoder: 6 layers, 8 heads, 4 points, FFN 1024, GN."""
    _, _, decoder = _msdeform_decoder()
    assert len(decoder.layers) == 6
    attn = decoder.layers[0].self_attn
    assert (attn.num_heads, attn.num_levels, attn.num_points) == (8, 3, 4)
    assert decoder.layers[0].ffn[0].out_features == 1024
    assert isinstance(decoder.lateral_conv.norm, nn.GroupNorm)
    assert isinstance(decoder.output_conv.norm, nn.GroupNorm)
    assert decoder.output_conv.activation is F.relu


def test_msdeformattn_decoder_needs_its_features():
    shapes = {f"res{i + 2}": ShapeSpec(channels=32, stride=4 * 2**i) for i in range(4)}
    del shapes["res4"]
    with pytest.raises(ValueError, match=r"needs encoder features \['res4'\]"):
        msdeformattn.MSDeformAttnPixelDecoder(shapes, conv_dim=32, mask_dim=32)


def test_msdeformattn_encoder_inputs_and_fpn_output(monkeypatch):
    """The encoder reads the projected res5, res4, res3 maps (low resolution first), flattened,
    with the sine position of each pixel plus its level's embedding; each layer attends with
    query = src + pos over the values src (no position). The output is the FPN step: res2's
    lateral conv + the stride-8 encoder map upsampled (bilinear), 3x3 conv, 1x1 projection."""
    cfg, backbone, decoder = _msdeform_decoder("MODEL.GLID.MSDEFORMATTN.NUM_LAYERS", 1)
    decoder.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        decoder.level_embed.normal_()
        feats = backbone(torch.randn(1, 3, 64, 96))
    seen = {}
    layer = decoder.layers[0]
    attn_forward = layer.self_attn.forward

    def attn_spy(query, reference_points, value_input, spatial_shapes, level_start_index):
        seen.update(query=query, value_input=value_input)
        return attn_forward(query, reference_points, value_input, spatial_shapes, level_start_index)

    layer_forward = msdeformattn.MSDeformAttnEncoderLayer.forward

    def layer_spy(self, src, pos, reference_points, spatial_shapes, level_start_index):
        seen.update(src=src, pos=pos, starts=level_start_index.tolist())
        return layer_forward(self, src, pos, reference_points, spatial_shapes, level_start_index)

    monkeypatch.setattr(layer.self_attn, "forward", attn_spy)
    monkeypatch.setattr(msdeformattn.MSDeformAttnEncoderLayer, "forward", layer_spy)
    with torch.no_grad():
        mask_features, multi_scale = decoder(feats)
        srcs, pos = [], []
        for i, name in enumerate(["res5", "res4", "res3"]):
            x = decoder.input_proj[i](feats[name])
            srcs.append(x.flatten(2).transpose(1, 2))
            p = decoder.pos_embed(x).flatten(2).transpose(1, 2) + decoder.level_embed[i]
            pos.append(p)
        src, pos = torch.cat(srcs, 1), torch.cat(pos, 1)
        assert seen["starts"] == [0, 6, 30]  # 2 x 3, 4 x 6, 8 x 12
        torch.testing.assert_close(seen["src"], src)
        torch.testing.assert_close(seen["pos"], pos)
        torch.testing.assert_close(seen["query"], src + pos)
        torch.testing.assert_close(seen["value_input"], src)
        lateral = decoder.lateral_conv(feats["res2"])
        up = F.interpolate(multi_scale[-1], size=(16, 24), mode="bilinear", align_corners=False)
        want = decoder.mask_features(decoder.output_conv(lateral + up))
    torch.testing.assert_close(mask_features, want)
    assert [tuple(m.shape[-2:]) for m in multi_scale] == [(2, 3), (4, 6), (8, 12)]


def test_msdeformattn_maps_come_back_to_their_pixels(monkeypatch):
    """With identity encoder layers the multi-scale outputs are the projected inputs: the
    flattened tokens are split per level and put back at their own (channel, y, x)."""
    cfg, backbone, decoder = _msdeform_decoder("MODEL.GLID.MSDEFORMATTN.NUM_LAYERS", 1)
    monkeypatch.setattr(msdeformattn.MSDeformAttnEncoderLayer, "forward", lambda self, s, *a: s)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
        _, multi_scale = decoder.eval()(feats, with_mask_features=False)
        for i, name in enumerate(["res5", "res4", "res3"]):
            assert torch.equal(multi_scale[i], decoder.input_proj[i](feats[name])), name


def test_msdeformattn_decoder_runs_in_float64():
    """The decoder runs in float64 (as gradchecks and float64 references need): locations and
    weights at least float32, never below the features' precision."""
    cfg, backbone, decoder = _msdeform_decoder("MODEL.GLID.MSDEFORMATTN.NUM_LAYERS", 1)
    with torch.no_grad():
        feats = {k: v.double() for k, v in backbone(torch.randn(1, 3, 64, 64)).items()}
        mask_features, multi_scale = decoder.double()(feats)
    assert mask_features.dtype == torch.float64
    assert all(m.dtype == torch.float64 for m in multi_scale)
