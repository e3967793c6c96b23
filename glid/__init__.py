"""GLID: a generalist encoder-decoder vision model, as a detectron2 project."""

__version__ = "0.1.0"
