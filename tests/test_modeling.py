"""Shapes and contracts of the model parts and the GLID meta-architecture."""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances

from glid.modeling import GLIDQueries, GLIDTransformerDecoder, LinearTaskHead, regular_grid_points
from glid.modeling.backbone import D2SwinTransformer
from glid.modeling.pixel_decoder import build_pixel_decoder
from tests.utils import make_tiny_cfg


def tiny_swin(**kw):
    args = dict(
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 2, 4),
        window_size=4,
        pretrain_img_size=64,
    )
    args.update(kw)
    return D2SwinTransformer(**args)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (32, 32)])
def test_swin_outputs_four_stages_for_any_multiple_of_32(size):
    swin = tiny_swin().eval()
    feats = swin(torch.randn(2, 3, *size))
    h, w = size
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        stride = 4 * 2**i
        assert feats[name].shape == (2, 16 * 2**i, h // stride, w // stride)
        assert swin.output_shape()[name].stride == stride
        assert swin.output_shape()[name].channels == 16 * 2**i


def test_swin_b_default_is_swin_b():
    swin = D2SwinTransformer()
    n = sum(p.numel() for p in swin.parameters())
    # timm's Swin-B without classifier is 86.7M; + 4 output norms and the mask token.
    assert 86.5e6 < n < 87.5e6
    assert [s.channels for s in swin.output_shape().values()] == [128, 256, 512, 1024]


def test_swin_rejects_sizes_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_swin()(torch.randn(1, 3, 64, 48))


def test_mask_token_replaces_masked_units_only():
    swin = tiny_swin().eval()
    x = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)  # 2x2 units of 32x32 px
    tokens = swin.swin.patch_embed(x)
    mixed = swin._apply_mask_token(tokens, mask | torch.tensor([[[True, False], [False, False]]]))
    assert torch.equal(mixed[0, 8:, :], tokens[0, 8:, :])  # bottom units untouched
    assert torch.equal(mixed[0, :8, 8:], tokens[0, :8, 8:])  # top-right untouched
    assert torch.allclose(mixed[0, :8, :8], swin.mask_token[0, 0].expand(8, 8, -1))
    # The output changes where the image is masked.
    out_masked = swin(x, mask=torch.ones(1, 2, 2, dtype=torch.bool))["res5"]
    assert not torch.allclose(out_masked, swin(x)["res5"])
    with pytest.raises(ValueError, match="mask must be"):
        swin(x, mask=torch.ones(1, 3, 3))


def test_pixel_decoder_bifpn_shapes():
    cfg = make_tiny_cfg()
    swin = tiny_swin(embed_dim=32)
    decoder = build_pixel_decoder(cfg, swin.output_shape())
    mask_features, multi_scale = decoder(swin(torch.randn(2, 3, 96, 128)))
    assert mask_features.shape == (2, cfg.MODEL.GLID.MASK_DIM, 24, 32)
    assert [tuple(f.shape) for f in multi_scale] == [(2, 64, 3, 4), (2, 64, 6, 8), (2, 64, 12, 16)]


@pytest.mark.parametrize("n", [1, 16, 17, 100, 300])
def test_regular_grid_points(n):
    pts = regular_grid_points(n)
    assert pts.shape == (n, 2)
    assert (pts > 0).all() and (pts < 1).all()
    assert len({tuple(p.tolist()) for p in pts}) == n  # distinct
    rows = math.isqrt(n)
    assert len(torch.unique(pts[:, 1])) == rows


def test_queries_share_content_and_differ_in_position():
    q = GLIDQueries(32, num_queries=9)
    content, pos = q(batch_size=2)
    assert content.shape == pos.shape == (2, 9, 32)
    assert torch.equal(content[0, 0], content[1, 8])  # one [M] embedding
    assert not torch.allclose(pos[0, 0], pos[0, 1])
    content, pos = q(2, with_cls=True)
    assert content.shape == (2, 10, 32) and torch.equal(content[0, -1], q.cls_query[0])
    assert torch.equal(pos[:, -1], torch.zeros(2, 32))
    points = torch.rand(2, 5, 2)
    assert q(2, points=points)[1].shape == (2, 5, 32)
    # Grid positions are derived (not saved); learnable ones are parameters.
    assert "grid_points" not in q.state_dict()
    assert "grid_points" in dict(GLIDQueries(32, 9, learnable_positions=True).named_parameters())


def _decoder(num_layers=4):
    return GLIDTransformerDecoder(
        hidden_dim=32, num_layers=num_layers, num_heads=4, dim_feedforward=64
    )


def test_decoder_predicts_each_layer_once():
    dec = _decoder(4)
    feats = [torch.randn(2, 32, s, s) for s in (2, 4, 8)]
    q, pos = torch.zeros(2, 5, 32), torch.randn(2, 5, 32)
    calls = []

    def predict(hidden, mask_size):
        calls.append(mask_size)
        return {"h": hidden}, None

    outs = dec(q, pos, feats, predict)
    assert len(outs) == 4 and all(o["h"].shape == (2, 5, 32) for o in outs)
    assert calls == [None] * 4  # one prediction per layer, no attention mask asked for
    calls.clear()
    dec.eval()

    def predict_with_mask(hidden, size):
        calls.append(size)
        return {"h": hidden}, torch.zeros(
            2, 5, size[0] * size[1], dtype=torch.bool
        ) if size else None

    outs = dec(q, pos, feats, predict_with_mask, True, False)
    assert len(outs) == 1  # inference keeps the last layer only...
    assert calls == [(4, 4), (8, 8), (2, 2), None]  # ...but masks need every earlier layer
    calls.clear()
    dec(q, pos, feats, lambda h, s: (calls.append(s) or {"h": h}, None), False, False)
    assert calls == [None]  # no masked attention: only the last layer is predicted


def test_decoder_attention_mask_position_by_position_and_head_by_head(monkeypatch):
    """The mask a layer gets is the previous layer's prediction, per image, repeated for each
    head (batch-major: image b's heads at rows b*heads .. b*heads+heads-1); a fully blocked query
    attends everywhere."""
    dec = _decoder(2)
    feats = [torch.randn(2, 32, s, s) for s in (2, 3, 4)]
    q, pos = torch.zeros(2, 5, 32), torch.randn(2, 5, 32)
    g = torch.Generator().manual_seed(0)
    blocked = torch.rand(2, 5, 9, generator=g) > 0.5  # next level is 3x3
    blocked[1, 2] = True  # image 1, query 2: blocked everywhere
    seen = []
    layer_forward = type(dec.layers[1]).forward

    def spy(self, query, query_pos, memory, memory_pos, attn_mask=None):
        seen.append(attn_mask)
        return layer_forward(self, query, query_pos, memory, memory_pos, attn_mask)

    monkeypatch.setattr(type(dec.layers[1]), "forward", spy)
    dec(q, pos, feats, lambda h, size: ({"h": h}, blocked if size else None), True)
    assert seen[0] is None  # the first layer sees everything
    mask = seen[1]
    assert mask.shape == (2 * 4, 5, 9) and mask.dtype == torch.bool
    for b in range(2):
        for head in range(4):
            for n in range(5):
                for p in range(9):
                    want = bool(blocked[b, n, p]) and not (b == 1 and n == 2)
                    assert bool(mask[b * 4 + head, n, p]) == want, (b, head, n, p)
    assert blocked[1, 2].all()  # the caller's tensor is not modified


def test_linear_task_head_splits():
    head = LinearTaskHead(8, {"pred_logits": 3, "mask_embed": 5})
    assert isinstance(head, torch.nn.Linear) and head.out_features == 8
    parts = head.split(torch.randn(2, 4, 8))
    assert parts["pred_logits"].shape == (2, 4, 3) and parts["mask_embed"].shape == (2, 4, 5)
    assert LinearTaskHead(8, {"a": 1, "b": 1}).out_features == 2  # size 1 is a size
    with pytest.raises(ValueError, match=r"head splits must be positive sizes, got \{'a': 0\}"):
        LinearTaskHead(8, {"a": 0})
    with pytest.raises(ValueError, match=r"got \{\}"):
        LinearTaskHead(8, {})


def _sem_inputs(n, size=(64, 64), num_classes=9):
    inputs = []
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        sem = torch.randint(0, num_classes, size, generator=g)
        inst = Instances(size)
        classes = torch.unique(sem)
        inst.gt_classes = classes
        inst.gt_masks = BitMasks(sem[None] == classes[:, None, None])
        inputs.append(
            {"image": torch.randint(0, 256, (3, *size), generator=g).float(), "instances": inst}
        )
    return inputs


def test_glid_children_and_task_dispatch(tiny_cfg):
    model = build_model(tiny_cfg)
    names = [n for n, _ in model.named_children()]
    assert names[:5] == ["backbone", "pixel_decoder", "decoder", "queries", "head"]
    assert isinstance(model.head, torch.nn.Linear)
    assert model.head.out_features == 9 + 1 + tiny_cfg.MODEL.GLID.MASK_DIM
    assert sum(p.numel() for p in model.task.parameters()) == 0


def test_glid_semantic_train_and_inference(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    model.train()
    losses = model(_sem_inputs(2))
    num_layers = tiny_cfg.MODEL.GLID.DECODER.NUM_LAYERS
    assert len(losses) == 3 * num_layers
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert (
        model.head.weight.grad is not None
        and model.backbone.swin.patch_embed.proj.weight.grad is not None
    )
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 70, 90) * 255, "height": 35, "width": 45}])
    assert out[0]["sem_seg"].shape == (9, 35, 45)
    assert torch.isfinite(out[0]["sem_seg"]).all()


def test_glid_image_without_labels_gives_finite_loss(tiny_cfg):
    model = build_model(tiny_cfg)
    model.train()
    inputs = _sem_inputs(1)
    inputs[0]["instances"] = inputs[0]["instances"][[]]  # all pixels ignored
    losses = model(inputs)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0


def test_unknown_task_and_decoder_are_clear_errors():
    # (a name no task will ever take: each of GLID's task names gets implemented in turn)
    with pytest.raises(KeyError, match="not implemented"):
        build_model(make_tiny_cfg("MODEL.GLID.TASK", "no_such_task"))
    with pytest.raises(KeyError, match="NoSuchDecoder"):
        build_model(make_tiny_cfg("MODEL.GLID.PIXEL_DECODER", "NoSuchDecoder"))


def test_bad_image_shape_names_the_file(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    with pytest.raises(ValueError, match="bad.png"):
        model([{"image": torch.zeros(1, 32, 32), "file_name": "bad.png"}])


@pytest.mark.parametrize("mask_attention", [True, False])
def test_inference_predicts_only_what_it_needs(monkeypatch, mask_attention):
    """Training predicts every layer once; inference only the last one, plus the earlier ones
    that masked attention needs for its masks."""
    cfg = make_tiny_cfg("MODEL.GLID.DECODER.MASK_ATTENTION", str(mask_attention))
    model = build_model(cfg)
    calls = []
    predictions = type(model.task).predictions

    def counting(self, *args):
        calls.append(1)
        return predictions(self, *args)

    monkeypatch.setattr(type(model.task), "predictions", counting)
    num_layers = cfg.MODEL.GLID.DECODER.NUM_LAYERS
    model.train()
    model(_sem_inputs(1))
    assert len(calls) == num_layers
    calls.clear()
    model.eval()
    with torch.no_grad():
        model([{"image": torch.zeros(3, 64, 64)}])
    assert len(calls) == (num_layers if mask_attention else 1)


def test_learnable_query_positions_from_config():
    model = build_model(make_tiny_cfg("MODEL.GLID.LEARNABLE_QUERY_POSITIONS", "True"))
    params = dict(model.named_parameters())
    assert "queries.grid_points" in params and params["queries.grid_points"].requires_grad
    assert "queries.grid_points" not in dict(build_model(make_tiny_cfg()).named_parameters())
