"""Optional: lm-evaluation-harness tasks on an in-memory model (the `lm-eval` extra).

The model is wrapped as ``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer)``, so a
pruned model is scored without saving it first. Task data comes from the Hugging Face Hub (online).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from prune.errors import MissingExtraError


def require_lm_eval() -> tuple[Any, Any]:
    """Import lm-eval, or raise `MissingExtraError` naming the install command."""
    try:
        lm_eval = importlib.import_module("lm_eval")
        huggingface = importlib.import_module("lm_eval.models.huggingface")
    except ImportError:
        raise MissingExtraError(
            "lm-evaluation-harness is not installed; run `pip install prune-llm[lm-eval]` to use --lm-eval"
        ) from None
    return lm_eval, huggingface


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    batch_size: int = 8,
    limit: int | None = None,
    num_fewshot: int | None = None,
) -> dict[str, dict[str, float]]:
    """Run lm-evaluation-harness tasks on an in-memory model; numeric results per task.

    Args:
        model: A loaded ``PreTrainedModel`` (pruned or not).
        tokenizer: Its tokenizer.
        tasks: Task names, e.g. ``["hellaswag", "arc_easy"]``.
        batch_size: Batch size for lm-eval.
        limit: Examples per task (None: all).
        num_fewshot: Few-shot examples (None: each task's default).

    Example:
        >>> run_lm_eval(model, tok, ["arc_easy"], limit=100)  # doctest: +SKIP
        {'arc_easy': {'acc,none': 0.58, 'acc_norm,none': 0.52, ...}}
    """
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise MissingExtraError("no lm-eval task named; pass task names such as --lm-eval arc_easy,hellaswag")
    lm_eval, huggingface = require_lm_eval()
    lm = huggingface.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    output = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot)
    results: dict[str, dict[str, float]] = {}
    for task, metrics in (output or {}).get("results", {}).items():
        numeric = {
            name: float(value)
            for name, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        results[task] = numeric
    return results
