"""Errors a user can act on. Each message names the problem and the fix."""

from __future__ import annotations


class PruneError(Exception):
    """Base class of every error prune-llm raises for bad input.

    The CLI prints these as one line (``error: <message>``) and exits with status 2,
    with no traceback; anything else is a bug and keeps its traceback.
    """


class ModelNotFoundError(PruneError):
    """The model id, alias, folder or file cannot be resolved or loaded."""


class AnatomyError(PruneError):
    """The block list of a model cannot be found or is inconsistent."""


class TargetError(PruneError):
    """A pruning target is malformed or impossible for this model."""


class DataError(PruneError):
    """Calibration or evaluation data is missing, empty or malformed."""


class OutputExistsError(PruneError):
    """The output folder exists and overwriting was not asked for."""


class RecipeError(PruneError):
    """A recipe file is invalid."""


class HubError(PruneError):
    """Pushing to the Hugging Face Hub failed (no token, no network, no permission)."""


class FoldError(PruneError):
    """A fitted map cannot be folded into the weights (shape, missing bias, unsupported module)."""


class BudgetError(PruneError):
    """A budget is malformed, or no model in the search space meets it."""


class NumericalError(PruneError):
    """Weights or activations hold NaN or inf, so every score and metric would be meaningless."""


class OutputError(PruneError):
    """The output cannot be written (read-only disk, no permission, a mount point, no space)."""


class AnalysisError(PruneError):
    """Scores or analysis settings are malformed."""


class AssetError(PruneError):
    """An offline asset cannot be downloaded (no network, no PyPI, a package gone)."""


class CollectError(PruneError):
    """Statistics cannot be collected or resumed with the given options."""


class MissingExtraError(PruneError):
    """An optional dependency needed for the requested feature is not installed."""


class MetricNotFoundError(PruneError):
    """A metric is neither shipped with prune-llm nor reachable on the Hub."""


class GGUFExportError(PruneError):
    """A model folder cannot be exported to GGUF (converter missing, family unsupported, bad outtype)."""


class PlanError(PruneError):
    """A plan cannot be made: unknown strategy or metric, missing scores, or a missing search context."""


class RepairError(PruneError):
    """A cut cannot be repaired as asked (unknown method, unknown residual placement, bad option)."""
