"""The options of the `analyze` and `eval` commands, composed from the run's groups (`prune.options`).

`prune-llm analyze` reads a model, data, collection and score settings (`AnalyzeOptions`); `prune-llm eval`
reads a model, sequence settings and what to measure (`EvalCommandOptions`, with `MeasureOptions` its own
group). Their flags are generated from these models exactly as the prune command's are.

Light to import (no torch), like `prune.options`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from prune.options import OPTION_GROUPS, CollectOptions, DataOptions, ModelOptions, ScoreOptions, _Group

__all__ = ["COMMAND_OPTION_GROUPS", "AnalyzeOptions", "EvalCommandOptions", "MeasureOptions"]


class AnalyzeOptions(ScoreOptions, CollectOptions, DataOptions, ModelOptions):
    """What `prune-llm analyze` is told: the model, the data, the collection and how scores are read.

    Example:
        >>> AnalyzeOptions(model="minilm-l6").beta
        100.0
    """


class MeasureOptions(_Group):
    """What `prune-llm eval` measures, and on what (the knobs of `prune.evaluation.EvalSettings`)."""

    data: str = Field(
        default="default",
        description="Held-out data: 'default' (offline news text when fetched, else WikiText-2 from the Hub), "
        "a local .txt/.csv/.json/.jsonl file or folder, or a Hub dataset 'name[:config][:split]'.",
    )
    samples: int = Field(default=64, ge=1, description="Windows or texts evaluated.")
    stride: int | None = Field(
        default=None,
        ge=1,
        description="Perplexity window stride; below --seq-len only the new tokens of each window count "
        "(default: --seq-len, non-overlapping windows).",
    )
    speed: bool = Field(default=True, description="Measure latency, throughput and memory.")
    repeats: int = Field(default=5, ge=1, description="Timed passes, median reported.")
    generation: bool = Field(default=True, description="Measure greedy-generation agreement (causal LMs).")
    new_tokens: int = Field(default=32, ge=1, description="Greedy tokens per prompt.")
    prompts: int = Field(default=8, ge=1, description="Prompts for greedy agreement.")
    probe: bool = Field(
        default=False,
        description="Classification accuracy of encoders: their head, or a logistic probe on frozen embeddings "
        "(minutes on a CPU).",
    )
    probe_data: str = Field(
        default="default",
        description="Labelled data for the probe: 'default' (offline Pang & Lee sentences, else GLUE SST-2 from "
        "the Hub), a .csv/.json/.jsonl file with text and label columns, or a Hub 'name[:config][:split]'.",
    )
    probe_train: int = Field(default=2000, ge=1, description="Probe training sentences.")
    probe_test: int = Field(default=1000, ge=1, description="Probe test sentences.")
    lm_eval: str | None = Field(
        default=None,
        description="Also run lm-evaluation-harness tasks, comma-separated (needs `pip install prune-llm[lm-eval]`).",
    )
    lm_eval_limit: int | None = Field(default=None, ge=1, description="Examples per lm-eval task.")


class EvalCommandOptions(MeasureOptions, DataOptions, ModelOptions):
    """What `prune-llm eval` is told: the model and how it loads, the sequence settings, what to measure.

    Example:
        >>> EvalCommandOptions(model="minilm-l6").samples
        64
    """


# The run's groups and the eval command's own, for code that walks them (flag sections).
COMMAND_OPTION_GROUPS: tuple[type[BaseModel], ...] = (*OPTION_GROUPS, MeasureOptions)
