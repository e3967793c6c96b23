#!/usr/bin/env python
"""Parameter and FLOP counts of GLID and its parts, counted the fvcore way (one multiply-add =
one flop), on an image of the given size.

    python tools/analyze_model.py --config-file configs/ade20k_sem_glid.yaml --size 640 640
    python tools/analyze_model.py --config-file ... --part pixel_decoder   # Tab. 2's figures

Custom ops get flop handles (fused fusion: one multiply-add per input element; MSDeformAttn:
bilinear sampling + weighting per sampled channel).
"""

from __future__ import annotations

import argparse
import logging

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis

import glid
from glid.layers.handles import CUSTOM_OP_FLOP_HANDLES

logger = logging.getLogger("glid.analyze")


def count(module: torch.nn.Module, inputs: tuple) -> tuple[int, float]:
    """(parameters, fvcore flops) of ``module(*inputs)``."""
    params = sum(p.numel() for p in module.parameters())
    flops = FlopCountAnalysis(module, inputs).set_op_handle(**CUSTOM_OP_FLOP_HANDLES)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return params, flops.total()


def analyze(cfg, size: tuple[int, int], parts: list[str]) -> dict[str, tuple[int, float]]:
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"))
    parser.add_argument("--part", nargs="+", default=["backbone", "pixel_decoder", "head", "model"])
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    results = analyze(cfg, tuple(args.size), args.part)
    print(f"{args.config_file} at {args.size[0]}x{args.size[1]}")
    print(f"{'part':<16}{'params (M)':>12}{'GFLOPs':>10}")
    for part, (params, flops) in results.items():
        print(f"{part:<16}{params / 1e6:>12.3f}{flops / 1e9:>10.2f}")
    return results


if __name__ == "__main__":
    main()
