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
