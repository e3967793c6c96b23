"""Access to the compiled extension ``glid._C`` and the kernel-or-reference policy of the ops.

``import glid`` never needs ``_C``. Every op decides between its compiled kernel and its
pure-PyTorch reference with one policy, :func:`use_kernel` (bound per op by
:func:`kernel_policy`), checked in this order:

1. The user chose the pure-PyTorch reference (``GLID_REFERENCE_OPS=1``): the reference runs,
   logged once per op.
2. ``_C`` is not built (and the reference was not chosen): a ``RuntimeError`` says why the import
   failed and how to build it or choose the reference. Never a silent fallback after an error.
3. The op has no kernel for the device type/dtype (a fixed table in the op's module): the
   reference runs, logged once per (op, device type, dtype).
4. CUDA tensors but ``_C`` was built without its CUDA kernels: a ``RuntimeError`` says how to
   rebuild or choose the reference.
5. Otherwise the kernel runs.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Collection, Mapping
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

_ENV_REFERENCE = "GLID_REFERENCE_OPS"
_state: dict = {}
_logged: set[str] = set()


def load_ext() -> ModuleType | None:
    """Import ``glid._C`` once; returns it, or ``None`` if it is not built (error kept)."""
    if "module" not in _state:
        try:
            _state["module"] = importlib.import_module("glid._C")
            _state["error"] = None
        except ImportError as e:  # only "not built / not loadable"; other errors propagate
            _state["module"] = None
            _state["error"] = e
    return _state["module"]


def reference_ops_requested() -> bool:
    """Whether the user chose the pure-PyTorch reference ops (``GLID_REFERENCE_OPS=1``)."""
    return os.environ.get(_ENV_REFERENCE, "0") == "1"


def log_once(key: str, message: str) -> None:
    """Log ``message`` at INFO the first time ``key`` is seen in this process."""
    if key not in _logged:
        _logged.add(key)
        logger.info(message)


def has_cuda_kernels() -> bool:
    """Whether ``glid._C`` is built with its CUDA kernels."""
    ext = load_ext()
    return ext is not None and bool(ext.has_cuda())


def use_kernel(
    op_name: str,
    kernel_dtypes: Mapping[str, Collection[torch.dtype]],
    device_type: str,
    dtype: torch.dtype,
) -> bool:
    """Whether op ``op_name`` runs its compiled kernel for ``device_type``/``dtype`` (the policy).

    Args:
        op_name: the op's name, used in the messages and the log-once keys.
        kernel_dtypes: device type -> dtypes for which the op has a compiled kernel.
        device_type: the inputs' device type (``"cpu"``, ``"cuda"``, ...).
        dtype: the inputs' dtype.

    Returns:
        ``True`` to run the kernel; ``False`` to run the reference (the reason is logged once).

    Raises:
        RuntimeError: when ``glid._C`` is not built and the reference was not requested, or when
            the inputs are on CUDA and ``glid._C`` was built without its CUDA kernels.
    """
    if reference_ops_requested():
        log_once(
            f"ref:{op_name}", f"{op_name}: {_ENV_REFERENCE}=1, using the pure-PyTorch reference"
        )
        return False
    if load_ext() is None:
        raise RuntimeError(
            f"{op_name} needs the compiled extension glid._C, which failed to import: "
            f"{_state['error']!r}. Build it with `pip install --no-build-isolation -e .` "
            f"(see README, 'Install'), or set {_ENV_REFERENCE}=1 to run the slower pure-PyTorch "
            "reference ops instead."
        )
    if dtype not in kernel_dtypes.get(device_type, ()):
        log_once(
            f"{op_name}:no-kernel:{device_type}:{dtype}",
            f"{op_name}: no compiled kernel for {device_type}/{dtype}; running the pure-PyTorch "
            "reference (slower, more memory)",
        )
        return False
    if device_type == "cuda" and not has_cuda_kernels():
        raise RuntimeError(
            f"{op_name}: the inputs are on CUDA but glid._C was built without its CUDA kernels. "
            "Rebuild it with CUDA (CUDA_HOME set, FORCE_CUDA=1 if no GPU is visible at build "
            f"time; see setup.py), or set {_ENV_REFERENCE}=1 to run the pure-PyTorch reference."
        )
    return True


def kernel_policy(
    op_name: str, kernel_dtypes: Mapping[str, Collection[torch.dtype]]
) -> Callable[[str, torch.dtype], bool]:
    """:func:`use_kernel` bound to one op: returns ``decide(device_type, dtype) -> bool``.

    The returned function is marked ``torch.compiler.assume_constant_result``: ``torch.compile``
    evaluates it once while tracing (the decision is constant per process, device type and dtype)
    instead of tracing the environment lookup and the logging.
    """
    table = {device: frozenset(dtypes) for device, dtypes in kernel_dtypes.items()}

    @torch.compiler.assume_constant_result
    def decide(device_type: str, dtype: torch.dtype) -> bool:
        return use_kernel(op_name, table, device_type, dtype)

    decide.__name__ = decide.__qualname__ = f"use_kernel[{op_name}]"
    return decide
