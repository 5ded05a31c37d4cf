"""Mean, minimum and maximum of per-example scores (e.g. cosine similarities, agreement rates).

Shipped with prune-llm and loadable offline by path (``evaluate.load(folder)``).
"""

from __future__ import annotations

import math

import datasets
import evaluate

_DESCRIPTION = "Mean, min and max of a list of per-example scores."

_KWARGS_DESCRIPTION = """
Args:
    values (list of float): One score per example.
Returns:
    mean (float), min (float), max (float), num_examples (int).
Example:
    >>> metric = evaluate.load("prune/evaluation/metrics/mean")
    >>> metric.compute(values=[1.0, 0.5])["mean"]
    0.75
"""


class Mean(evaluate.Metric):
    """Mean, min and max over examples."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"values": datasets.Value("float64")}),
        )

    def _compute(self, values: list[float]) -> dict[str, float | int]:
        if not values:
            raise ValueError("mean needs at least one value")
        return {
            "mean": math.fsum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "num_examples": len(values),
        }
