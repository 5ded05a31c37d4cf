"""`RunContext`: what a pruning run has learnt so far, passed from stage to stage.

Each stage of `prune.stages` reads the options of its own group and the products of the stages before
it from the context, and writes its own product back: `load` fills `loaded` and `anatomy`,
`calibrate` fills `calib_batches`, `collect` fills `stats` and `scores`, and so on. A stage can run
alone from Python on a context built by hand (with the products it reads filled in).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune.options import PruneOptions


@dataclass
class RunContext:
    """One pruning run: its options, the model it was given, and every stage's product.

    Attributes:
        options: the run's options (a `PruneOptions`; `AnalyzeOptions` for an analysis).
        model: a model the caller already holds (never modified), or None to load `options.model`.
        tokenizer: its tokenizer (with `model`).
        command: the command line that started the run (the CLI's; a Python call records its own).
        progress: show progress bars.
        checked: `prune.preflight.Checked` (output folder, resolved source, texts), from `check`.
        loaded: the `prune.loading.LoadedModel`, from `load`.
        anatomy: where its blocks are, from `load`.
        calib_batches: tokenized calibration batches, from `calibrate`.
        guard_batches: held-back calibration sequences the repair guard scores on (nothing is fitted on
            them; empty unless the run guards a repair), from `calibrate`.
        stats: the collector's `LayerStats` (None without a depth target), from `collect`.
        scores: the per-metric score tensors, from `collect`.
        plan: the `prune.plan.Plan`, from `plan`.
        pruned: the cut model, from `cut` (repaired and squeezed in place by the stages after it).
        repair: the `prune.repair.RepairReport`, from `repair`.
        squeeze: the width report, from `squeeze` (None when no FFN width was asked for).
        comparison: the before/after `Comparison`, from `evaluate` (None with ``eval: none``).
        eval_info: what the evaluation used (data, samples), from `evaluate`.
        budget: the budget search's `prune.budget.search.SearchResult`, from `budget` (with ``budget`` set).
        report: the JSON-able report, from `report`.
        out_dir, gguf, hub_url: where `save`, `export_gguf` and `push` put the result.
    """

    options: PruneOptions
    model: Any = None
    tokenizer: Any = None
    command: str | None = None
    progress: bool = True
    checked: Any = None
    loaded: Any = None
    anatomy: Any = None
    calib_batches: list | None = None
    guard_batches: list | None = None
    stats: Any = None
    scores: dict | None = None
    plan: Any = None
    pruned: Any = None
    repair: Any = None
    squeeze: Any = None
    comparison: Any = None
    eval_info: dict | None = None
    budget: Any = None
    report: dict | None = None
    out_dir: Path | None = None
    gguf: Any = None
    hub_url: str | None = None

    @property
    def model_given(self) -> bool:
        """Whether the caller passed the model in (then it is copied, never modified, and not loaded)."""
        return self.model is not None

    @property
    def original(self) -> Any:
        """The unpruned model."""
        return self.loaded.model
