#!/usr/bin/env python
"""Train and evaluate GLID with detectron2.

    python train_net.py --config-file configs/ade20k_sem_glid.yaml --num-gpus 8
    python train_net.py --config-file configs/ade20k_sem_glid.yaml --eval-only MODEL.WEIGHTS m.pth
    python train_net.py --config-file ... --resume          # continue from the last checkpoint

Several processes on a CPU-only machine communicate with gloo (``--num-gpus N`` then means N
processes).
"""

from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.engine import (
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import glid
from glid.checkpoint import GLIDCheckpointer
from glid.data import test_dataset_dicts
from glid.data.dataset_mappers import build_dataset_mapper
from glid.engine import build_lr_scheduler, build_optimizer, build_train_loop
from glid.evaluation import build_evaluator


class Trainer(DefaultTrainer):
    """detectron2's trainer with GLID's registered data mappers (train and test) and evaluators,
    optimizer and schedules."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, except that DDP gets device_ids=None on the CPU (gloo), where
        # detectron2 would pass the local rank as a CUDA device.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        device_ids = [comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        self._trainer = build_train_loop(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # GLID's loading rules: --resume must find every parameter; MODEL.WEIGHTS may leave
        # exactly the task's own parameters new (glid.checkpoint).
        self.checkpointer = GLIDCheckpointer.from_config(
            cfg, model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        # Exact resume (glid.engine.resume): every iteration's random draws depend on
        # (seed, rank, iteration) only, the seed is checkpointed, and the data stream starts
        # at the resumed iteration.
        seed = glid.engine.training_seed(self.cfg)
        return [glid.engine.ExactResumeHook(seed), *super().build_hooks()]

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        # Resumable: a resumed run gets the uninterrupted run's batches (glid.engine.resume).
        mapper = build_dataset_mapper(cfg, is_train=True)
        return glid.engine.build_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = build_dataset_mapper(cfg, is_train=False)
        dataset = test_dataset_dicts(cfg, dataset_name)  # e.g. one input per person for pose
        return build_detection_test_loader(dataset, mapper=mapper)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)


def setup(args):
    """Config from file + command-line overrides, frozen; logging and output dir set up."""
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        logging.getLogger("glid").warning("no CUDA device: running on the CPU (MODEL.DEVICE=cpu)")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="glid")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # Every parameter must load: numbers are never reported for a model that was not.
        GLIDCheckpointer.from_config(cfg, model, cfg.OUTPUT_DIR, require_all=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if isinstance(results, dict) and results:
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
