"""Exact resume: a run resumed from a checkpoint continues as the uninterrupted run would have.

detectron2's trainer restores the weights, the optimizer (and AMP grad-scaler) state, the
iteration and, through its ``LRScheduler`` hook, the learning-rate schedule. Two things it
leaves out make a resumed run diverge from the uninterrupted one:

* **The training data stream.** detectron2's infinite ``TrainingSampler`` restarts its shuffled
  sequence on resume, so the resumed run sees other batches (those of iterations 0, 1, ...
  again); data-loader workers and the aspect-ratio buckets restart too.
* **The random number generators.** Point sampling in the loss, drop path, dropout and the
  augmentations draw from the global torch / numpy / python generators, whose state is not in
  the checkpoint.

This module makes every random draw of training a function of ``(seed, rank, iteration)``,
so that nothing but the seed and the iteration has to be checkpointed:

* :class:`ResumableTrainLoader` (built by :func:`build_train_loader`, a drop-in for
  ``detectron2.data.build_detection_train_loader(cfg, mapper=...)``) yields, for iteration
  ``i``, exactly the batch that iteration ``i`` of an uninterrupted run gets. It keeps
  detectron2's index stream (the ``DATALOADER.SAMPLER_TRAIN`` sampler, seeded from the training
  seed, rank-strided) and its aspect-ratio grouping, but groups *indices* (by the dataset dicts'
  ``width``/``height``; dicts without them, e.g. semantic segmentation's, form one group)
  instead of mapped samples, so that skipping the first ``start_iter`` batches on resume costs
  only index arithmetic (about 0.3 s for 160k iterations of 16 images), no image is read.
  Each sample is mapped with
  the global generators seeded from ``(seed, rank, iteration, position in batch)`` and put
  back afterwards, so augmentations do not depend on ``DATALOADER.NUM_WORKERS``, on prefetching
  or on where the run was resumed, and do not disturb the model's random stream.
* :class:`ExactResumeHook` re-seeds the global generators (torch CPU and CUDA, numpy, python)
  before every iteration from ``(seed, rank, iteration)``, checkpoints the seed through
  detectron2's hook ``state_dict`` (so ``SEED: -1`` runs resume exactly too), and tells the
  loader where to start.

With both, a resumed run's batches, learning rates, losses, weights and optimizer state equal
those of the uninterrupted run with the same seed (bit for bit on the CPU; on CUDA up to the
nondeterminism of the kernels, see ``torch.use_deterministic_algorithms``). The random streams
differ from plain detectron2's (whose runs are not reproducible across resumes anyway), not
their distribution. The subset of ``RandomSubsetTrainingSampler`` is drawn when it is built,
from ``cfg.SEED`` (``default_setup``). ``DATASETS.TRAIN_FRACTION`` < 1 trains on a fixed subset
of each training dataset (:func:`train_dataset_dicts`), chosen by ``DATASETS.TRAIN_FRACTION_SEED``
alone: the same images whatever the training seed.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.data.detection_utils import check_metadata_consistency
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.utils import data as torchdata

from glid.data.image_io import BAD_SAMPLE_ERRORS
from glid.data.subset import subset_dataset_dicts
from glid.data.task_dataset import task_dataset_dicts

__all__ = [
    "ExactResumeHook",
    "ResumableTrainLoader",
    "build_train_loader",
    "derive_seed",
    "seed_all_rngs",
    "train_dataset_dicts",
    "training_seed",
]

logger = logging.getLogger(__name__)

# Distinct streams derived from one training seed.
_STREAM_MODEL, _STREAM_SAMPLE, _STREAM_ORDER, _STREAM_LOADER = 0, 1, 2, 3


def training_seed(cfg) -> int:
    """``cfg.SEED`` when it is >= 0, else one random seed shared by all processes."""
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed that is a well-mixed function of the non-negative integers ``entropy``."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def seed_all_rngs(seed: int) -> None:
    """Seeds python's ``random``, numpy's global generator and torch (CPU and all CUDA
    devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _get_cpu_rng_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_cpu_rng_states(states) -> None:
    py, np_state, torch_state = states
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)


def _list_collate(batch: list) -> list:
    return batch


# Key of a mapped sample listing the bad samples skipped in its place (popped by the loader).
_SKIPPED_KEY = "_bad_samples_skipped"
# Bad samples in a row after which skipping gives up (the data set is broken, not a sample).
_MAX_BAD_IN_A_ROW = 100


class _SeededMapDataset(torchdata.Dataset):
    """``dataset[index]`` mapped by ``mapper`` under generators seeded from the sample's place in
    the stream; keys are ``(iteration, position in batch, index)``. With ``skip_bad_samples``
    a sample whose mapping raises :data:`~glid.data.image_io.BAD_SAMPLE_ERRORS` is replaced like
    a dropped one, and the errors travel with the replacement (counted by the loader)."""

    def __init__(self, dataset, mapper, seed: int, rank: int, skip_bad_samples: bool = False):
        self.dataset, self.mapper, self.seed, self.rank = dataset, mapper, seed, rank
        self.skip_bad_samples = skip_bad_samples

    def _map(self, index: int, skipped: list[str]):
        """The mapped sample, or None if the mapper dropped it or it is bad and skipped."""
        try:
            return self.mapper(self.dataset[index])
        except BAD_SAMPLE_ERRORS as e:
            if not self.skip_bad_samples:
                raise
            logger.warning(
                "skipping bad training sample %d (DATALOADER.SKIP_BAD_SAMPLES): %s", index, e
            )
            skipped.append(str(e))
            if len(skipped) >= _MAX_BAD_IN_A_ROW:
                raise RuntimeError(
                    f"{len(skipped)} bad training samples in a row; the last: {e}"
                ) from e
            return None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        iteration, position, index = key
        saved = _get_cpu_rng_states()
        try:
            seed_all_rngs(derive_seed(self.seed, _STREAM_SAMPLE, self.rank, iteration, position))
            skipped: list[str] = []
            for attempt in range(1, 1_000_000):
                out = self._map(index, skipped)
                if out is not None:
                    if skipped and isinstance(out, dict):  # counted by the loader
                        out[_SKIPPED_KEY] = skipped
                    return out
                # As detectron2's MapDataset: the mapper dropped it; take another one (here a
                # deterministic one: the generators are seeded).
                if attempt >= 3:
                    logger.warning(
                        "failed to map sample %d for %d times, trying another", index, attempt
                    )
                index = random.randrange(len(self.dataset))
            raise RuntimeError("the mapper dropped every sample it was given")
        finally:
            _set_cpu_rng_states(saved)


class _KeyBatchSampler(torchdata.Sampler):
    """Batches of ``(iteration, position, index)`` keys from ``start_iter`` on."""

    def __init__(self, loader: ResumableTrainLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        batches = self.loader.index_batches()
        for _ in range(self.loader.start_iter):
            next(batches)
        for iteration, batch in enumerate(batches, start=self.loader.start_iter):
            yield [(iteration, position, index) for position, index in enumerate(batch)]


class ResumableTrainLoader:
    """An infinite training loader whose ``i``-th batch depends only on the seed, the rank and
    ``i``; :meth:`set_start` makes it begin at any iteration. See the module docstring.

    Args:
        dataset: list of dataset dicts, or a map-style dataset.
        mapper: dataset dict -> model input (may return None to drop a sample).
        sampler: a detectron2 training sampler: an infinite, rank-strided index stream that is a
            function of its ``_seed`` (``TrainingSampler``, ``RepeatFactorTrainingSampler``,
            ``RandomSubsetTrainingSampler``); its seed is set from the training seed.
        batch_size: images per iteration in this process.
        aspect_ratio_grouping: batch images with width > height apart from the others, as
            detectron2 does; needs ``width`` and ``height`` in the dataset dicts (otherwise
            all images form one group).
        num_workers: data-loading processes.
        seed: the training seed (:func:`training_seed`).
        skip_bad_samples: replace samples whose mapping raises
            :data:`~glid.data.image_io.BAD_SAMPLE_ERRORS` by others (each logged with its error)
            instead of stopping; :attr:`bad_samples_skipped` counts them (for mappers that
            return dicts), and while training the count is the metric
            ``data/bad_samples_skipped``.
    """

    def __init__(
        self,
        dataset,
        mapper,
        sampler: torchdata.Sampler,
        batch_size: int,
        *,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        seed: int = 0,
        skip_bad_samples: bool = False,
    ):
        self.group_ids = _aspect_ratio_groups(dataset) if aspect_ratio_grouping else None
        if aspect_ratio_grouping and self.group_ids is None:
            logger.info("aspect-ratio grouping: the dataset dicts have no width/height; one group")
        self.dataset = (
            DatasetFromList(dataset, copy=False) if isinstance(dataset, list) else dataset
        )
        self.mapper = mapper
        self.sampler = sampler
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.rank = comm.get_rank()
        self.seed = int(seed)
        self.start_iter = 0
        self.skip_bad_samples = skip_bad_samples
        self.bad_samples_skipped = 0

    def set_start(self, start_iter: int, seed: int | None = None) -> None:
        """Begin (the next ``iter()``) at iteration ``start_iter``, optionally with another
        training seed (the one restored from a checkpoint)."""
        self.start_iter = int(start_iter)
        if seed is not None:
            self.seed = int(seed)

    def index_batches(self) -> Iterator[list[int]]:
        """This process's infinite stream of batches of dataset indices, from iteration 0."""
        if not hasattr(self.sampler, "_seed"):
            raise TypeError(f"{type(self.sampler).__name__} has no _seed; cannot resume it")
        self.sampler._seed = derive_seed(self.seed, _STREAM_ORDER) % 2**31
        buckets: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            bucket = buckets[0 if self.group_ids is None else self.group_ids[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self):
        dataset = _SeededMapDataset(
            self.dataset, self.mapper, self.seed, self.rank, self.skip_bad_samples
        )
        loader = torchdata.DataLoader(
            dataset,
            batch_sampler=_KeyBatchSampler(self),
            num_workers=self.num_workers,
            collate_fn=_list_collate,
            # The loader's own generator, so that starting its iterator (which draws the
            # workers' base seed) does not consume the global torch generator.
            generator=torch.Generator().manual_seed(derive_seed(self.seed, _STREAM_LOADER)),
        )
        return self._count_skipped(loader)

    def _count_skipped(self, loader) -> Iterator[list[dict]]:
        """The batches, with the skipped-sample records removed and counted."""
        for batch in loader:
            for sample in batch:
                if isinstance(sample, dict):
                    self.bad_samples_skipped += len(sample.pop(_SKIPPED_KEY, ()))
            if self.bad_samples_skipped:
                try:
                    storage = get_event_storage()
                except AssertionError:  # no trainer running: nothing to report to
                    storage = None
                if storage is not None:
                    storage.put_scalar(
                        "data/bad_samples_skipped", self.bad_samples_skipped, smoothing_hint=False
                    )
            yield batch


def _aspect_ratio_groups(dataset) -> list[int] | None:
    if not isinstance(dataset, Sequence) or not all(
        isinstance(d, dict) and "width" in d and "height" in d for d in dataset
    ):
        return None
    return [0 if d["width"] > d["height"] else 1 for d in dataset]


def train_dataset_dicts(cfg) -> list[dict]:
    """The training inputs: each dataset of ``DATASETS.TRAIN`` loaded and filtered as
    detectron2's ``get_detection_dataset_dicts`` does, reduced to its ``DATASETS.TRAIN_FRACTION``
    (:func:`glid.data.subset.subset_dataset_dicts`, seeded by ``DATASETS.TRAIN_FRACTION_SEED``;
    every dataset keeps the same share), concatenated, then made into the task's inputs
    (:func:`glid.data.task_dataset_dicts`, e.g. one per person for top-down pose).
    """
    fraction = cfg.DATASETS.TRAIN_FRACTION
    names = list(cfg.DATASETS.TRAIN)
    if cfg.MODEL.LOAD_PROPOSALS:  # they would be loaded and then ignored by every mapper
        raise ValueError(
            "MODEL.LOAD_PROPOSALS is set, but GLID has no proposal stage (its queries take "
            "that role); set it False and leave DATASETS.PROPOSAL_FILES_TRAIN empty"
        )
    dicts = []
    for name in names:
        part = get_detection_dataset_dicts(
            name,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
        )
        if not isinstance(part, list):
            raise TypeError(f"training dataset {name} must be a list of dicts, is {type(part)}")
        if fraction != 1.0:
            subset = subset_dataset_dicts(part, fraction, cfg.DATASETS.TRAIN_FRACTION_SEED)
            logger.info(
                "using %d of %d images of %s (DATASETS.TRAIN_FRACTION=%g)",
                len(subset),
                len(part),
                name,
                fraction,
            )
            part = subset
        dicts += part
    if "annotations" in dicts[0]:
        try:
            check_metadata_consistency("thing_classes", names)
        except AttributeError:  # as detectron2: datasets without class names
            pass
    inputs = task_dataset_dicts(cfg, dicts, is_train=True)
    if not inputs:
        raise ValueError(f"no training input for task {cfg.MODEL.GLID.TASK!r} in {names}")
    return inputs


def build_train_loader(cfg, mapper, *, dataset=None, sampler=None):
    """``build_detection_train_loader(cfg, mapper=mapper)`` (same dataset, filtering, sampler,
    batch size, grouping and workers), as a :class:`ResumableTrainLoader`, over the
    ``DATASETS.TRAIN_FRACTION`` subset of each training dataset (:func:`train_dataset_dicts`;
    a given ``dataset`` is used as it is). Falls back to detectron2's loader, with a warning,
    for iterable-style datasets."""
    if dataset is None:
        dataset = train_dataset_dicts(cfg)
    elif cfg.DATASETS.TRAIN_FRACTION != 1.0:
        logger.warning(
            "DATASETS.TRAIN_FRACTION=%g is not applied to a dataset given to build_train_loader",
            cfg.DATASETS.TRAIN_FRACTION,
        )
    kwargs = build_detection_train_loader.from_config(cfg, mapper, dataset=dataset, sampler=sampler)
    if kwargs["sampler"] is None:
        logger.warning("iterable-style training dataset: its stream is not resumable exactly")
        if cfg.DATALOADER.SKIP_BAD_SAMPLES:
            raise ValueError(
                "DATALOADER.SKIP_BAD_SAMPLES needs a map-style training dataset (a list of dicts)"
            )
        return build_detection_train_loader(**kwargs)
    world_size = comm.get_world_size()
    total = kwargs["total_batch_size"]
    if total <= 0 or total % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total} must be a multiple of {world_size} processes"
        )
    return ResumableTrainLoader(
        kwargs["dataset"],
        kwargs["mapper"],
        kwargs["sampler"],
        total // world_size,
        aspect_ratio_grouping=kwargs["aspect_ratio_grouping"],
        num_workers=kwargs["num_workers"],
        seed=training_seed(cfg),
        skip_bad_samples=cfg.DATALOADER.SKIP_BAD_SAMPLES,
    )


class ExactResumeHook(HookBase):
    """Re-seeds the global generators before every iteration from ``(seed, rank, iteration)``,
    keeps ``seed`` in the checkpoint (detectron2 saves hooks' ``state_dict``), and starts a
    :class:`ResumableTrainLoader` at the trainer's start iteration. See the module docstring."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_train(self):
        loader = self.trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            loader.set_start(self.trainer.iter, self.seed)
        elif self.trainer.iter > 0:
            logger.warning(
                "resuming at iteration %d with a %s: the data stream restarts, the run is not "
                "the uninterrupted one (use glid.engine.build_train_loader)",
                self.trainer.iter,
                type(loader).__name__,
            )

    def before_step(self):
        seed_all_rngs(derive_seed(self.seed, _STREAM_MODEL, comm.get_rank(), self.trainer.iter))

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state_dict):
        self.seed = int(state_dict["seed"])
