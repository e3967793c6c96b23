"""Deterministic, nested training-set fractions (limited-data fine-tuning, Tab. 4).

Every image gets a rank from a SHA-256 hash of ``(seed, its path)``; a fraction ``f`` keeps the
``round(f * n)`` best-ranked images. The subset is therefore

* the same in every run, process and machine (no RNG, not python's salted ``hash``);
* nested: with one seed, the 10 % subset lies inside the 20 % one, inside the 50 % one;
* independent of the order of the dicts, and of where the dataset lies on disk: the hashed
  path is the file name relative to the deepest directory all file names share (for ImageNet
  ``n01440764/n01440764_10026.JPEG``), so the same files give the same subset under any
  ``$DETECTRON2_DATASETS``.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["subset_dataset_dicts"]


def _relative_names(file_names: list[str]) -> list[str]:
    """``file_names`` relative to their common directory (unchanged when they have none)."""
    try:
        base = os.path.commonpath(file_names)
    except ValueError:  # a mix of absolute and relative paths
        return file_names
    if base in file_names:  # one distinct file: commonpath is the file itself
        base = os.path.dirname(base)
    return [os.path.relpath(name, base) if base else name for name in file_names]


def _rank_key(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"{int(seed)}\0{name}".encode()).digest()


def subset_dataset_dicts(dicts: list[dict], fraction: float, seed: int) -> list[dict]:
    """The deterministic ``fraction`` of ``dicts`` chosen with ``seed`` (see the module).

    Args:
        dicts: dataset dicts, each with a ``file_name``.
        fraction: in (0, 1] (``DATASETS.TRAIN_FRACTION``); 1.0 returns ``dicts`` itself.
        seed: ``DATASETS.TRAIN_FRACTION_SEED``; another seed draws another subset.

    Returns:
        ``max(1, round(fraction * len(dicts)))`` of the dicts (none for an empty list), in
        their original order.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"DATASETS.TRAIN_FRACTION must be in (0, 1], got {fraction}")
    if fraction == 1.0 or not dicts:
        return dicts
    keep = max(1, round(fraction * len(dicts)))
    names = _relative_names([d["file_name"] for d in dicts])
    keys = [(_rank_key(seed, name), name) for name in names]
    chosen = set(sorted(range(len(dicts)), key=keys.__getitem__)[:keep])
    return [d for i, d in enumerate(dicts) if i in chosen]
