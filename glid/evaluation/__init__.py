"""Evaluators, chosen by the dataset's ``evaluator_type`` metadata (:data:`EVALUATOR_REGISTRY`)."""

from .build import EVALUATOR_REGISTRY, build_evaluator
from .classification_evaluation import ClassificationEvaluator

__all__ = ["ClassificationEvaluator", "EVALUATOR_REGISTRY", "build_evaluator"]
