"""Perplexity from per-token negative log-likelihoods.

Unlike the Hub's ``perplexity`` metric (which loads a model by id and scores raw text), this module takes
the natural-log NLL of every predicted token, so any model and any windowing protocol can feed it. It is
shipped with prune-llm and loads offline by path (``evaluate.load(folder)``).
"""

from __future__ import annotations

import math

import datasets
import evaluate

_DESCRIPTION = "Perplexity = exp(mean token NLL), with the NLL in nats of each predicted token."

_KWARGS_DESCRIPTION = """
Args:
    nll (list of float): Negative log-likelihood (natural log) of each predicted token.
Returns:
    perplexity (float): exp of the mean NLL.
    mean_nll (float): Mean NLL per token (nats), the cross-entropy.
    num_tokens (int): How many tokens were scored.
Example:
    >>> metric = evaluate.load("prune/evaluation/metrics/perplexity")
    >>> round(metric.compute(nll=[1.0, 3.0])["perplexity"], 4)
    7.3891
"""


class Perplexity(evaluate.Metric):
    """exp(mean NLL) over the tokens given, with the mean NLL and the token count."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nll": datasets.Value("float64")}),
        )

    def _compute(self, nll: list[float]) -> dict[str, float | int]:
        if not nll:
            raise ValueError("perplexity needs at least one token NLL")
        # math.fsum: the sum of many small floats stays exact to the last bit, whatever the order.
        mean_nll = math.fsum(nll) / len(nll)
        return {"perplexity": math.exp(mean_nll), "mean_nll": mean_nll, "num_tokens": len(nll)}
