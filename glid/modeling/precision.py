"""Mixed precision: the ``SOLVER.AMP`` / ``TEST.AMP`` precision keys and float32 predictions."""

from __future__ import annotations

import torch

__all__ = ["autocast_dtype", "to_float32"]

_PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(precision: str, key: str, device: str) -> torch.dtype:
    """The autocast dtype a precision key names, checked against the device.

    Args:
        precision: the key's value, "bfloat16" or "float16".
        key: the config key, for the error message (e.g. "SOLVER.AMP.PRECISION").
        device: ``MODEL.DEVICE``; float16 needs a GPU (the CPU has no fast float16 and
            detectron2's loss scaling is CUDA's).
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"{key} must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    dtype = _PRECISIONS[precision]
    if dtype is torch.float16 and not str(device).startswith("cuda"):
        raise ValueError(
            f"{key}='float16' needs a GPU, but MODEL.DEVICE is {device!r}; use 'bfloat16' there"
        )
    return dtype


def to_float32(obj):
    """``obj`` with every float16 / bfloat16 tensor inside (dicts, lists, tuples) as float32."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.dtype in (torch.float16, torch.bfloat16) else obj
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_float32(v) for v in obj)
    return obj
