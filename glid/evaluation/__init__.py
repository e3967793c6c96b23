"""Evaluators, chosen by the dataset's ``evaluator_type`` metadata (:data:`EVALUATOR_REGISTRY`)."""

from .build import EVALUATOR_REGISTRY, build_evaluator

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator"]
