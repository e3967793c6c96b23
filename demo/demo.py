#!/usr/bin/env python
"""GLID demo: predict on images, a folder, a glob or a video and write the visualizations.

    python demo/demo.py --config-file configs/ade20k_sem_glid.yaml \
        --input photo.jpg more/*.jpg --output vis/ --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file ... --video-input clip.mp4 --output clip_vis.mp4 --opts ...
    python demo/demo.py --config-file configs/coco_det_glid.yaml --input photo.jpg --output vis/ \
        --confidence-threshold 0.3 --opts MODEL.WEIGHTS model_final.pth   # boxes scoring >= 0.3
    python demo/demo.py --config-file configs/coco_pose_glid.yaml --input photo.jpg --output vis/ \
        --detector-config-file configs/coco_det_glid.yaml --detector-weights det.pth \
        --opts MODEL.WEIGHTS pose.pth          # keypoints of the persons a GLID detector finds
    python demo/demo.py --config-file configs/coco_pose_glid.yaml --input val2017/ --output vis/ \
        --person-boxes person_detections.json --opts MODEL.WEIGHTS pose.pth
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
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predictor import DetectionFileBoxes, DetectorBoxes, VisualizationDemo  # noqa: E402

import glid  # noqa: E402
from glid.data.image_io import read_image  # noqa: E402

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
    pose = parser.add_argument_group("top-down pose: person boxes (one of)")
    pose.add_argument(
        "--person-boxes",
        metavar="FILE",
        help="detection-results JSON (COCO results; matched by file name or image id)",
    )
    pose.add_argument(
        "--detector-config-file", metavar="FILE", help="a GLID detection config run first"
    )
    pose.add_argument("--detector-weights", metavar="FILE", help="its MODEL.WEIGHTS")
    pose.add_argument(
        "--person-class", default="person", help="the detector's class name of persons"
    )
    pose.add_argument(
        "--person-category-id", type=int, default=1, help="category_id of persons in the file"
    )
    pose.add_argument(
        "--box-threshold", type=float, default=0.5, help="lowest score of a person box"
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return parser


def person_box_source(args):
    """The person boxes of a pose demo: a detection-results file or a detector run first."""
    if args.person_boxes and args.detector_config_file:
        raise SystemExit("give one of --person-boxes and --detector-config-file")
    if args.person_boxes:
        return DetectionFileBoxes(args.person_boxes, args.person_category_id, args.box_threshold)
    if args.detector_config_file:
        if not args.detector_weights:
            raise SystemExit("--detector-config-file needs --detector-weights")
        cfg = get_cfg()
        glid.add_glid_config(cfg)
        cfg.merge_from_file(args.detector_config_file)
        cfg.MODEL.WEIGHTS = args.detector_weights
        cfg.freeze()
        return DetectorBoxes(cfg, args.person_class, args.box_threshold)
    return None


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files, folders (their images) and glob patterns -> image paths, each file once, in the
    order given (a folder's or a pattern's files sorted). Raises if nothing is found."""
    paths, seen = [], set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [
                os.path.join(pattern, f)
                for f in sorted(os.listdir(pattern))
                if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
            if not found:
                raise FileNotFoundError(f"--input {pattern!r} matches no file")
        for path in found:
            if os.path.realpath(path) not in seen:
                seen.add(os.path.realpath(path))
                paths.append(path)
    if not paths:
        raise FileNotFoundError(f"--input {' '.join(patterns)} holds no image {IMAGE_EXTENSIONS}")
    return paths


def output_paths(paths: list[str], output_dir: str) -> list[str]:
    """One distinct ``<name>_glid.png`` under ``output_dir`` per input: the input's path relative
    to the inputs' common folder (so ``a/x.jpg`` and ``b/x.jpg`` go to ``a/x_glid.png`` and
    ``b/x_glid.png``); inputs that differ only by extension keep it (``x_jpg_glid.png``)."""
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    stems = [os.path.splitext(os.path.relpath(p, root))[0] for p in absolute]
    outs = []
    for path, stem in zip(absolute, stems):
        if stems.count(stem) > 1:
            stem += "_" + os.path.splitext(path)[1].lstrip(".").lower()
        outs.append(os.path.join(output_dir, stem + "_glid.png"))
    return outs


def main(argv: list[str] | None = None) -> list[str]:
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="glid.demo")
    if bool(args.input) == bool(args.video_input):
        raise SystemExit("give exactly one of --input and --video-input")
    demo = VisualizationDemo(
        setup_cfg(args),
        score_threshold=args.confidence_threshold,
        person_boxes=person_box_source(args),
    )
    written = []
    if args.input:
        paths = expand_inputs(args.input)
        failed = []
        for path, out in tqdm.tqdm(list(zip(paths, output_paths(paths, args.output)))):
            try:
                image = read_image(path, format="BGR")
            except (OSError, ValueError) as e:  # one bad file must not stop the others
                logger.error(f"cannot read {path}: {e}")
                failed.append(path)
                continue
            start = time.perf_counter()
            predictions, vis = demo.run_on_image(image, path)
            logger.info(f"{path}: {sorted(predictions)} in {time.perf_counter() - start:.2f}s")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            vis.save(out)
            written.append(out)
        if failed:
            logger.info(f"wrote {len(written)} visualization(s) to {args.output}")
            raise SystemExit(f"{len(failed)} of {len(paths)} input(s) unreadable: {failed}")
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
