"""Evaluation harness: what pruning cost and what it gained, same data and protocol for both models.

Causal LMs: perplexity on held-out text, KL(original || pruned) of next-token distributions, greedy
generation agreement. Encoders: embedding cosine fidelity, classification accuracy (logistic probe on frozen
embeddings, or the model's own head). Any model: parameters, size, latency, throughput, peak memory.
Aggregations go through `evaluate` metric modules shipped in ``prune/evaluation/metrics`` (offline).

Example:
    >>> from prune.evaluation import compare_models
    >>> cmp = compare_models(model, pruned, tok, kind="causal-lm", eval_texts=texts,
    ...                      seq_len=256, batch_size=8)  # doctest: +SKIP
    >>> print(cmp.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

from prune.evaluation.compare import EvalSettings, compare_models, evaluate_model, evaluate_report
from prune.evaluation.metric_loader import load_metric
from prune.evaluation.results import Comparison, Evaluation

__all__ = [
    "Comparison",
    "EvalSettings",
    "Evaluation",
    "compare_models",
    "evaluate_model",
    "evaluate_report",
    "load_metric",
]
