"""Evaluators, chosen by the dataset's ``evaluator_type`` metadata."""

from .build import build_evaluator

__all__ = ["build_evaluator"]
