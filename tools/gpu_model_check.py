#!/usr/bin/env python
"""Model-level GPU check: Swin-B semantic segmentation (``configs/ade20k_sem_glid.yaml``) with
each pixel decoder, trained one step and run in inference, in fp32 and in bf16 autocast.

For every (pixel decoder, precision) pair, on synthetic images with random masks:

* training: ``--steps`` AdamW steps of the model's summed losses; every loss and every gradient
  must be finite, and every parameter that requires a gradient must get one;
* inference (``eval()``, ``no_grad``): each image's ``sem_seg`` must be (C, H, W) and finite.

The last step's time and the peak memory are reported (CUDA: ``max_memory_allocated``). The
compiled ops must be the ones that run: on CUDA the check fails unless ``glid._C`` has its CUDA
kernels and ``GLID_REFERENCE_OPS`` is unset. Writes ``model_check.txt`` (a table) and
``model_check.json`` to ``--out``; exits 1 if any pair failed (its traceback is printed).

Usage (``tools/gpu_check.sh`` runs it)::

    python tools/gpu_model_check.py --device cuda --out /tmp/out
    python tools/gpu_model_check.py --device cpu --size 128 --batch 1   # a dry run, slow
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = "configs/ade20k_sem_glid.yaml"
DECODERS = ("BiFPN", "MSDeformAttn")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def build_model(decoder: str, device: str) -> torch.nn.Module:
    """The config's model with ``MODEL.GLID.PIXEL_DECODER = decoder`` on ``device``, randomly
    initialized."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model as d2_build_model

    import glid

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(os.path.join(root, CONFIG))
    cfg.MODEL.GLID.PIXEL_DECODER = decoder
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return d2_build_model(cfg)


def synthetic_batch(
    batch: int, size: int, num_classes: int, seed: int, *, train: bool
) -> list[dict]:
    """``batch`` random (3, size, size) images; for training, 1-4 rectangular masks each."""
    from detectron2.structures import BitMasks, Instances

    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
        x = {"image": image, "height": size, "width": size}
        if train:
            num = int(torch.randint(1, 5, (1,), generator=gen))
            masks = torch.zeros(num, size, size, dtype=torch.bool)
            for i in range(num):
                y0, x0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
                h, w = torch.randint(size // 8, size // 2, (2,), generator=gen).tolist()
                masks[i, y0 : y0 + h, x0 : x0 + w] = True
            inst = Instances((size, size))
            inst.gt_classes = torch.randint(0, num_classes, (num,), generator=gen)
            inst.gt_masks = BitMasks(masks)
            x["instances"] = inst
        inputs.append(x)
    return inputs


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def _peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def check_pair(
    model: torch.nn.Module, device: str, precision: str, args: argparse.Namespace
) -> dict:
    """Train ``args.steps`` steps, then run inference; returns the measured row (raises on a
    failed check)."""
    dtype = PRECISIONS[precision]
    num_classes = model.task.num_classes
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05)
    row: dict = {"precision": precision}

    model.train()
    for step in range(args.steps):
        batch = synthetic_batch(args.batch, args.size, num_classes, seed=step, train=True)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            losses = model(batch)
        total = sum(losses.values())
        total.backward()
        optimizer.step()
        _sync(device)
        row["train_step_s"] = time.perf_counter() - t0
        bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v).all()}
        if bad:
            raise FloatingPointError(f"non-finite losses at step {step}: {bad}")
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        if no_grad:
            raise RuntimeError(f"{len(no_grad)} parameters got no gradient, e.g. {no_grad[:5]}")
        bad_grad = [n for n, p in model.named_parameters() if p.grad is not None]
        bad_grad = [n for n in bad_grad if not torch.isfinite(model.get_parameter(n).grad).all()]
        if bad_grad:
            raise FloatingPointError(f"non-finite gradients at step {step}: {bad_grad[:5]}")
        row["loss"] = float(total.detach())
    row["train_peak_mib"] = _peak_mib(device)

    model.eval()
    batch = synthetic_batch(args.batch, args.size, num_classes, seed=100, train=False)
    with torch.no_grad(), _autocast(device, dtype):
        for _ in range(2):  # the first call warms up (cuDNN / cuBLAS choices)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t0 = time.perf_counter()
            outputs = model(batch)
            _sync(device)
            row["infer_s"] = time.perf_counter() - t0
    row["infer_peak_mib"] = _peak_mib(device)
    for i, out in enumerate(outputs):
        sem_seg = out["sem_seg"]
        if tuple(sem_seg.shape) != (num_classes, args.size, args.size):
            raise RuntimeError(f"image {i}: sem_seg shape {tuple(sem_seg.shape)}")
        if not torch.isfinite(sem_seg).all():
            raise FloatingPointError(f"image {i}: non-finite sem_seg ({precision})")
    row["sem_seg_dtype"] = str(outputs[0]["sem_seg"].dtype).replace("torch.", "")
    return row


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", type=int, default=512, help="square image side (pixels)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="training steps (last one timed)")
    parser.add_argument("--decoders", nargs="+", choices=DECODERS, default=list(DECODERS))
    parser.add_argument(
        "--precisions", nargs="+", choices=tuple(PRECISIONS), default=list(PRECISIONS)
    )
    parser.add_argument("--out", default=".", help="folder for model_check.txt / .json")
    args = parser.parse_args()

    from glid.layers import _ext

    device = args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            print("FAIL: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 1
        if _ext.reference_ops_requested() or not _ext.has_cuda_kernels():
            print(
                "FAIL: the check must run the CUDA kernels: unset GLID_REFERENCE_OPS and build "
                "glid._C with CUDA (FORCE_CUDA=1 python setup.py build_ext --inplace)",
                file=sys.stderr,
            )
            return 1
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)

    rows, failed = [], 0
    for decoder in args.decoders:
        model = build_model(decoder, device)
        for precision in args.precisions:
            print(f"== {decoder} {precision} (size {args.size}, batch {args.batch})", flush=True)
            try:
                row = check_pair(model, device, precision, args)
                row["status"] = "ok"
            except Exception as e:  # reported below and in the exit status, never swallowed
                traceback.print_exc()
                row = {"precision": precision, "status": f"FAIL {type(e).__name__}: {e}"}
                failed += 1
            row["decoder"] = decoder
            rows.append(row)
            print(json.dumps(row), flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()

    header = ["decoder", "precision", "loss", "train_step_s", "train_peak_mib", "infer_s"]
    header += ["infer_peak_mib", "sem_seg_dtype", "status"]
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    lines = [
        f"GLID model check: {CONFIG}, {device} ({name}), torch {torch.__version__}, "
        f"image {args.size}x{args.size}, batch {args.batch}, {args.steps} training steps "
        "(time of the last), inference timed on its second call",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in header) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "model_check.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "model_check.json"), "w") as f:
        json.dump({"device": name, "args": vars(args), "rows": rows}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
