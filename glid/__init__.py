"""GLID: a generalist encoder-decoder vision model, as a detectron2 project.

``import glid`` then ``glid.add_glid_config(cfg)`` (or ``from glid import add_glid_config``) is
the detectron2 entry: the first use of any public name of this package except ``layers`` and
``__version__`` registers GLID's backbone, pixel decoders, tasks, meta-architecture and built-in
datasets with detectron2 (:func:`register_all`; importing ``glid.data`` or ``glid.modeling``
directly registers what that subpackage holds, as in detectron2).

The registration is deferred to that first use, not done by ``import glid`` itself, so that the
custom ops keep to their one dependency: Python runs this file for ``import glid.layers`` too,
and ``glid.layers`` (and ``glid._C``) must load with torch alone, without detectron2, fvcore,
timm or OpenCV (e.g. for the op tests and benchmarks on a machine that has only torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from . import checkpoint, config, data, engine, evaluation, layers, modeling  # noqa: F401
    from .config import add_glid_config

__version__ = "0.1.0"

__all__ = ["add_glid_config", "register_all", "__version__"]

# Subpackages reachable as attributes of ``glid`` without an explicit import; all but ``layers``
# need detectron2 and trigger the registration.
_SUBPACKAGES = ("checkpoint", "config", "data", "engine", "evaluation", "layers", "modeling")


def register_all() -> None:
    """Register every GLID component and built-in dataset with detectron2 (idempotent).

    Imports ``glid.data`` and ``glid.modeling``, whose modules register themselves on import.
    Called on the first use of ``glid.add_glid_config`` or of a detectron2-side subpackage.
    """
    importlib.import_module(".data", __name__)
    importlib.import_module(".modeling", __name__)


def __getattr__(name: str) -> Any:
    if name == "add_glid_config":
        register_all()
        from .config import add_glid_config

        globals()[name] = add_glid_config  # later lookups skip this hook
        return add_glid_config
    if name in _SUBPACKAGES:
        if name != "layers":
            register_all()
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
