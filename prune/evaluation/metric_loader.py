"""Metrics through the `evaluate` library, offline first.

The metric modules prune-llm needs ship inside the package (``prune/evaluation/metrics/<name>/<name>.py``,
each a script subclassing ``evaluate.Metric``) and load by path, so they work with ``HF_HUB_OFFLINE=1``.
Any other name goes to the Hugging Face Hub as usual (online users get every Hub metric).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prune.errors import MetricNotFoundError

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def shipped_metrics() -> list[str]:
    """Names of the metric modules shipped inside the package, sorted.

    Example:
        >>> "accuracy" in shipped_metrics()
        True
    """
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def load_metric(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load an `evaluate` metric: the shipped module of that name first, else the Hub name.

    Note that the shipped ``perplexity`` takes per-token NLLs (``compute(nll=[...])``), not a model id.

    Args:
        name: A shipped metric ("accuracy", "perplexity", "kl_divergence", "mean") or any Hub metric id.
        **kwargs: Passed on to ``evaluate.load`` (e.g. ``keep_in_memory=True``).

    Example:
        >>> load_metric("accuracy").compute(predictions=[1, 0], references=[1, 1])["accuracy"]
        0.5
    """
    import evaluate

    folder = METRICS_DIR / name
    if (folder / f"{name}.py").is_file():
        return evaluate.load(str(folder), **kwargs)
    try:
        return evaluate.load(name, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        raise MetricNotFoundError(
            f"metric {name!r} is not shipped with prune-llm ({', '.join(shipped_metrics())}) and could not be "
            f"loaded from the Hub ({type(exc).__name__}); use a shipped name, or go online / pass a local folder"
        ) from None


def aggregate(name: str, **columns: Any) -> dict[str, float]:
    """Compute a shipped metric in memory over full columns and return its results as floats.

    Example:
        >>> aggregate("mean", values=[1.0, 0.5])["mean"]
        0.75
    """
    result = load_metric(name, keep_in_memory=True).compute(**columns)
    return {key: float(value) if not isinstance(value, int) else value for key, value in result.items()}
