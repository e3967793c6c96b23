"""GLID's optimizer: AdamW / SGD / LARS over detectron2 parameter groups, with encoder lr
multiplier or layer-wise lr decay, and whole-model gradient clipping."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence

import torch
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

from .lars import LARS

__all__ = ["build_optimizer", "layer_decay_lr_factor", "NO_DECAY_PARAM_NAMES"]

# Parameters that are embeddings, tokens or position tables: no weight decay
# (SOLVER.WEIGHT_DECAY_EMBED), like norms (SOLVER.WEIGHT_DECAY_NORM).
NO_DECAY_PARAM_NAMES = (
    "relative_position_bias_table",
    "absolute_pos_embed",
    "mask_token",
    "mask_query",
    "cls_query",
    "grid_points",
    "level_embed",
)

_SWIN_BLOCK = re.compile(r"backbone\.swin\.layers\.(\d+)\.blocks\.(\d+)\.")
_SWIN_DOWNSAMPLE = re.compile(r"backbone\.swin\.layers\.(\d+)\.downsample\.")
_ENCODER_INPUT_PREFIXES = ("backbone.swin.patch_embed.", "backbone.mask_token")
_AFTER_ENCODER_PREFIXES = ("backbone.output_norms.",)


def _encoder_layer_id(name: str, depths: Sequence[int]) -> int:
    """Depth of an encoder parameter: 0 for the patch embedding and the mask token, i for the
    i-th block (1-based across stages), and a downsample layer counts with the block before
    it. Raises ``ValueError`` for a ``backbone.`` name the rule does not know."""
    if name.startswith(_ENCODER_INPUT_PREFIXES):
        return 0
    for pattern in (_SWIN_BLOCK, _SWIN_DOWNSAMPLE):
        match = pattern.match(name)
        if match is None:
            continue
        stage = int(match.group(1))
        if stage >= len(depths):
            break
        blocks_before = sum(depths[:stage])
        if pattern is _SWIN_DOWNSAMPLE:
            # timm >= 1.0 runs the downsample at the start of stage s: it follows the last
            # block of stage s - 1 (stage 0 has none; it would follow the patch embedding).
            return blocks_before
        block = int(match.group(2))
        if block >= depths[stage]:
            break
        return blocks_before + block + 1
    raise ValueError(
        f"layer-wise lr decay: no layer rule for encoder parameter {name!r} "
        f"(MODEL.SWIN.DEPTHS={list(depths)}); known: backbone.swin.patch_embed.*, "
        "backbone.swin.layers.<s>.blocks.<b>.*, backbone.swin.layers.<s>.downsample.*, "
        "backbone.mask_token, backbone.output_norms.*"
    )


def layer_decay_lr_factor(name: str, depths: Sequence[int], decay: float) -> float:
    """lr multiplier of parameter ``name`` under layer-wise lr decay (BEiT / MAE fine-tuning).

    With L = sum(depths) encoder blocks, block i (1-based, counted across stages) gets
    ``decay ** (L + 1 - i)``; the patch embedding and the mask token ``decay ** (L + 1)``; a
    stage's downsample layer the factor of the block before it. Everything after the encoder
    (``backbone.output_norms``, pixel decoder, decoder, queries, head) gets 1.

    Args:
        name: full parameter name in the GLID model, e.g. ``backbone.swin.layers.2.blocks.0.
            attn.qkv.weight``.
        depths: blocks per Swin stage (``MODEL.SWIN.DEPTHS``).
        decay: ``SOLVER.LAYER_DECAY`` in (0, 1].

    Raises:
        ValueError: ``decay`` outside (0, 1], or a ``backbone.`` name the rule does not know
            (an encoder parameter must not silently get the full lr).
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"SOLVER.LAYER_DECAY must be in (0, 1] (1.0 = off), got {decay}")
    if not name.startswith("backbone.") or name.startswith(_AFTER_ENCODER_PREFIXES):
        return 1.0
    num_layers = sum(depths)
    return decay ** (num_layers + 1 - _encoder_layer_id(name, depths))


def _lr_factor_func(cfg):
    """``name -> lr multiplier``: layer-wise decay when ``SOLVER.LAYER_DECAY < 1``, else the
    encoder's ``SOLVER.BACKBONE_MULTIPLIER``."""
    s = cfg.SOLVER
    decay = s.LAYER_DECAY
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"SOLVER.LAYER_DECAY must be in (0, 1] (1.0 = off), got {decay}")
    if decay < 1.0:
        if s.BACKBONE_MULTIPLIER != 1.0:
            raise ValueError(
                f"SOLVER.LAYER_DECAY={decay} and SOLVER.BACKBONE_MULTIPLIER="
                f"{s.BACKBONE_MULTIPLIER} would compound on the encoder's lr; with layer-wise "
                "lr decay set SOLVER.BACKBONE_MULTIPLIER to 1.0"
            )
        return functools.partial(
            layer_decay_lr_factor, depths=tuple(cfg.MODEL.SWIN.DEPTHS), decay=decay
        )
    return lambda name: s.BACKBONE_MULTIPLIER if name.startswith("backbone.") else 1.0


def _full_model_clipping(optimizer_cls: type, clip_norm: float, norm_type: float) -> type:
    """A subclass of ``optimizer_cls`` whose ``step`` first clips the gradient norm of all its
    parameters together (one norm over the whole model)."""

    class FullModelGradientClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, clip_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelClip{optimizer_cls.__name__}"
    return FullModelGradientClippingOptimizer


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` (ADAMW, SGD or LARS) over detectron2 parameter groups with: encoder
    lr x ``BACKBONE_MULTIPLIER``, or layer-wise lr decay when ``SOLVER.LAYER_DECAY < 1`` (see
    :func:`layer_decay_lr_factor`); no weight decay on norms, embeddings, tokens and position
    tables; optional gradient clipping (``full_model``, or detectron2's ``value`` / ``norm``)."""
    s = cfg.SOLVER
    no_decay = {"weight_decay": s.WEIGHT_DECAY_EMBED}
    params = get_default_optimizer_params(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        lr_factor_func=_lr_factor_func(cfg),
        overrides={name: dict(no_decay) for name in NO_DECAY_PARAM_NAMES},
    )
    optimizer_type = s.OPTIMIZER.upper()
    if optimizer_type == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {"betas": tuple(s.BETAS)}
    elif optimizer_type == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM, "nesterov": s.NESTEROV}
    elif optimizer_type == "LARS":
        if s.NESTEROV:
            raise ValueError("SOLVER.NESTEROV is not supported by LARS; set it to False")
        optimizer_cls = LARS
        kwargs = {"momentum": s.MOMENTUM, "trust_coefficient": s.LARS_TRUST_COEFFICIENT}
    else:
        raise ValueError(
            f"SOLVER.OPTIMIZER={s.OPTIMIZER!r} is not supported; use ADAMW, SGD or LARS"
        )
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_cls = _full_model_clipping(optimizer_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:  # detectron2's per-parameter "value" / "norm" clipping (no-op when disabled)
        optimizer_cls = maybe_add_gradient_clipping(cfg, optimizer_cls)
    return optimizer_cls(params, lr=s.BASE_LR, **kwargs)
