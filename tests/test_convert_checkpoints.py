"""The converters of public Swin checkpoints (tools/convert-*-swin-to-d2.py) on tiny files written
in the public key layouts: Microsoft's official one, timm's, SimMIM's pre-training and fine-tuning.
"""

import argparse
import importlib.util
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from tests.utils import REPO_ROOT, TINY_CONFIG
from tools.swin_checkpoint_conversion import build_target_encoder

EMBED = 32
# The tiny Swin of the quick-start configs, spelled out so that the files written here keep
# fitting the target whatever those configs become.
SWIN_OPTS = [
    *("MODEL.SWIN.EMBED_DIM", str(EMBED), "MODEL.SWIN.DEPTHS", "[1, 1, 2, 1]"),
    *("MODEL.SWIN.NUM_HEADS", "[1, 2, 4, 8]", "MODEL.SWIN.WINDOW_SIZE", "4"),
    *("MODEL.SWIN.PRETRAIN_IMG_SIZE", "128"),
]


def _load_tool(name):
    path = os.path.join(REPO_ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUPERVISED = _load_tool("convert-pretrained-swin-to-d2")
SIMMIM = _load_tool("convert-simmim-swin-to-d2")


@pytest.fixture(scope="module")
def timm_swin():
    """A tiny timm Swin with classifier and final norm, as the public files were trained."""
    torch.manual_seed(0)
    model = SwinTransformer(
        img_size=128,
        embed_dim=EMBED,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        num_classes=10,
    )
    return model.eval()


def timm_state_dict(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def official_state_dict(model):
    """timm's weights renamed to Microsoft's layout: downsample at the end of stage i (not at the
    start of stage i + 1), ``head.*``, and the buffers the official files store."""
    out = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v.clone()
    for k, v in model.named_buffers():  # relative_position_index, attn_mask (shifted blocks)
        out[k] = v.clone()
    return out


def convert(tool, tmp_path, source, *opts, allow_pickle=False, name="source.pth"):
    path = str(tmp_path / name)
    if name.endswith(".safetensors"):
        save_file(source, path)
    else:
        torch.save(source, path)
    out = str(tmp_path / "converted.pkl")
    flags = ["--allow-pickle"] if allow_pickle else []
    result = tool.main(
        ["--config-file", TINY_CONFIG, *flags, path, out, "--opts", *SWIN_OPTS, *opts]
    )
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is False and "__author__" in data
    assert data["model"].keys() == result.model.keys()
    return result, {k: torch.from_numpy(v) for k, v in data["model"].items()}


def load_into_fresh_encoder(weights, *opts):
    """Load converted weights into a new encoder; returns it and (missing, unexpected)."""
    assert all(k.startswith("backbone.") for k in weights)
    encoder = build_target_encoder(TINY_CONFIG, [*SWIN_OPTS, *opts])
    incompatible = encoder.load_state_dict(
        {k[len("backbone.") :]: v for k, v in weights.items()}, strict=False
    )
    return encoder, incompatible


def test_official_layout_loads_with_only_new_parts_missing(timm_swin, tmp_path):
    source = official_state_dict(timm_swin)
    assert "layers.0.downsample.reduction.weight" in source  # really the official layout
    assert any(k.endswith("attn_mask") for k in source)
    result, weights = convert(SUPERVISED, tmp_path, {"model": source})

    encoder, incompatible = load_into_fresh_encoder(weights)
    assert incompatible.unexpected_keys == []
    assert sorted(incompatible.missing_keys) == sorted(
        ["mask_token"]
        + [f"output_norms.res{i}.{p}" for i in range(2, 6) for p in ("weight", "bias")]
    )
    # The downsample merging the end of stage i lands at the start of stage i + 1 (timm).
    for i in range(3):
        for p in ("reduction.weight", "norm.weight", "norm.bias"):
            got = weights[f"backbone.swin.layers.{i + 1}.downsample.{p}"]
            assert torch.equal(got, source[f"layers.{i}.downsample.{p}"])
    for name in (
        "patch_embed.proj.weight",
        "patch_embed.norm.bias",
        "layers.2.blocks.1.attn.qkv.weight",
        "layers.3.blocks.0.attn.relative_position_bias_table",
    ):
        assert torch.equal(weights["backbone.swin." + name], source[name])
    # Everything the encoder has equals timm's own tensors.
    for k, v in encoder.swin.state_dict().items():
        assert torch.equal(v, timm_swin.state_dict()[k]), k
    assert set(result.dropped["classifier head"]) == {"head.weight", "head.bias"}
    assert set(result.dropped["final norm (GLID normalizes each output stage)"]) == {
        "norm.weight",
        "norm.bias",
    }
    assert len(result.dropped["non-persistent buffers"]) == sum(1 for _ in timm_swin.buffers())
    assert result.resized == {}


def test_timm_layout_safetensors_from_the_command_line(timm_swin, tmp_path):
    src = str(tmp_path / "model.safetensors")
    save_file(timm_state_dict(timm_swin), src)
    out = str(tmp_path / "converted.pkl")
    tool = os.path.join(REPO_ROOT, "tools", "convert-pretrained-swin-to-d2.py")
    run = subprocess.run(
        [sys.executable, tool, "--config-file", TINY_CONFIG, src, out, "--opts", *SWIN_OPTS],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stderr and "classifier head" in run.stderr
    with open(out, "rb") as f:
        weights = {k: torch.from_numpy(v) for k, v in pickle.load(f)["model"].items()}
    encoder, incompatible = load_into_fresh_encoder(weights)
    assert incompatible.unexpected_keys == []
    assert all(
        k.startswith("output_norms.") or k == "mask_token" for k in incompatible.missing_keys
    )
    for k, v in encoder.swin.state_dict().items():
        assert torch.equal(v, timm_swin.state_dict()[k]), k


def test_tables_are_resized_to_the_target_window(timm_swin, tmp_path):
    source = {"model": official_state_dict(timm_swin)}
    opts = ["MODEL.SWIN.WINDOW_SIZE", "8"]
    result, weights = convert(SUPERVISED, tmp_path, source, *opts)

    encoder, incompatible = load_into_fresh_encoder(weights, *opts)
    assert incompatible.unexpected_keys == []
    tables = {k: v for k, v in encoder.swin.state_dict().items() if k.endswith("bias_table")}
    for k, target in tables.items():
        assert weights["backbone.swin." + k].shape == target.shape
    # Stages 1-3 get 8x8 windows (15 * 15 offsets); stage 4 (4x4 tokens) keeps its window 4.
    assert tables["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (225, 1)
    assert result.resized == {
        k: ((49, v.shape[1]), (225, v.shape[1])) for k, v in tables.items() if v.shape[0] == 225
    }
    assert len(result.resized) == 4
    kept = "layers.3.blocks.0.attn.relative_position_bias_table"
    assert torch.equal(weights["backbone.swin." + kept], source["model"][kept])


def simmim_pretrain_checkpoint(model):
    """SimMIM's layout: the Swin encoder (no head) under ``encoder.``, the mask token (1, 1, C),
    a 1x1-conv pixel decoder, and training state beside the weights."""
    encoder = {
        "encoder." + k: v
        for k, v in official_state_dict(model).items()
        if not k.startswith("head.")
    }
    encoder["encoder.mask_token"] = torch.randn(1, 1, EMBED)
    encoder["decoder.0.weight"] = torch.randn(32 * 32 * 3, 8 * EMBED, 1, 1)
    encoder["decoder.0.bias"] = torch.randn(32 * 32 * 3)
    return {"model": encoder, "epoch": 799, "config": argparse.Namespace(DATA="imagenet")}


def test_simmim_pretraining_keeps_the_mask_token(timm_swin, tmp_path):
    source = simmim_pretrain_checkpoint(timm_swin)
    with pytest.raises(ValueError, match="--allow-pickle"):
        convert(SIMMIM, tmp_path, source)
    result, weights = convert(SIMMIM, tmp_path, source, allow_pickle=True)

    encoder, incompatible = load_into_fresh_encoder(weights)
    assert incompatible.unexpected_keys == []
    assert all(k.startswith("output_norms.") for k in incompatible.missing_keys)
    assert len(incompatible.missing_keys) == 8
    assert encoder.mask_token.shape == (1, 1, 1, EMBED)
    assert torch.equal(
        encoder.mask_token.flatten(), source["model"]["encoder.mask_token"].flatten()
    )
    assert torch.equal(
        encoder.swin.layers[1].downsample.reduction.weight,
        source["model"]["encoder.layers.0.downsample.reduction.weight"],
    )
    assert sorted(result.dropped["outside 'encoder.' (pre-training decoder)"]) == [
        "decoder.0.bias",
        "decoder.0.weight",
    ]


def test_simmim_finetuned_file_without_prefix(timm_swin, tmp_path):
    source = official_state_dict(timm_swin)
    _, weights = convert(SIMMIM, tmp_path, {"model": source})
    encoder, incompatible = load_into_fresh_encoder(weights)
    assert incompatible.unexpected_keys == []
    assert "mask_token" in incompatible.missing_keys
    assert torch.equal(encoder.swin.patch_embed.proj.weight, source["patch_embed.proj.weight"])


def test_detectron2_checkpointer_uses_the_names_as_written(timm_swin, tmp_path):
    _, weights = convert(SIMMIM, tmp_path, simmim_pretrain_checkpoint(timm_swin), allow_pickle=True)
    model = nn.Module()
    model.backbone = build_target_encoder(TINY_CONFIG, SWIN_OPTS)
    DetectionCheckpointer(model).load(str(tmp_path / "converted.pkl"))
    for k, v in model.state_dict().items():
        if not k.startswith("backbone.output_norms."):
            assert torch.equal(v, weights[k]), k


def test_missing_block_is_an_error_that_names_it(timm_swin, tmp_path):
    source = official_state_dict(timm_swin)
    source = {k: v for k, v in source.items() if not k.startswith("layers.2.blocks.1.")}
    with pytest.raises(
        ValueError, match=r"missing in the source.*swin\.layers\.2\.blocks\.1\.attn"
    ):
        convert(SUPERVISED, tmp_path, {"model": source})


def test_depth_mismatch_is_an_error_that_names_the_extra_block(timm_swin, tmp_path):
    source = {"model": official_state_dict(timm_swin)}
    with pytest.raises(ValueError, match=r"not in the encoder.*swin\.layers\.2\.blocks\.1\.attn"):
        convert(SUPERVISED, tmp_path, source, "MODEL.SWIN.DEPTHS", "[1, 1, 1, 1]")


def test_head_count_mismatch_is_an_error_that_names_the_table(timm_swin, tmp_path):
    source = {"model": official_state_dict(timm_swin)}
    opts = ["MODEL.SWIN.NUM_HEADS", "[2, 2, 4, 8]"]
    with pytest.raises(ValueError, match=r"shape differs.*layers\.0\.blocks\.0\.attn\.relative"):
        convert(SUPERVISED, tmp_path, source, *opts)


def test_converted_file_starts_a_fine_tuning_run_in_encoder_scope(timm_swin, tmp_path):
    """Tab. 4's baselines: a converted public checkpoint initializes the encoder of a GLID
    fine-tuning model; everything outside the Swin encoder is reported as new."""
    from detectron2.modeling import build_model

    from glid.checkpoint import GLIDCheckpointer
    from tests.task_harness import tiny_task_cfg

    _, weights = convert(SIMMIM, tmp_path, simmim_pretrain_checkpoint(timm_swin), allow_pickle=True)
    cfg = tiny_task_cfg("sem", *SWIN_OPTS, "MODEL.GLID.WEIGHTS_SCOPE", "encoder")
    model = build_model(cfg)
    checkpointer = GLIDCheckpointer.from_config(cfg, model)
    checkpointer.resume_or_load(str(tmp_path / "converted.pkl"), resume=False)
    report = checkpointer.last_load
    assert not any(k.startswith(("backbone.swin.", "backbone.mask_token")) for k in report.new)
    assert "backbone.output_norms.res2.weight" in report.new and "head.weight" in report.new
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())


# ---- Relative-position-bias tables resized to another window (issue 14) ----


def _attention_bias(table, window):
    """The (heads, N, N) bias a timm window-attention block adds, for a window of that side."""
    from timm.models.swin_transformer import WindowAttention

    attn = WindowAttention(dim=8 * table.shape[1], num_heads=table.shape[1], window_size=window)
    with torch.no_grad():
        attn.relative_position_bias_table.copy_(table)
        return attn._get_rel_pos_bias()[0]


def _sub_window(bias, window, side):
    """Bias among the tokens of the top-left side x side corner of a window."""
    keep = torch.tensor([y * window + x for y in range(side) for x in range(side)])
    return bias[:, keep][:, :, keep]


# Public checkpoints: window 7 (224), 6 (SimMIM 192), 12 (384); our candidates 7, 8, 12.
@pytest.mark.parametrize("src,dst", [(7, 8), (6, 8), (6, 7), (7, 12), (12, 8), (12, 7), (8, 7)])
def test_resized_table_keeps_the_bias_at_offsets_both_windows_have(src, dst):
    """Two tokens that fit in a window of either size get exactly the same attention bias
    before and after the resize, growing or shrinking: the token (patch) size is the same, so an
    offset is the same distance. Offsets new to a larger window take timm's resampled values.
    (timm's resize_rel_pos_bias_table alone keeps only offsets within +-1: it resamples the
    whole table on geometrically spaced positions.)"""
    from timm.layers import resize_rel_pos_bias_table

    from glid.modeling.backbone.swin import resize_relative_position_bias

    torch.manual_seed(0)
    heads = 3
    table = torch.randn((2 * src - 1) ** 2, heads)
    resized = resize_relative_position_bias(table, dst)
    assert resized.shape == ((2 * dst - 1) ** 2, heads)
    shared = min(src, dst)
    before = _sub_window(_attention_bias(table, src), src, shared)
    after = _sub_window(_attention_bias(resized, dst), dst, shared)
    assert torch.equal(after, before)
    if dst > src:
        timm_table = resize_rel_pos_bias_table(
            table, new_window_size=(dst, dst), new_bias_shape=resized.shape
        ).reshape(2 * dst - 1, 2 * dst - 1, heads)
        grid = resized.reshape(2 * dst - 1, 2 * dst - 1, heads)
        inner = torch.zeros(2 * dst - 1, 2 * dst - 1, dtype=torch.bool)
        inner[dst - src : dst + src - 1, dst - src : dst + src - 1] = True
        torch.testing.assert_close(grid[~inner], timm_table[~inner])
    assert torch.equal(resize_relative_position_bias(table, src), table)


def test_resize_names_a_table_of_no_square_window():
    from glid.modeling.backbone.swin import resize_relative_position_bias

    with pytest.raises(ValueError, match=r"square window, got \(48, 2\)"):
        resize_relative_position_bias(torch.zeros(48, 2), 8)
    with pytest.raises(ValueError, match=r"got \(16, 2\)"):  # 4 x 4: an even side
        resize_relative_position_bias(torch.zeros(16, 2), 8)


def test_converter_keeps_shared_offsets_of_every_table(timm_swin, tmp_path):
    """Window 4 -> 8 through the command line: every resized table keeps its 7 x 7 offsets."""
    source = {"model": official_state_dict(timm_swin)}
    opts = ["MODEL.SWIN.WINDOW_SIZE", "8", "MODEL.SWIN.PRETRAIN_IMG_SIZE", "256"]
    result, weights = convert(SUPERVISED, tmp_path, source, *opts)
    assert len(result.resized) == 5  # every block, stage 4 included (8 x 8 tokens at 256)
    for k in result.resized:
        grid = weights["backbone.swin." + k].reshape(15, 15, -1)
        torch.testing.assert_close(grid[4:11, 4:11].reshape(49, -1), source["model"][k])
