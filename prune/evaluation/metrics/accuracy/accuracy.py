"""Accuracy: the fraction of predictions equal to their references.

Shipped with prune-llm so that it loads offline by path (``evaluate.load(folder)``); it computes the same
number as the Hub's ``accuracy`` metric, without its scikit-learn dependency.
"""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): Predicted class ids.
    references (list of int): True class ids, one per prediction.
Returns:
    accuracy (float): Fraction of correct predictions, in [0, 1].
    num_examples (int): How many predictions were scored.
Example:
    >>> metric = evaluate.load("prune/evaluation/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]
    0.6666666666666666
"""


class Accuracy(evaluate.Metric):
    """Fraction of exact matches between predicted and true class ids."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float | int]:
        if not predictions:
            raise ValueError("accuracy needs at least one prediction")
        correct = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
        return {"accuracy": correct / len(predictions), "num_examples": len(predictions)}
