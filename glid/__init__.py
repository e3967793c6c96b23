"""GLID: a generalist encoder-decoder vision model, as a detectron2 project.

Importing ``glid`` registers its backbone, pixel decoders, tasks, meta-architecture and
built-in datasets with detectron2.
"""

from . import data, modeling  # noqa: F401  (registration)
from .config import add_glid_config

__version__ = "0.1.0"

__all__ = ["add_glid_config", "__version__"]
