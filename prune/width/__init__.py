"""Width pruning of the FFNs (squeezing correlated neurons, Ozen & Orailoglu 2020) and its baselines.

Example:
    >>> from prune.width import squeeze_model
    >>> result = squeeze_model(model, batches, keep=0.75, method="squeeze")  # doctest: +SKIP
"""

from prune.width.methods import DEFAULT_METHOD, FFN_METHODS, FfnMethod
from prune.width.squeeze import KeepBudget, SqueezeReport, SqueezeResult, parse_ffn_keep, squeeze_model

__all__ = [
    "DEFAULT_METHOD",
    "FFN_METHODS",
    "FfnMethod",
    "KeepBudget",
    "SqueezeReport",
    "SqueezeResult",
    "parse_ffn_keep",
    "squeeze_model",
]
