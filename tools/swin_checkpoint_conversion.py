"""Shared code of the converters that import public Swin checkpoints into GLID's encoder.

``tools/convert-pretrained-swin-to-d2.py`` (supervised ImageNet Swin, Microsoft's or timm's
layout) and ``tools/convert-simmim-swin-to-d2.py`` (SimMIM pre-training) both go through
:func:`convert_swin_state_dict`:

1. drop what the encoder does not have: classifier ``head.*``, the final ``norm.*`` (GLID has one
   LayerNorm per output stage instead), SimMIM's pixel decoder, non-tensor entries;
2. take out the encoder mask token, if any, reshaped to the encoder's (1, 1, 1, C);
3. resize each relative-position-bias table to its target block's window with
   :func:`glid.modeling.backbone.swin.resize_relative_position_bias`: offsets both windows have
   keep their bias exactly, offsets new to a larger window take timm's resampled values (timm's
   ``resize_rel_pos_bias_table`` alone would resample every offset beyond +-1);
4. let timm's own ``checkpoint_filter_fn`` do the rest against the target encoder: it moves the
   official layout's ``downsample`` (end of stage i) to timm's (start of stage i + 1) and drops
   the non-persistent buffers (``relative_position_index``, ``attn_mask``);
5. check that every ``swin.*`` tensor of the target is produced with its shape, and nothing else.

The result is a detectron2 pickle (``matching_heuristics: False``, so the names are loaded exactly
as written) with names ``backbone.swin.<timm name>`` and ``backbone.mask_token``. The encoder's
``output_norms.*`` are new and stay initialized; the pre-train -> fine-tune hand-off reports them.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.modeling import ShapeSpec
from timm.models.swin_transformer import checkpoint_filter_fn

from glid import add_glid_config
from glid.modeling.backbone.swin import (
    D2SwinTransformer,
    build_glid_swin_backbone,
    resize_relative_position_bias,
)

__all__ = [
    "ConversionResult",
    "build_target_encoder",
    "convert_swin_state_dict",
    "load_checkpoint_file",
    "run_converter",
    "save_d2_checkpoint",
    "summarize",
]

logger = logging.getLogger("glid.convert")

PREFIX = "backbone."
# Buffers rebuilt by the model from its config; public checkpoints store them.
NON_PERSISTENT_BUFFERS = ("relative_position_index", "attn_mask")
TABLE = "relative_position_bias_table"
# Names listed per kind of mismatch in the error.
MAX_NAMES_SHOWN = 20


@dataclass
class ConversionResult:
    """A converted encoder checkpoint and what happened on the way.

    Attributes:
        model: ``{"backbone.swin.<name>" | "backbone.mask_token": float32 array}``.
        resized: source name -> (source shape, target shape) of each resized bias table.
        dropped: reason -> source names left out.
    """

    model: dict[str, np.ndarray]
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)


def build_target_encoder(config_file: str | None, opts: list[str] | None = None):
    """The GLID encoder that will load the converted weights, built from a GLID config.

    Args:
        config_file: a GLID yaml (``MODEL.SWIN.*`` fixes widths, depths, windows, image size);
            ``None`` uses the defaults (Swin-B, window 7, 224).
        opts: ``KEY VALUE ...`` overrides, as in detectron2's tools.
    """
    cfg = get_cfg()
    add_glid_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    if cfg.MODEL.BACKBONE.NAME != "build_glid_swin_backbone":
        raise ValueError(
            f"the config's backbone is {cfg.MODEL.BACKBONE.NAME!r}; these converters write "
            "weights for build_glid_swin_backbone"
        )
    return build_glid_swin_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


def load_checkpoint_file(path: str, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` / ``.bin`` / ``.safetensors`` file and return its flat state dict.

    The state dict may be wrapped as ``{"model": ...}`` or ``{"state_dict": ...}`` (official
    Swin, SimMIM, timm); the rest of such a wrapper is ignored. ``allow_pickle`` permits files
    holding arbitrary Python objects (SimMIM's training checkpoints store their yacs config);
    load such files only from a source you trust.
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        data = load_file(path, device="cpu")
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{path} holds Python objects besides tensors (e.g. a training config); "
                "rerun with --allow-pickle if you trust the file"
            ) from e
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(data).__name__}")
    return dict(data)


def _drop_reason(name: str) -> str | None:
    """Why a (prefix-free) source tensor is left out, or ``None`` to keep it."""
    if name.startswith("head."):
        return "classifier head"
    if name.startswith("norm."):
        return "final norm (GLID normalizes each output stage)"
    if name.rsplit(".", 1)[-1] in NON_PERSISTENT_BUFFERS:
        return "non-persistent buffers"
    return None


def convert_swin_state_dict(
    state_dict: dict[str, torch.Tensor],
    encoder: D2SwinTransformer,
    *,
    encoder_prefix: str | None = None,
) -> ConversionResult:
    """Convert a public Swin state dict into GLID encoder weights for ``encoder``.

    Args:
        state_dict: Microsoft's layout (``layers.i.downsample`` at the end of stage i) or timm's
            (at the start of stage i + 1), with or without head, final norm and buffers.
        encoder: the target; its windows and depths decide the table sizes and the checks.
        encoder_prefix: e.g. ``"encoder."`` for SimMIM: when some names start with it, only those
            are kept (prefix removed) and the rest (SimMIM's pixel decoder) is dropped.

    Returns:
        The converted tensors, named as in a whole GLID model, and a summary.

    Raises:
        ValueError: a target ``swin.*`` tensor is not produced or has another shape, or the
            source has tensors the encoder cannot hold (e.g. more blocks); the error names them.
    """
    dropped: dict[str, list[str]] = {}
    source = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    dropped_other = sorted(set(state_dict) - set(source))
    if dropped_other:
        dropped["non-tensor entries"] = dropped_other
    if encoder_prefix and any(k.startswith(encoder_prefix) for k in source):
        others = sorted(k for k in source if not k.startswith(encoder_prefix))
        if others:
            dropped[f"outside {encoder_prefix!r} (pre-training decoder)"] = others
        source = {
            k[len(encoder_prefix) :]: v for k, v in source.items() if k.startswith(encoder_prefix)
        }

    out: dict[str, torch.Tensor] = {}
    mask_token = source.pop("mask_token", None)
    if mask_token is not None:
        target_shape = tuple(encoder.mask_token.shape)
        if mask_token.numel() != encoder.mask_token.numel():
            raise ValueError(
                f"mask_token: source shape {tuple(mask_token.shape)} does not fit the "
                f"encoder's {target_shape}"
            )
        out[PREFIX + "mask_token"] = mask_token.reshape(target_shape)

    kept = {}
    for k, v in source.items():
        reason = _drop_reason(k)
        if reason is None:
            kept[k] = v
        else:
            dropped.setdefault(reason, []).append(k)

    # Each table is resized to its block's window; tables of blocks the target lacks, or with
    # another head count, cannot be resized: they go straight to the check below.
    swin = encoder.swin
    target_sd = swin.state_dict()
    unfit, resized = {}, {}
    for k, v in list(kept.items()):
        if not k.endswith(TABLE):
            continue
        target = target_sd.get(k)
        if target is None or v.dim() != 2 or v.shape[1] != target.shape[1]:
            unfit[k] = kept.pop(k)
        elif v.shape != target.shape:
            window = swin.get_submodule(k[: -len("." + TABLE)]).window_size
            try:
                kept[k] = resize_relative_position_bias(v, window)
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from e
            resized[k] = (tuple(v.shape), tuple(target.shape))
    converted = checkpoint_filter_fn(kept, swin)
    converted.update(unfit)

    _check_against_target(converted, target_sd)
    for k, v in converted.items():
        out[PREFIX + "swin." + k] = v
    model = {k: _to_numpy(v) for k, v in out.items()}
    return ConversionResult(model=model, resized=resized, dropped=dropped)


def _check_against_target(
    converted: dict[str, torch.Tensor], target_sd: dict[str, torch.Tensor]
) -> None:
    missing = sorted(set(target_sd) - set(converted))
    unexpected = sorted(set(converted) - set(target_sd))
    misshaped = sorted(
        f"{k}: {tuple(converted[k].shape)} vs. {tuple(target_sd[k].shape)}"
        for k in set(converted) & set(target_sd)
        if converted[k].shape != target_sd[k].shape
    )
    problems = []
    for title, names in (
        ("missing in the source", missing),
        ("in the source but not in the encoder", unexpected),
        ("shape differs (source vs. encoder)", misshaped),
    ):
        if names:
            shown = ", ".join("swin." + n for n in names[:MAX_NAMES_SHOWN])
            extra = len(names) - MAX_NAMES_SHOWN
            more = f", ... ({extra} more)" if extra > 0 else ""
            problems.append(f"{title} ({len(names)}): {shown}{more}")
    if problems:
        raise ValueError(
            "the checkpoint does not fit the encoder built from the config (check MODEL.SWIN.*):"
            "\n  " + "\n  ".join(problems)
        )


def _to_numpy(v: torch.Tensor) -> np.ndarray:
    v = v.detach().cpu()
    return (v.float() if v.is_floating_point() else v).numpy()


def save_d2_checkpoint(result: ConversionResult, path: str, *, author: str) -> None:
    """Write ``result`` as a detectron2 ``.pkl`` that ``DetectionCheckpointer`` loads by name."""
    if not path.endswith(".pkl"):
        raise ValueError(f"output must end in .pkl (detectron2 reads names as written), got {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"model": result.model, "__author__": author, "matching_heuristics": False}, f)


def summarize(result: ConversionResult) -> str:
    """A few lines: tensors written, tables resized, tensors dropped."""
    lines = [f"wrote {len(result.model)} tensors"]
    if "backbone.mask_token" not in result.model:
        lines.append("no mask token in the source: backbone.mask_token keeps its initialization")
    if result.resized:
        by_shape = Counter(result.resized.values())
        lines.append(
            f"resized {len(result.resized)} relative-position-bias tables: "
            + ", ".join(f"{n} x {a} -> {b}" for (a, b), n in sorted(by_shape.items()))
        )
    for reason, names in result.dropped.items():
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        lines.append(f"dropped {len(names)} ({reason}): {shown}")
    return "\n".join(lines)


def run_converter(
    argv: list[str] | None, *, description: str, encoder_prefix: str | None, author: str
) -> ConversionResult:
    """Command line shared by the converters: ``[--config-file CFG] INPUT OUTPUT.pkl``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=None, help="GLID config of the target model")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read .pth files that hold Python objects besides tensors (trusted files only)",
    )
    parser.add_argument("input", help="public checkpoint (.pth, .bin or .safetensors)")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pkl)")
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (last)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    encoder = build_target_encoder(args.config_file, args.opts)
    state_dict = load_checkpoint_file(args.input, allow_pickle=args.allow_pickle)
    result = convert_swin_state_dict(state_dict, encoder, encoder_prefix=encoder_prefix)
    save_d2_checkpoint(result, args.output, author=f"{author} from {os.path.basename(args.input)}")
    logger.info("%s -> %s\n%s", args.input, args.output, summarize(result))
    return result
