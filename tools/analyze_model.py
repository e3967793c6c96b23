#!/usr/bin/env python
"""Parameter and FLOP counts of GLID and its parts, counted the fvcore way (one multiply-add =
one flop), on an image of the given size.

    python tools/analyze_model.py --config-file configs/ade20k_sem_glid.yaml --size 640 640
    python tools/analyze_model.py --config-file ... --part pixel_decoder   # Tab. 2's figures
    python tools/analyze_model.py --paper-tables   # Tab. 2 and Tab. 3 beside the paper's numbers

Custom ops get flop handles (fused fusion: one multiply-add per input element; MSDeformAttn:
bilinear sampling + weighting per sampled channel).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis

import glid
from glid.checkpoint.checkpointer import TASK_OWN_PREFIXES
from glid.layers.handles import CUSTOM_OP_FLOP_HANDLES

logger = logging.getLogger("glid.analyze")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: our config and the paper's figures (``nan``: not given)."""

    name: str
    config: str
    paper_params_m: float
    paper_gflops: float = math.nan


# Supplementary Tab. 2: pixel decoders on Swin-B features of a 640x640 image.
TAB2 = (
    PaperRow("BiFPN", "configs/ade20k_sem_glid.yaml", 5.0, 33.8),
    PaperRow("MSDeformAttn", "configs/ade20k_sem_glid_msdeformattn.yaml", 5.5, 55.3),
)
# Supplementary Tab. 3: parameters of the task heads (the paper has no classification column).
TAB3 = (
    PaperRow("pose (keypoint)", "configs/coco_pose_glid.yaml", 0.6),
    PaperRow("det", "configs/coco_det_glid.yaml", 0.5),
    PaperRow("sem", "configs/ade20k_sem_glid.yaml", 0.9),
    PaperRow("ins", "configs/ade20k_ins_glid.yaml", 0.6),
    PaperRow("pan", "configs/ade20k_pan_glid.yaml", 0.9),
    PaperRow("depth", "configs/nyuv2_depth_glid.yaml", 1.3),
    PaperRow("cls ([CLS])", "configs/imagenet_cls_finetune_glid.yaml", math.nan),
    PaperRow("cls (encoder)", "configs/imagenet_cls_finetune_glid_encoder.yaml", math.nan),
)


def count(module: torch.nn.Module, inputs: tuple) -> tuple[int, float]:
    """(parameters, fvcore flops) of ``module(*inputs)``."""
    params = sum(p.numel() for p in module.parameters())
    flops = FlopCountAnalysis(module, inputs).set_op_handle(**CUSTOM_OP_FLOP_HANDLES)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return params, flops.total()


def analyze(cfg, size: tuple[int, int], parts: list[str]) -> dict[str, tuple[int, float]]:
    """``{part: (parameters, fvcore flops)}`` of the model built from ``cfg`` on a zero image
    of ``size`` (H, W); flops are ``nan`` for ``head`` and ``model`` (parameters only)."""
    model = build_model(cfg).eval()
    image = torch.zeros(1, 3, *size, device=model.device)
    results = {}
    with torch.no_grad():
        features = model.backbone(image)
        if "backbone" in parts:
            results["backbone"] = count(model.backbone, (image,))
        if "pixel_decoder" in parts:
            results["pixel_decoder"] = count(model.pixel_decoder, (features,))
        if "head" in parts:
            results["head"] = (sum(p.numel() for p in model.head.parameters()), float("nan"))
        if "model" in parts:
            results["model"] = (sum(p.numel() for p in model.parameters()), float("nan"))
    return results


def load_cfg(config_file: str, opts: list[str] | None = None):
    """The config of ``config_file`` (relative paths: to the repository root) on the CPU."""
    if not os.path.isabs(config_file) and not os.path.exists(config_file):
        config_file = os.path.join(ROOT, config_file)
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def head_figures(cfg) -> dict:
    """The task head of the model built from ``cfg``: ``shape`` (in, out) of its one
    ``nn.Linear`` (a ``LinearTaskHead``), ``params`` (weight + bias), ``splits`` (answer name ->
    size) and ``task_own`` (every parameter the pre-training hand-off initializes anew: the
    head, the task module's, learnable query positions; ``glid.checkpoint``'s
    ``TASK_OWN_PREFIXES``)."""
    model = build_model(cfg)
    head = model.head
    task_own = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(TASK_OWN_PREFIXES)
    )
    return {
        "shape": (head.in_features, head.out_features),
        "params": sum(p.numel() for p in head.parameters()),
        "splits": dict(head.splits),
        "task_own": task_own,
    }


def _m(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}M"


def tab2_lines(size: tuple[int, int], rows=TAB2, opts: list[str] | None = None) -> list[str]:
    """Tab. 2 as markdown: each pixel decoder's parameters and fvcore GFLOPs beside the paper's."""
    lines = [
        f"Tab. 2: pixel decoders on the encoder's features of a {size[0]}x{size[1]} image",
        "",
        "| pixel decoder | config | params | GFLOPs | paper params | paper GFLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cfg = load_cfg(row.config, opts)
        params, flops = analyze(cfg, size, ["pixel_decoder"])["pixel_decoder"]
        lines.append(
            f"| {row.name} | `{row.config}` | {params / 1e6:.3f}M | {flops / 1e9:.1f} "
            f"| {_m(row.paper_params_m)} | {row.paper_gflops:.1f} |"
        )
    return lines


def tab3_lines(rows=TAB3, opts: list[str] | None = None) -> list[str]:
    """Tab. 3 as markdown: each task's linear head (shape, parameters) and all the parameters the
    hand-off initializes anew, beside the paper's head sizes."""
    lines = [
        "Tab. 3: task heads (one nn.Linear each; 'task-own' adds every other parameter a "
        "fine-tuning run starts anew from a pre-training checkpoint)",
        "",
        "| task | config | head in x out | head params | task-own params | paper |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        fig = head_figures(load_cfg(row.config, opts))
        out = " + ".join(f"{size} {name}" for name, size in fig["splits"].items())
        lines.append(
            f"| {row.name} | `{row.config}` | {fig['shape'][0]} x ({out}) "
            f"| {fig['params'] / 1e6:.3f}M | {fig['task_own'] / 1e6:.3f}M "
            f"| {_m(row.paper_params_m)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Parameters and fvcore FLOPs of GLID and its parts (Tab. 2 / Tab. 3)."
    )
    parser.add_argument("--config-file", help="one config to analyze (not with --paper-tables)")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"))
    parts = ["backbone", "pixel_decoder", "head", "model"]
    # choices: config overrides placed after --part would otherwise be taken for parts.
    parser.add_argument("--part", nargs="+", default=parts, choices=parts)
    parser.add_argument(
        "--paper-tables",
        action="store_true",
        help="print Tab. 2 (both pixel decoders, Swin-B, --size) and Tab. 3 (the task heads of "
        "the Swin-B task configs) beside the paper's numbers, as markdown",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.paper_tables == bool(args.config_file):
        parser.error("give either --config-file or --paper-tables")
    if args.paper_tables:
        lines = tab2_lines(tuple(args.size), opts=args.opts)
        lines += [""] + tab3_lines(opts=args.opts)
        print("\n".join(lines))
        return {"lines": lines}
    results = analyze(load_cfg(args.config_file, args.opts), tuple(args.size), args.part)
    print(f"{args.config_file} at {args.size[0]}x{args.size[1]}")
    print(f"{'part':<16}{'params (M)':>12}{'GFLOPs':>10}")
    for part, (params, flops) in results.items():
        print(f"{part:<16}{params / 1e6:>12.3f}{flops / 1e9:>10.2f}")
    return results


if __name__ == "__main__":
    main()
