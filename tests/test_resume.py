"""Exact resume: a run interrupted at iteration k and resumed from its checkpoint is the
uninterrupted run (same seed) — the same batches, learning rates and losses at every iteration,
and bit-identical final weights and optimizer state (glid.engine.resume)."""

import copy
import random
import sys

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from glid.data import register_all_synthetic
from glid.data.synthetic import generate_synthetic_dataset
from tests.utils import REPO_ROOT, make_tiny_cfg

sys.path.insert(0, REPO_ROOT)
import train_net  # noqa: E402

PREFIX = "glid_resume"
N, K, PERIOD = 6, 3, 3  # train N iterations; the interrupted run stops after K (checkpointed)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny model gains nothing from two, and two spinning OpenMP
    threads on a busy 2-core machine make this test 10x slower. (Bit-exactness holds for any
    fixed thread count.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("d2datasets"))
    # 8 images, 2 per batch: the N iterations cross an epoch of the shuffled index stream.
    generate_synthetic_dataset(root, seed=3, num_train=8, num_val=2)
    register_all_synthetic(root, prefix=PREFIX)
    return root


def _cfg(output_dir, *extra):
    cfg = make_tiny_cfg(
        "DATASETS.TRAIN", f"('{PREFIX}_sem_seg_train',)",
        "DATASETS.TEST", "()",  # no evaluation after training
        "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.MAX_ITER", N,
        "SOLVER.WARMUP_ITERS", 4,  # K falls inside the warm-up
        "SOLVER.CHECKPOINT_PERIOD", PERIOD,
        "MODEL.GLID.MASK_LOSS.TRAIN_NUM_POINTS", 64,
        # Random draws in the model too (drop path), besides the augmentations and the
        # importance sampling of the mask loss's points.
        "MODEL.SWIN.DROP_PATH_RATE", 0.2,
        # Small random-scale crops (64 px) to keep it fast.
        "INPUT.MIN_SIZE_TRAIN", (56, 64, 72, 80),
        "INPUT.CROP.SIZE", (64, 64),
        "DATALOADER.NUM_WORKERS", 0,
        "SEED", 7,
        "OUTPUT_DIR", str(output_dir),
        *extra,
    )  # fmt: skip
    cfg.freeze()
    return cfg


class _Record(HookBase):
    """Per iteration: the lr of every param group, the batch the model gets (file names and a
    checksum of the augmented images and labels) and the losses; optionally stops the run."""

    def __init__(self, stop_after=None):
        self.lrs, self.batches, self.losses = {}, {}, {}
        self.stop_after = stop_after

    def before_train(self):
        model = self.trainer.model
        forward = model.forward

        def recording_forward(batch):
            self.batches[self.trainer.iter] = [
                (d["file_name"], d["image"].double().sum().item(), d["sem_seg"].sum().item())
                for d in batch
            ]
            return forward(batch)

        model.forward = recording_forward

    def before_step(self):
        self.lrs[self.trainer.iter] = [g["lr"] for g in self.trainer.optimizer.param_groups]

    def after_step(self):
        it = self.trainer.iter
        storage = self.trainer.storage
        self.losses[it] = {
            k: v.latest() for k, v in storage.histories().items() if k.startswith("loss")
        }
        if it + 1 == self.stop_after:
            raise _Killed(it)


class _Killed(Exception):
    pass


def _train(cfg, resume, record):
    if not resume:  # the same initial weights, as train_net.setup (default_setup) seeds
        seed_all_rng(cfg.SEED)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.register_hooks([record])  # after detectron2's: runs after the checkpointer
    start = trainer.start_iter
    trainer.train()
    return trainer, start


def _assert_state_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_state_equal(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_resumed_run_equals_uninterrupted_run(data_root, tmp_path):
    # Uninterrupted: iterations 0 .. N-1.
    full = _Record()
    trainer, _ = _train(_cfg(tmp_path / "full"), False, full)
    full_model = copy.deepcopy(trainer.model.state_dict())
    full_optim = copy.deepcopy(trainer.optimizer.state_dict())
    del trainer

    # Interrupted: killed right after iteration K-1 (and its checkpoint model_{K-1}.pth).
    cfg = _cfg(tmp_path / "interrupted")
    killed = _Record(stop_after=K)
    with pytest.raises(_Killed):
        _train(cfg, False, killed)
    assert (tmp_path / "interrupted" / "last_checkpoint").read_text() == f"model_{K - 1:07d}.pth"

    # A new process would start with other generator states.
    torch.manual_seed(12345)
    np.random.seed(12345)
    random.seed(12345)
    resumed = _Record()
    trainer, start = _train(cfg, True, resumed)
    assert start == K and sorted(resumed.lrs) == list(range(K, N))

    for it in range(N):
        run = killed if it < K else resumed
        assert run.batches[it] == full.batches[it], f"iteration {it}: other batch"
        # Exact equality: the same computation in the same order on the CPU.
        assert run.lrs[it] == full.lrs[it], f"iteration {it}: lr {run.lrs[it]} != {full.lrs[it]}"
        assert run.losses[it] == full.losses[it], f"iteration {it}: losses differ"
    # The lr moved at every iteration (warm-up, then poly decay): a schedule that restarted or
    # stood still would show.
    lrs = [full.lrs[it][0] for it in range(N)]
    assert all(a != b for a, b in zip(lrs, lrs[1:])), lrs

    _assert_state_equal(trainer.model.state_dict(), full_model, "model")
    _assert_state_equal(trainer.optimizer.state_dict(), full_optim, "optimizer")


def test_train_loader_starts_anywhere_and_ignores_workers(data_root, tmp_path):
    """Batch i of the training loader is the same whether the loader starts at 0 or at i, and
    with or without worker processes; mapping samples leaves the global generators alone."""

    def batches(num_workers, start, count):
        cfg = _cfg(tmp_path, "DATALOADER.NUM_WORKERS", num_workers)
        loader = train_net.Trainer.build_train_loader(cfg)
        loader.set_start(start)
        it = iter(loader)
        out = []
        for _ in range(count):
            out.append([(d["file_name"], d["image"], d["sem_seg"]) for d in next(it)])
        del it
        return out

    def assert_same(a, b):
        for x, y in zip(a, b, strict=True):
            assert [d[0] for d in x] == [d[0] for d in y]
            for dx, dy in zip(x, y):
                assert torch.equal(dx[1], dy[1]) and torch.equal(dx[2], dy[2])

    torch.manual_seed(0)
    before = torch.get_rng_state()
    reference = batches(0, 0, N)
    assert torch.equal(torch.get_rng_state(), before), "loading data drew from the generator"
    names = [d[0] for b in reference for d in b]
    assert len(set(names)) == 8, "6 batches of 2 from 8 images: one epoch and a half"
    assert_same(batches(0, K, N - K), reference[K:])
    assert_same(batches(2, 0, N), reference)


def test_random_training_seed_is_checkpointed(data_root, tmp_path):
    """With SEED: -1 each run draws its seed; a resumed run takes the checkpointed one."""
    from glid.engine import ExactResumeHook

    def hook_seed(trainer):
        (hook,) = [h for h in trainer._hooks if isinstance(h, ExactResumeHook)]
        return hook.seed

    cfg = _cfg(tmp_path, "SEED", -1)
    first = train_net.Trainer(cfg)
    state = first.state_dict()
    second = train_net.Trainer(cfg)
    assert hook_seed(second) != hook_seed(first)
    second.load_state_dict(state)
    assert hook_seed(second) == hook_seed(first)
