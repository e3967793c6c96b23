"""End to end through train_net.py on the generated data: training, evaluation, checkpoint
resume, a two-process (gloo) run, and the demo."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.engine import default_argument_parser

from glid.data import register_all_synthetic
from glid.data.synthetic import generate_synthetic_dataset
from glid.engine import GLIDAMPTrainer
from tests.utils import REPO_ROOT, TINY_CONFIG

sys.path.insert(0, REPO_ROOT)
import train_net  # noqa: E402

pytestmark = pytest.mark.slow

PREFIX = "glid_e2e"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("d2datasets"))
    generate_synthetic_dataset(root, seed=1, num_train=12, num_val=4)
    register_all_synthetic(root, prefix=PREFIX)
    return root


def _opts(output_dir, max_iter, *extra):
    return [
        "DATASETS.TRAIN", f"('{PREFIX}_sem_seg_train',)",
        "DATASETS.TEST", f"('{PREFIX}_sem_seg_val',)",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", "2",
        "MODEL.GLID.MASK_LOSS.TRAIN_NUM_POINTS", "256",
        "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(output_dir),
        *extra,
    ]  # fmt: skip


def _args(*argv):
    return default_argument_parser().parse_args(["--config-file", TINY_CONFIG, *argv])


def test_train_then_eval_only(data_root, tmp_path):
    out = tmp_path / "run"
    train_net.main(_args(*_opts(out, 4)))
    assert (out / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    logged = [m for m in metrics if "total_loss" in m]
    assert logged[-1]["iteration"] == 3 and logged[-1]["total_loss"] > 0
    assert glob.glob(str(out / "events.out.tfevents.*")), "TensorBoard events are written"
    results = train_net.main(
        _args("--eval-only", *_opts(out, 4, "MODEL.WEIGHTS", str(out / "model_final.pth")))
    )
    sem = results["sem_seg"]
    assert 0.0 <= sem["mIoU"] <= 100.0 and 0.0 <= sem["pACC"] <= 100.0
    assert set(sem) >= {"mIoU", "fwIoU", "mACC", "pACC"}


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-amp"])
def test_resume_continues_from_last_checkpoint(data_root, tmp_path, amp):
    out = tmp_path / "run"
    cfg = train_net.setup(_args(*_opts(out, 4, "SOLVER.AMP.ENABLED", str(amp))))
    trainer = train_net.Trainer(cfg)
    # SOLVER.AMP on the CPU: bfloat16 autocast (detectron2's AMPTrainer is CUDA-only).
    assert isinstance(trainer._trainer, GLIDAMPTrainer) is amp
    trainer.resume_or_load(resume=False)
    trainer.train()
    # Simulate a run killed after iteration 2: its last checkpoint is model_0000001.pth.
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000001.pth")
    saved = torch.load(out / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == 1
    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    head = resumed.model.head.weight
    assert torch.equal(head, saved["model"]["head.weight"])
    assert resumed.optimizer.state_dict()["state"], "optimizer state restored"
    resumed.train()
    assert (out / "model_final.pth").is_file()


def test_two_process_gloo_training(data_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "train_net.py"),
        "--config-file", TINY_CONFIG, "--num-gpus", "2", "--dist-url", "auto",
        *_opts(tmp_path / "ddp", 2, "DATASETS.TRAIN", "('glid_synth_sem_seg_train',)",
              "DATASETS.TEST", "('glid_synth_sem_seg_val',)"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "World size: 2" in log
    assert "mIoU" in log  # evaluated (distributed SemSegEvaluator) after training
    assert (tmp_path / "ddp" / "model_final.pth").is_file()


def test_demo_writes_visualizations(data_root, tmp_path):
    out = tmp_path / "run"
    train_net.main(_args(*_opts(out, 1)))
    sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
    import demo  # noqa: E402

    image = glob.glob(os.path.join(data_root, "glid_synth", "images", "val", "*.jpg"))[0]
    weights = str(out / "model_final.pth")
    written = demo.main(
        ["--config-file", TINY_CONFIG, "--input", image, "--output", str(tmp_path / "vis"),
         "--opts", "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{PREFIX}_sem_seg_val',)"]
    )  # fmt: skip
    assert len(written) == 1 and os.path.getsize(written[0]) > 1000

    import cv2

    video_in = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video_in, cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 64))
    frame = cv2.imread(image)
    for _ in range(3):
        writer.write(cv2.resize(frame, (64, 64)))
    writer.release()
    video_out = str(tmp_path / "clip_vis.mp4")
    demo.main(
        ["--config-file", TINY_CONFIG, "--video-input", video_in, "--output", video_out,
         "--opts", "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{PREFIX}_sem_seg_val',)"]
    )  # fmt: skip
    frames = cv2.VideoCapture(video_out)
    assert int(frames.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
