"""The Swin encoder in detail: every MODEL.SWIN key reaches the blocks, the mask token, bf16
autocast, error messages (mutation-test gaps, issue 13)."""

import argparse

import pytest
import torch
from detectron2.modeling import build_backbone

from glid.modeling.backbone import D2SwinTransformer, swin
from tests.utils import make_tiny_cfg


def tiny_swin(**kw):
    args = dict(
        embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4,
        pretrain_img_size=64,
    )  # fmt: skip
    args.update(kw)
    return D2SwinTransformer(**args)


def _blocks(model):
    return [(i, block) for i, stage in enumerate(model.swin.layers) for block in stage.blocks]


def test_swin_config_keys_reach_the_blocks(monkeypatch):
    cfg = make_tiny_cfg(
        "MODEL.SWIN.EMBED_DIM", 16,
        "MODEL.SWIN.DEPTHS", [1, 2, 1, 1],
        "MODEL.SWIN.NUM_HEADS", [1, 2, 4, 8],
        "MODEL.SWIN.WINDOW_SIZE", 2,
        "MODEL.SWIN.MLP_RATIO", 2.5,
        "MODEL.SWIN.DROP_PATH_RATE", 0.3,
        "MODEL.SWIN.PRETRAIN_IMG_SIZE", 64,
        "MODEL.SWIN.OUT_FEATURES", ["res3", "res5"],
        "MODEL.SWIN.USE_CHECKPOINT", True,
    )  # fmt: skip
    model = build_backbone(cfg)
    assert isinstance(model, D2SwinTransformer)
    assert model.swin.patch_embed.proj.kernel_size == (4, 4)
    assert model.swin.patch_embed.proj.out_channels == 16
    assert [len(stage.blocks) for stage in model.swin.layers] == [1, 2, 1, 1]
    blocks = _blocks(model)
    drop_rates = []
    for i, block in blocks:
        dim = 16 * 2**i
        assert block.attn.num_heads == [1, 2, 4, 8][i]
        assert block.window_size == (2, 2)
        # MLP_RATIO: hidden width 2.5 x the stage's channels.
        assert block.mlp.fc1.in_features == dim and block.mlp.fc1.out_features == int(2.5 * dim)
        assert block.mlp.fc2.in_features == int(2.5 * dim)
        drop_rates.append(getattr(block.drop_path1, "drop_prob", 0.0))
    # Stochastic depth: linear from 0 to DROP_PATH_RATE over the 5 blocks.
    assert drop_rates == pytest.approx([0.0, 0.075, 0.15, 0.225, 0.3])
    assert list(model.output_shape()) == ["res3", "res5"]
    assert [s.channels for s in model.output_shape().values()] == [32, 128]
    assert sorted(model.output_norms) == ["res3", "res5"]

    calls = []
    real = swin.checkpoint
    monkeypatch.setattr(swin, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(1, 3, 64, 64)
    out = model.train()(x)
    assert sorted(out) == ["res3", "res5"] and len(calls) == 4  # one per stage in training
    model.eval()(x)
    assert len(calls) == 4  # none in inference


def test_every_output_goes_through_its_own_layer_norm():
    """Each res* map is its stage's tokens after that stage's LayerNorm, as NCHW."""
    torch.manual_seed(0)
    model = tiny_swin().eval()
    with torch.no_grad():
        for i, norm in enumerate(model.output_norms.values()):
            norm.weight.fill_(2.0 + i)
            norm.bias.fill_(-1.0 - i)
        out = model(torch.randn(2, 3, 64, 96))
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        mean, std = out[name].mean(1), out[name].std(1, unbiased=False)
        torch.testing.assert_close(mean, torch.full_like(mean, -1.0 - i), atol=1e-4, rtol=0)
        torch.testing.assert_close(std, torch.full_like(std, 2.0 + i), atol=1e-2, rtol=1e-3)


def test_swin_mlp_ratio_default_is_four():
    model = tiny_swin()
    assert all(b.mlp.fc1.out_features == 4 * 16 * 2**i for i, b in _blocks(model))
    model = tiny_swin(mlp_ratio=1.0)
    assert all(b.mlp.fc1.out_features == 16 * 2**i for i, b in _blocks(model))


def test_mask_token_shape_and_exact_values():
    """The token is (1, 1, 1, C); masked units take exactly its value (no blend), unmasked ones
    keep theirs bit for bit, for each image of the batch with its own mask, and for masks given
    as 0/1 floats or as bools on coarse or per-token grids."""
    torch.manual_seed(0)
    model = tiny_swin().eval()
    assert model.mask_token.shape == (1, 1, 1, 16) and model.mask_token.requires_grad
    assert 0 < model.mask_token.abs().max() < 0.1  # trunc-normal, std 0.02
    tokens = model.swin.patch_embed(torch.randn(2, 3, 64, 96))  # (2, 16, 24, 16) NHWC
    assert tokens.shape == (2, 16, 24, 16)
    token = model.mask_token[0, 0, 0]
    # One cell per 32 x 32 px unit (8 x 8 tokens): 2 x 3 cells.
    coarse = torch.tensor([[[1, 0, 0], [0, 0, 1]], [[0, 1, 0], [0, 0, 0]]], dtype=torch.float32)
    fine = torch.zeros(2, 16, 24, dtype=torch.bool)
    fine[0, 3, 5] = fine[1, 15, 0] = True
    for mask in (coarse, coarse.bool(), fine):
        mixed = model._apply_mask_token(tokens, mask)
        cell = tokens.shape[1] // mask.shape[1]
        per_token = mask.bool().repeat_interleave(cell, 1).repeat_interleave(cell, 2)
        assert mixed.shape == tokens.shape and mixed.dtype == tokens.dtype
        assert torch.equal(mixed[per_token], token.expand(int(per_token.sum()), -1))
        assert torch.equal(mixed[~per_token], tokens[~per_token])
    # A mask of zeros changes nothing.
    assert torch.equal(model._apply_mask_token(tokens, torch.zeros(2, 2, 3)), tokens)


def test_masked_forward_gets_gradient_into_the_token():
    model = tiny_swin()
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = True
    out = model(torch.randn(1, 3, 64, 64), mask=mask)
    out["res5"].sum().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    model.zero_grad()
    model(torch.randn(1, 3, 64, 64))["res5"].sum().backward()
    assert model.mask_token.grad is None or not model.mask_token.grad.any()


@pytest.mark.parametrize(
    "shape,pattern",
    [
        ((1, 2, 2), r"mask must be \(B=2, h, w\) .* patch grid 16x24, got \(1, 2, 2\)"),
        ((2, 3, 3), r"patch grid 16x24, got \(2, 3, 3\)"),  # 3 does not divide 16
        ((2, 2, 5), r"got \(2, 2, 5\)"),  # 5 does not divide 24
        ((2, 16), r"got \(2, 16\)"),  # no batch of 2-D masks
    ],
)
def test_bad_mask_shape_names_the_shapes(shape, pattern):
    model = tiny_swin()
    with pytest.raises(ValueError, match=pattern):
        model(torch.randn(2, 3, 64, 96), mask=torch.ones(shape, dtype=torch.bool))


def test_bad_config_errors_name_the_values():
    with pytest.raises(ValueError, match=r"4 stages, got depths=\(1, 1, 1\)"):
        tiny_swin(depths=(1, 1, 1))
    with pytest.raises(ValueError, match=r"num_heads=\(1, 2\)"):
        tiny_swin(num_heads=(1, 2))
    with pytest.raises(ValueError, match=r"unknown Swin output 'res6'"):
        tiny_swin(out_features=("res2", "res6"))
    with pytest.raises(ValueError, match=r"multiples of 32, got \(1, 3, 64, 48\)"):
        tiny_swin()(torch.randn(1, 3, 64, 48))
    with pytest.raises(ValueError, match=r"got \(3, 64, 64\)"):
        tiny_swin()(torch.randn(3, 64, 64))


def test_bf16_autocast_on_cpu():
    """Under CPU bf16 autocast the encoder runs (masked too) and returns bf16 maps of the right
    shapes, close to the float32 ones (a few bf16 roundings per block)."""
    torch.manual_seed(0)
    model = tiny_swin().eval()
    x = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 2, 3, dtype=torch.bool)
    mask[:, 0, 0] = True
    with torch.no_grad():
        ref = model(x, mask=mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, mask=mask)
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        stride = 4 * 2**i
        assert out[name].shape == (2, 16 * 2**i, 64 // stride, 96 // stride)
        assert out[name].dtype == torch.bfloat16
        assert out[name].is_contiguous()
        torch.testing.assert_close(out[name].float(), ref[name], atol=0.1, rtol=0.05)


def test_patch_size_and_pretrain_size_from_config():
    """PATCH_SIZE sets the first stride (the outputs follow: 2, 4, 8, 16 for 2);
    PRETRAIN_IMG_SIZE the grid the windows and position tables are built for."""
    cfg = make_tiny_cfg(
        "MODEL.SWIN.EMBED_DIM", 16,
        "MODEL.SWIN.DEPTHS", [1, 1, 1, 1],
        "MODEL.SWIN.PATCH_SIZE", 2,
        "MODEL.SWIN.PRETRAIN_IMG_SIZE", 64,
    )  # fmt: skip
    model = build_backbone(cfg).eval()
    assert model.swin.patch_embed.proj.kernel_size == (2, 2)
    assert tuple(model.swin.patch_embed.img_size) == (64, 64)
    assert tuple(model.swin.patch_embed.grid_size) == (32, 32)
    assert [s.stride for s in model.output_shape().values()] == [2, 4, 8, 16]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[-2:]) for o in out.values()] == [(32, 48), (16, 24), (8, 12), (4, 6)]


def test_checkpointed_stages_train_with_a_frozen_patch_embedding():
    """Non-reentrant checkpointing: with the patch embedding frozen (its tokens need no
    gradient), the checkpointed stages still get gradients, the same as without checkpoints."""
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = tiny_swin(use_checkpoint=use_checkpoint, drop_path_rate=0.0).train()
        model.swin.patch_embed.requires_grad_(False)
        model(torch.randn(1, 3, 64, 64))["res5"].square().sum().backward()
        grad = model.swin.layers[0].blocks[0].mlp.fc1.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0])


# ---- Window attention: padding masked, masks cached (issue 14) ----


def dense_window_attention(block, x):
    """Reference: attention over the whole unpadded (B, H, W, C) grid, a token seeing the tokens
    of its window, windows laid at the block's shift and clipped at the image border
    (``(y - shift) // window`` equal on both axes), with the relative-position bias by offset."""
    attn = block.attn
    b, h, w, c = x.shape
    (wh, ww), (sh, sw) = block.window_size, block.shift_size
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    gy, gx = (ys - sh).div(wh, rounding_mode="floor"), (xs - sw).div(ww, rounding_mode="floor")
    same = (gy[:, None] == gy[None]) & (gx[:, None] == gx[None])
    index = (ys[:, None] - ys[None] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None] + ww - 1)
    table = attn.relative_position_bias_table
    bias = table[index.clamp(0, table.shape[0] - 1)].permute(2, 0, 1)
    bias = bias.masked_fill(~same, float("-inf"))
    qkv = attn.qkv(x.reshape(b, h * w, c)).reshape(b, h * w, 3, attn.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = ((q * attn.scale) @ k.transpose(-2, -1) + bias).softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, h * w, c)).reshape(b, h, w, c)


def _window_blocks(window):
    torch.manual_seed(0)
    model = tiny_swin(window_size=window, depths=(2, 2, 2, 2), pretrain_img_size=256).eval()
    with torch.no_grad():  # a bias that differs per offset and head
        for _, block in _blocks(model):
            block.attn.relative_position_bias_table.normal_(0, 1.0)
    plain, shifted = model.swin.layers[1].blocks
    assert plain.shift_size == (0, 0) and shifted.shift_size == (window // 2,) * 2
    return plain, shifted


@pytest.mark.parametrize("window", [4, 5])
def test_reference_matches_timm_where_the_window_tiles(window):
    """The dense reference is Swin's attention: equal to timm's block on grids the window tiles
    (no padding there), shifted or not."""
    for block in _window_blocks(window):
        x = torch.randn(2, 2 * window, 3 * window, 32)
        with torch.no_grad():
            expected = swin.SwinTransformerBlock._attn(block, x)  # timm's own
            torch.testing.assert_close(dense_window_attention(block, x), expected)
            torch.testing.assert_close(swin.window_attention(block, x), expected)


@pytest.mark.parametrize("window", [4, 5, 7])
@pytest.mark.parametrize("grid", [(9, 13), (6, 6), (3, 11), (15, 8)])
def test_padded_grids_mask_the_padding(window, grid):
    """On grids the window does not tile, the padded attention equals the unpadded reference:
    padding masked, a shifted window never joins tokens from opposite borders. (timm 1.0's own
    block does not: it pads after the shift and lets tokens attend to the padding.)"""
    for block in _window_blocks(window):
        x = torch.randn(2, *grid, 32)
        with torch.no_grad():
            torch.testing.assert_close(
                swin.window_attention(block, x), dense_window_attention(block, x)
            )


def test_padded_grid_gradients_are_finite_and_match_the_reference():
    """Padded queries whose part of a shifted window is all padding (6 and 12 tokens padded to
    10 and 15, shift 2) must not turn backward into NaN."""
    _, block = _window_blocks(5)
    block.train()
    grads = []
    for fn in (swin.window_attention, dense_window_attention):
        x = torch.randn(1, 6, 12, 32, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(True)
        fn(block, x).square().sum().backward()
        table = block.attn.relative_position_bias_table
        grads.append((x.grad, table.grad.clone()))
        table.grad = None
    for got, want in zip(*grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # Such queries exist here, and keep a key (themselves): softmax over -inf only is NaN in
    # kernels without torch's safe softmax.
    mask = swin.window_attention_mask(6, 12, (5, 5), (2, 2), torch.device("cpu"))
    assert (mask == 0).any(-1).all()
    assert ((mask == 0).sum(-1) == 1).any()  # queries that see themselves only


def test_encoder_matches_timm_where_the_window_tiles():
    """Same parameters, same result as a plain timm Swin on a size every stage tiles; every
    block of the encoder runs our attention."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = tiny_swin(depths=(2, 2, 2, 2), pretrain_img_size=128).eval()
    assert all(type(b) is swin.MaskedWindowSwinBlock for _, b in _blocks(model))
    timm_model = SwinTransformer(
        img_size=128, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
        window_size=4, strict_img_size=False, num_classes=0,
    ).eval()  # fmt: skip
    timm_model.norm = torch.nn.Identity()
    timm_model.load_state_dict(model.swin.state_dict())
    timm_blocks = [b for stage in timm_model.layers for b in stage.blocks]
    assert not any(type(b) is swin.MaskedWindowSwinBlock for b in timm_blocks)
    x = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        expected = model.output_norms["res5"](timm_model.forward_features(x))
        out = model(x)["res5"].permute(0, 2, 3, 1)
    torch.testing.assert_close(out, expected)


def test_attention_masks_are_built_once_per_size(monkeypatch):
    """A second forward at the same size builds no mask; timm's per-forward builder never runs."""
    monkeypatch.setattr(
        swin.SwinTransformerBlock, "get_attn_mask", lambda *a, **k: pytest.fail("timm mask")
    )
    model = tiny_swin(depths=(2, 2, 2, 2), pretrain_img_size=128).eval()
    cached = (swin.window_attention_mask, swin.window_token_order)
    for fn in cached:
        fn.cache_clear()
    x = torch.randn(1, 3, 96, 160)  # grids 24x40, 12x20, 6x10 (padded), 3x5 (padded)
    with torch.no_grad():
        model(x)
        first = [fn.cache_info() for fn in cached]
        model(x)
        second = [fn.cache_info() for fn in cached]
    # One entry per (grid, shift): stages 1-3 x {unshifted, shifted}, stage 4 unshifted only
    # (its grid at the pre-training size, 4x4, is one window), shared by its two blocks.
    for info in first:
        assert info.misses == 7 and info.hits == 1
    for info in second:
        assert info.misses == 7 and info.hits == 9
    # The window order visits every token once; padding slots (6x10 -> 8x12) repeat token 0.
    order, inverse = swin.window_token_order(6, 10, (4, 4), (2, 2), x.device)
    assert order.shape == (8 * 12,) and torch.equal(order[inverse], torch.arange(60))
    assert (order == 0).sum() == 8 * 12 - 60 + 1
    # None where nothing is masked: tiled and unshifted.
    assert swin.window_attention_mask(24, 40, (4, 4), (0, 0), x.device) is None
    mask = swin.window_attention_mask(6, 10, (4, 4), (0, 0), x.device)
    assert mask.shape == (2 * 3, 16, 16)


def test_window_size_and_pretrain_size_set_every_stage():
    """Stages whose grid at the pre-training size is smaller than the window use that grid,
    unshifted (timm): 224 with window 8 leaves stage 4 at 7; 256 keeps 8 everywhere."""
    assert tiny_swin(window_size=8, pretrain_img_size=224).stage_windows[-1] == (7, 7)
    model = tiny_swin(window_size=8, pretrain_img_size=256)
    assert model.stage_windows == [(8, 8)] * 4
    assert model.swin.layers[2].blocks[0].shift_size == (0, 0)
    assert [b.shift_size for b in model.swin.layers[3].blocks] == [(0, 0)]


def test_window_benchmark_runs_both_implementations(monkeypatch, capsys):
    """tools/benchmark_window.py on the tiny config: one row per window, timm's blocks for the
    ``-timm`` variant and ours for the other, ratios to the reference."""
    from timm.models.swin_transformer import SwinTransformerBlock

    from tools import benchmark_window

    calls = {"timm": 0, "ours": 0}
    timm_attn, ours = SwinTransformerBlock._attn, swin.window_attention

    def count_timm(self, x):
        calls["timm"] += 1
        return timm_attn(self, x)

    def count_ours(block, x):
        calls["ours"] += 1
        return ours(block, x)

    monkeypatch.setattr(SwinTransformerBlock, "_attn", count_timm)
    monkeypatch.setattr(swin, "window_attention", count_ours)
    medians = benchmark_window.main(
        [
            "--config-file", "configs/quickstart/glid_synth_sem_tiny.yaml",
            "--sizes", "64", "--windows", "4-timm", "4", "4-bf16",
            "--repeats", "1", "--warmup", "0", "--device", "cpu",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert calls["timm"] > 0 and calls["ours"] > 0
    assert len(medians) == 3 * 4 and all(v > 0 for v in medians.values())
    assert benchmark_window.parse_variant("7-timm-bf16") == (7, True, True)
    assert benchmark_window.parse_variant("8") == (8, False, False)
    with pytest.raises(argparse.ArgumentTypeError, match="N-bf16"):
        benchmark_window.parse_variant("7-bf16-timm")
    assert "machine: " in out and "speed-up over window 4-timm" in out
    assert " 64  4-timm 16/4 8/4 4/4 2>4/4" in out  # stage 4: 2 tokens padded to one window


def test_fvcore_counts_the_window_attention():
    """tools/analyze_model.py counts with fvcore, which skips SDPA: traced, the attention is
    written as matmuls, so the encoder's count equals timm's blocks' (same padded windows)."""
    from fvcore.nn import FlopCountAnalysis

    from tools.benchmark_window import timm_blocks

    model = tiny_swin(depths=(2, 2, 2, 2), pretrain_img_size=128).eval()
    x = torch.randn(1, 3, 96, 160)  # stages 3 and 4 padded
    counts = []
    for timm in (False, True):
        with timm_blocks(model, timm), torch.no_grad():
            flops = FlopCountAnalysis(model, (x,))
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            counts.append(flops.by_operator())
    assert counts[0]["matmul"] == counts[1]["matmul"] > 0
    assert counts[0] == counts[1]
