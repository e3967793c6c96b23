#!/usr/bin/env python
"""GLID demo: predict on images, a folder, a glob or a video and write the visualizations.

    python demo/demo.py --config-file configs/ade20k_sem_glid.yaml \
        --input photo.jpg more/*.jpg --output vis/ --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file ... --video-input clip.mp4 --output clip_vis.mp4 --opts ...
    python demo/demo.py --config-file configs/coco_det_glid.yaml --input photo.jpg --output vis/ \
        --confidence-threshold 0.3 --opts MODEL.WEIGHTS model_final.pth   # boxes scoring >= 0.3
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import cv2
import tqdm
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predictor import VisualizationDemo  # noqa: E402

import glid  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def setup_cfg(args):
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="GLID demo")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", help="images, folders or glob patterns")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument(
        "--output", required=True, help="folder for image results, or the output video file"
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="draw only instances (boxes, masks, keypoints) scoring at least this",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return parser


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files, folders (their images) and glob patterns -> sorted image paths."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += [
                os.path.join(pattern, f)
                for f in sorted(os.listdir(pattern))
                if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        else:
            matches = sorted(glob.glob(os.path.expanduser(pattern)))
            if not matches:
                raise FileNotFoundError(f"--input {pattern!r} matches no file")
            paths += matches
    return paths


def main(argv: list[str] | None = None) -> list[str]:
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="glid.demo")
    if bool(args.input) == bool(args.video_input):
        raise SystemExit("give exactly one of --input and --video-input")
    demo = VisualizationDemo(setup_cfg(args), score_threshold=args.confidence_threshold)
    written = []
    if args.input:
        os.makedirs(args.output, exist_ok=True)
        for path in tqdm.tqdm(expand_inputs(args.input)):
            image = read_image(path, format="BGR")
            start = time.perf_counter()
            predictions, vis = demo.run_on_image(image)
            logger.info(f"{path}: {sorted(predictions)} in {time.perf_counter() - start:.2f}s")
            out = os.path.join(
                args.output, os.path.splitext(os.path.basename(path))[0] + "_glid.png"
            )
            vis.save(out)
            written.append(out)
    else:
        video = cv2.VideoCapture(args.video_input)
        if not video.isOpened():
            raise FileNotFoundError(f"cannot open video {args.video_input}")
        fps = video.get(cv2.CAP_PROP_FPS) or 25.0
        width, height = (
            int(video.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(video.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        writer = None
        for frame in tqdm.tqdm(demo.run_on_video(video)):
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(args.output, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(frame)
        video.release()
        if writer is None:
            raise RuntimeError(f"no frame could be read from {args.video_input} ({width}x{height})")
        writer.release()
        written.append(args.output)
    logger.info(f"wrote {len(written)} visualization(s) to {args.output}")
    return written


if __name__ == "__main__":
    main()
