"""Mean KL divergence between two models' next-token distributions.

Each input is KL(P || Q) at one token position, computed by the caller from the two models' logits
(P: the reference model, Q: the model under test). The module averages them over tokens. Shipped with
prune-llm and loadable offline by path (``evaluate.load(folder)``).
"""

from __future__ import annotations

import math

import datasets
import evaluate

_DESCRIPTION = "Mean over token positions of KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)), in nats."

_KWARGS_DESCRIPTION = """
Args:
    kl (list of float): KL(P || Q) of each scored token position, in nats.
Returns:
    kl_divergence (float): Mean KL per token (nats).
    max_kl (float): Largest per-token KL.
    num_tokens (int): How many token positions were scored.
Example:
    >>> metric = evaluate.load("prune/evaluation/metrics/kl_divergence")
    >>> metric.compute(kl=[0.0, 0.5])["kl_divergence"]
    0.25
"""


class KLDivergence(evaluate.Metric):
    """Mean and max of per-token KL divergences."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"kl": datasets.Value("float64")}),
        )

    def _compute(self, kl: list[float]) -> dict[str, float | int]:
        if not kl:
            raise ValueError("kl_divergence needs at least one token position")
        return {"kl_divergence": math.fsum(kl) / len(kl), "max_kl": max(kl), "num_tokens": len(kl)}
