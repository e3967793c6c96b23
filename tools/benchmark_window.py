#!/usr/bin/env python
"""Time the Swin window choice (issue 14): the encoder and the whole semantic model, inference
and a training step, per window and input size, alternating, with ratios to window 7 measured in
the same run.

    python tools/benchmark_window.py                       # the full table (see README below)
    python tools/benchmark_window.py --sizes 512 --windows 7-timm 7 8 --repeats 1 --warmup 0
    python tools/benchmark_window.py --windows 7-timm 7 8 7-bf16 8-bf16   # + CPU bfloat16
    python tools/benchmark_window.py --config-file configs/quickstart/glid_synth_sem_tiny.yaml \
        --sizes 64 --windows 7-timm 7 8 --repeats 1 --warmup 0     # a smoke test, seconds

A window ``W`` builds the config's model with ``MODEL.SWIN.WINDOW_SIZE W`` and
``MODEL.SWIN.PRETRAIN_IMG_SIZE 32 W`` (the pre-training grid of stage 4 is one window, so every
stage keeps window W); ``W-timm`` is the same model run through timm's own Swin blocks, the
implementation before issue 14 (shift then pad, padding attended, masks rebuilt every forward):
``7-timm`` is the old default. ``W-bf16`` (or ``W-timm-bf16``) runs under bfloat16 autocast
as ``SOLVER.AMP`` trains and ``TEST.AMP`` infers (model inference through the model's own
autocast, post-processing in float32). Rows per (size, window): the token grid of each stage
with its padded size, the encoder's multiply-adds (``torch.utils.flop_counter``, attention
included), then median seconds of: encoder inference (batch 1), encoder forward + backward of
the summed outputs, whole-model inference per image, whole-model training step (forward,
backward, AdamW step; ``--batch`` images). The ratios are window 7's (and 7-timm's) time / this
one's (> 1: faster than the reference; the first window listed when neither is).

On the CPU the variants without ``-bf16`` run in float32; on a GPU (``--device cuda``, the
default when one is visible) every variant runs under bf16 autocast, and the peak memory of each
measurement is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MEASURES = ("enc_infer", "enc_train", "model_infer", "train_step")
HEADERS = {
    "enc_infer": "encoder inf",
    "enc_train": "encoder f+b",
    "model_infer": "model inf",
    "train_step": "train step",
}


def parse_variant(text: str) -> tuple[int, bool, bool]:
    """(window, timm's blocks, bfloat16): ``"8"`` -> (8, False, False); ``"7-timm"`` ->
    (7, True, False); ``"7-bf16"`` -> (7, False, True); ``"7-timm-bf16"`` -> (7, True, True)."""
    window, *suffixes = text.split("-")
    if not window.isdigit() or suffixes not in ([], ["timm"], ["bf16"], ["timm", "bf16"]):
        raise argparse.ArgumentTypeError(
            f"window variant must be N, N-timm, N-bf16 or N-timm-bf16, got {text!r}"
        )
    return int(window), "timm" in suffixes, "bf16" in suffixes


@contextlib.contextmanager
def timm_blocks(encoder, enabled: bool):
    """Run ``encoder``'s blocks as timm's own (the pre-issue-14 attention) inside the block."""
    from timm.models.swin_transformer import SwinTransformerBlock

    blocks = [b for stage in encoder.swin.layers for b in stage.blocks] if enabled else []
    classes = [b.__class__ for b in blocks]
    for block in blocks:
        block.__class__ = SwinTransformerBlock
    try:
        yield
    finally:
        for block, cls in zip(blocks, classes):
            block.__class__ = cls


def stage_grids(model, size: int) -> str:
    """``128>133/7`` per stage: tokens per side, padded to, window."""
    parts = []
    for i, (wh, _) in enumerate(model.backbone.stage_windows):
        grid = size // (4 * 2**i)
        padded = math.ceil(grid / wh) * wh
        parts.append(f"{grid}>{padded}/{wh}" if padded != grid else f"{grid}/{wh}")
    return " ".join(parts)


def encoder_gmacs(model, size: int, device: str) -> float:
    """Multiply-adds (1e9) of one encoder forward at ``size``, attention included."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    aten = torch.ops.aten

    def cpu_sdpa(q, k, v, *args, out_val=None, **kwargs):  # shapes, not tensors
        return sdpa_flop_count(q, k, v)

    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model.backbone(x)
    return counter.get_total_flops() / 2e9


class Variant:
    """One model (window, implementation) with its optimizer and inputs per size."""

    def __init__(self, name: str, args, sizes: list[int]):
        import torch
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        import glid
        from glid.engine import build_optimizer
        from tools.benchmark_model import make_batch

        self.name = name
        self.window, self.timm, bf16 = parse_variant(name)
        self.bf16 = bf16 or args.device.startswith("cuda")
        cfg = get_cfg()
        glid.add_glid_config(cfg)
        cfg.merge_from_file(os.path.join(ROOT, args.config_file))
        cfg.merge_from_list(list(args.opts))
        cfg.MODEL.SWIN.WINDOW_SIZE = self.window
        cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 32 * self.window
        cfg.MODEL.DEVICE = args.device
        cfg.TEST.AMP.ENABLED = self.bf16
        cfg.TEST.AMP.PRECISION = "bfloat16"
        torch.manual_seed(0)
        self.model = build_model(cfg)
        self.optimizer = build_optimizer(cfg, self.model)
        num_classes = self.model.head.splits["pred_logits"] - 1
        self.inputs = {s: make_batch(args.batch, s, num_classes) for s in sizes}
        g = torch.Generator().manual_seed(0)
        self.images = {s: torch.randn(1, 3, s, s, generator=g).to(args.device) for s in sizes}

    def autocast(self):
        """bfloat16 autocast of the model's device for ``-bf16`` variants (and on a GPU)."""
        import torch

        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=torch.bfloat16)

    def steps(self, size: int) -> dict:
        import torch

        model, inputs, image = self.model, self.inputs[size], self.images[size]

        def enc_infer():
            with torch.no_grad(), self.autocast():
                model.backbone(image)

        def enc_train():
            with self.autocast():
                outputs = model.backbone(image)
            sum(o.float().square().mean() for o in outputs.values()).backward()
            model.zero_grad(set_to_none=True)

        def model_infer():  # autocast inside the model (TEST.AMP), as in evaluation
            with torch.no_grad():
                model(inputs[:1])

        def train_step():
            with self.autocast():  # as GLIDAMPTrainer
                losses = model(inputs)
            self.optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            self.optimizer.step()

        return dict(zip(MEASURES, (enc_infer, enc_train, model_infer, train_step)))


def machine_line(device: str) -> str:
    """The machine, and a warning when other work competes for its cores."""
    from tools.benchmark_model import machine

    loads = os.getloadavg()
    line = f"{machine()}; device {device}; load average {' '.join(f'{v:.2f}' for v in loads)}"
    cores = os.cpu_count() or 1
    if loads[0] > cores:
        # Measured on a busy 2-core machine: a parallel op waits for its descheduled sibling
        # thread (a 16x4096 gather took 25 ms with 2 threads, 0.01 ms with 1).
        line += (
            f"\nWARNING: load {loads[0]:.1f} > {cores} cores: every multi-threaded op may wait a "
            "scheduler slice, so times measure op counts, not work; use a quiet machine or "
            "--threads 1"
        )
    return line


def run(args) -> dict:
    import torch

    sizes = args.sizes
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"machine: {machine_line(args.device)}", flush=True)
    print(
        f"config: {args.config_file} {' '.join(args.opts)}; train batch {args.batch}, inference "
        f"batch 1; {'bf16 autocast' if cuda else 'float32 (-bf16: bf16 autocast)'}; "
        f"median of {args.repeats} "
        f"alternating rounds after {args.warmup} warm-up round(s)",
        flush=True,
    )
    variants = [Variant(name, args, sizes) for name in args.windows]
    info = {}
    for v in variants:
        for s in sizes:
            with timm_blocks(v.model.backbone, v.timm):
                v.model.eval()
                gmacs = encoder_gmacs(v.model, s, args.device) if not args.no_flops else None
            info[v.name, s] = (stage_grids(v.model, s), gmacs)
    times = {(v.name, s, m): [] for v in variants for s in sizes for m in MEASURES}
    peaks = {}
    for round_ in range(args.warmup + args.repeats):
        start = time.perf_counter()
        for s in sizes:
            for v in variants:
                with timm_blocks(v.model.backbone, v.timm):
                    for measure, fn in v.steps(s).items():
                        v.model.train(measure in ("enc_train", "train_step"))
                        if cuda:
                            torch.cuda.reset_peak_memory_stats()
                        sync()
                        t0 = time.perf_counter()
                        fn()
                        sync()
                        if round_ >= args.warmup:
                            times[v.name, s, measure].append(time.perf_counter() - t0)
                        if cuda:
                            peaks[v.name, s, measure] = torch.cuda.max_memory_allocated() / 2**30
        kind = "warm-up" if round_ < args.warmup else "round"
        print(f"  {kind} {round_ + 1} done in {time.perf_counter() - start:.0f} s", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print_table(args, variants, sizes, info, medians, peaks)
    print(f"machine at the end: {machine_line(args.device)}")
    return medians


def print_table(args, variants, sizes, info, medians, peaks) -> None:
    names = [v.name for v in variants]
    refs = [r for r in ("7", "7-timm") if r in names] or names[:1]
    head = f"{'size':>5} {'window':>7} {'stages: tokens>padded/window':<34} {'enc GMAC':>8}"
    head += "".join(f" {HEADERS[m] + ' s':>14}" for m in MEASURES)
    if peaks:
        head += "".join(f" {HEADERS[m] + ' GiB':>16}" for m in MEASURES)
    print("\n" + head)
    for s in sizes:
        for name in names:
            grids, gmacs = info[name, s]
            macs = f"{gmacs:.2f}" if gmacs is not None else "-"
            line = f"{s:>5} {name:>7} {grids:<34} {macs:>8}"
            line += "".join(f" {medians[name, s, m]:>14.3f}" for m in MEASURES)
            if peaks:
                line += "".join(f" {peaks[name, s, m]:>16.2f}" for m in MEASURES)
            print(line)
    for ref in refs:
        print(f"\nspeed-up over window {ref} (its time / this time, same run)")
        print(f"{'size':>5} {'window':>7}" + "".join(f" {HEADERS[m]:>12}" for m in MEASURES))
        for s in sizes:
            for name in names:
                ratios = [medians[ref, s, m] / medians[name, s, m] for m in MEASURES]
                print(f"{s:>5} {name:>7}" + "".join(f" {r:>11.2f}x" for r in ratios))


def main(argv: list[str] | None = None) -> dict:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="configs/ade20k_sem_glid.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 640])
    parser.add_argument("--windows", nargs="+", default=["7-timm", "7", "8", "12"])
    parser.add_argument("--batch", type=int, default=1, help="training batch (images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="rounds not timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-flops", action="store_true", help="skip the multiply-add count")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    for name in args.windows:
        parse_variant(name)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    main()
