"""Access to the compiled extension ``glid._C`` and the explicit reference-path policy.

``import glid`` never needs ``_C``. An op that needs a kernel asks :func:`kernel_available`:

* ``_C`` is built and has a kernel for the device/dtype: the kernel runs.
* The user chose the pure-PyTorch reference (``GLID_REFERENCE_OPS=1``), or the op has no kernel
  for that device/dtype (a fixed table in the op's module): the reference runs, logged once.
* Otherwise (``_C`` missing and the reference not chosen): a ``RuntimeError`` says why the import
  failed and how to build it or choose the reference. Never a silent fallback after an error.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

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


def kernel_available(op_name: str) -> bool:
    """Whether op ``op_name`` should run its compiled kernel.

    Returns ``False`` (and logs once) when the reference path was requested; raises a clear
    ``RuntimeError`` when ``_C`` is not built and the reference path was not requested.
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
    return True


def has_cuda_kernels() -> bool:
    """Whether ``glid._C`` is built with its CUDA kernels."""
    ext = load_ext()
    return ext is not None and bool(ext.has_cuda())
