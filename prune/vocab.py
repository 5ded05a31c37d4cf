"""The words prune-llm is told, declared once: model kinds, dtypes, device maps, token modes, the
scores every run collects and the MSRS defaults.

Options, CLI choices, the collector, the analysis and the loaders all derive from these. Light to
import (no torch): the CLI builds ``--help`` from them.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args

__all__ = [
    "CKA_MINIBATCH",
    "CKA_WINDOW",
    "DEVICE_MAPS",
    "DTYPES",
    "MSRS_BETA",
    "MSRS_EPS",
    "SCORE_METRICS",
    "SEARCH_OBJECTIVES",
    "TOKEN_MODES",
    "DeviceMapName",
    "DtypeName",
    "ModelKind",
    "SearchObjective",
    "TokenMode",
]


class ModelKind(str, Enum):
    """What a loaded model is, which decides how it is fed and evaluated.

    A str enum: ``kind == "causal-lm"`` holds, and it is written to JSON as its value.

    Example:
        >>> ModelKind("encoder") is ModelKind.ENCODER, ModelKind.CAUSAL_LM == "causal-lm"
        (True, True)
        >>> f"{ModelKind.CAUSAL_LM}"
        'causal-lm'
    """

    CAUSAL_LM = "causal-lm"  # a causal LM head: perplexity, packed calibration text, generation
    ENCODER = "encoder"  # per-token hidden states: embeddings, probes, padded sentences
    OTHER = "other"  # anything else (seq2seq): pruned and saved, evaluated on size and speed only

    def __str__(self) -> str:
        return self.value


# Dtypes of the forward passes (statistics are always summed in float64); "auto": float32 on CPU,
# bfloat16 on CUDA.
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(DtypeName)

# accelerate's placements for a model spread over several devices (`device_map=`).
DeviceMapName = Literal["auto", "balanced", "sequential"]
DEVICE_MAPS: tuple[str, ...] = get_args(DeviceMapName)

# What the collector compares: every token, the mean of each sequence, or its last token.
TokenMode = Literal["tokens", "mean", "last"]
TOKEN_MODES: tuple[str, ...] = get_args(TokenMode)

# What the iterative search scores a candidate set on (`prune.plan.search_context.OBJECTIVES`).
SearchObjective = Literal["loss", "kl", "cosine"]
SEARCH_OBJECTIVES: tuple[str, ...] = get_args(SearchObjective)

# The scores every run and every analysis collects, whatever the strategy needs: one pass collects
# them all for a few percent over the forward pass (benchmarks/README.md), and they tell the story
# (MSRS comes from cka).
SCORE_METRICS = ("bi", "angular", "cka", "cka_io")

# MSRS parameters (RedTest, Lu et al. 2024): sharpness beta and CKA threshold eps.
MSRS_BETA = 100.0
MSRS_EPS = 0.8

# Tokens per CKA minibatch and per shuffle window; the collector's defaults too (chosen by measurement,
# benchmarks/README.md "CKA minibatches").
CKA_MINIBATCH = 256
CKA_WINDOW = 8192
