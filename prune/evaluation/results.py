"""Results of the evaluation harness: one model (`Evaluation`) or before/after (`Comparison`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Display name, number format, and whether higher is better (None: neither, e.g. a count).
METRIC_INFO: dict[str, tuple[str, str, bool | None]] = {
    "perplexity": ("perplexity", ".3f", False),
    "mean_nll": ("mean NLL (nats/token)", ".4f", False),
    "num_tokens": ("tokens scored", ",d", None),
    "kl_divergence": ("KL(original || model) (nats/token)", ".4f", False),
    "token_agreement": ("greedy token agreement", ".3f", True),
    "exact_match": ("greedy exact match", ".3f", True),
    "cosine_mean": ("embedding cosine, mean", ".4f", True),
    "cosine_min": ("embedding cosine, min", ".4f", True),
    "probe_accuracy": ("probe accuracy", ".4f", True),
    "head_accuracy": ("head accuracy", ".4f", True),
    "parameters": ("parameters", ",d", False),
    "size_mb": ("size (MB)", ".2f", False),
    "latency_ms": ("latency (ms/batch)", ".1f", False),
    "tokens_per_s": ("throughput (tokens/s)", ",.0f", True),
    "peak_memory_mb": ("peak memory (MB)", ".1f", False),
}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    spec = METRIC_INFO.get(key, (key, ".4g", None))[1]
    if spec.endswith("d"):
        return format(int(value), spec)
    return format(float(value), spec)


def _label(key: str) -> str:
    return METRIC_INFO.get(key, (key, "", None))[0]


def _ordered(keys: Any) -> list[str]:
    known = [k for k in METRIC_INFO if k in keys]
    return known + sorted(k for k in keys if k not in METRIC_INFO)


@dataclass
class Evaluation:
    """Metrics of one model and the protocol that produced them."""

    metrics: dict[str, float]
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"metrics": ..., "protocol": ...}``."""
        return {"metrics": dict(self.metrics), "protocol": dict(self.protocol)}

    def to_markdown(self) -> str:
        """A two-column Markdown table (metric, value)."""
        lines = ["| metric | value |", "|---|---:|"]
        lines += [f"| {_label(k)} | {_fmt(k, self.metrics[k])} |" for k in _ordered(self.metrics)]
        return "\n".join(lines)


@dataclass
class Comparison:
    """Before/after metrics of an original and a pruned model, measured with the same protocol.

    Example:
        >>> c = Comparison(before={"perplexity": 10.0}, after={"perplexity": 12.0}, protocol={})
        >>> c.delta()["perplexity"]
        2.0
    """

    before: dict[str, float]
    after: dict[str, float]
    protocol: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.before) != set(self.after):
            raise ValueError(f"before/after keys differ: {sorted(set(self.before) ^ set(self.after))}")

    def delta(self) -> dict[str, float]:
        """after - before, per metric."""
        return {k: self.after[k] - self.before[k] for k in self.before}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"before", "after", "delta", "protocol"}``."""
        return {
            "before": dict(self.before),
            "after": dict(self.after),
            "delta": self.delta(),
            "protocol": dict(self.protocol),
        }

    def to_markdown(self) -> str:
        """Side-by-side Markdown table: metric | before | after | delta (with the relative change)."""
        lines = ["| metric | before | after | delta |", "|---|---:|---:|---:|"]
        for key in _ordered(self.before):
            before, after = self.before[key], self.after[key]
            diff = after - before
            if math.isfinite(diff) and abs(diff) <= 1e-12 * max(1.0, abs(before)):
                diff = type(diff)(0)  # float noise (a cosine of 1 - 1e-16) is no change
            delta = ("+" if diff >= 0 else "") + _fmt(key, diff)
            if before and math.isfinite(before) and math.isfinite(after) and diff:
                delta += f" ({diff / abs(before):+.1%})"
            lines.append(f"| {_label(key)} | {_fmt(key, before)} | {_fmt(key, after)} | {delta} |")
        return "\n".join(lines)
