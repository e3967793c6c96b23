"""Checkpoint loading with GLID's hand-off rules (:class:`GLIDCheckpointer`)."""

from .checkpointer import CheckpointMismatchError, GLIDCheckpointer, LoadReport

__all__ = ["CheckpointMismatchError", "GLIDCheckpointer", "LoadReport"]
