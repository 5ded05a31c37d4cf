"""Redundancy analysis of a model's blocks, as RedTest defines it.

`analyze` runs the collector over calibration batches and turns its statistics into an `Analysis`: the
per-block scores (block influence, CKA between a block's input and output, angular distance across the
block), the L x L CKA matrix of the block outputs and its MSRS (Model Structural Redundancy Score, Lu et
al. 2024), and for every span length n the start of the n contiguous blocks whose removal changes the
hidden state least (Gromov et al. 2024). `Analysis.from_scores` builds the same from score tensors, so a
saved or hand-made set of scores can be analysed without a model.

Hidden states are numbered as in the collector: h_0 is the input of block 0 (the embedding output) and
h_{l+1} the output of block l, so "angular" and "cka" are (L+1) x (L+1) and the block outputs are the
trailing L x L part.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from prune.analysis_text import analysis_summary_lines, analysis_table  # noqa: F401 (public here too)
from prune.errors import AnalysisError
from prune.jsonable import to_jsonable
from prune.scores import (
    REDUNDANT_WHEN_LOW,
    SCORE_LABELS,
    expected_shape,
    off_diagonal,
    span_distances,
    summarise_msrs,
)
from prune.vocab import CKA_MINIBATCH, CKA_WINDOW, MSRS_BETA, MSRS_EPS, SCORE_METRICS, TOKEN_MODES

DEFAULT_METRICS = SCORE_METRICS

# What each score means (direction, labels, shapes, spans, MSRS) is read from prune.scores.
_REDUNDANT_WHEN_LOW = REDUNDANT_WHEN_LOW
_SCORE_NAMES = SCORE_LABELS


@dataclass(frozen=True)
class SpanChoice:
    """The best span of `n` contiguous blocks to cut: blocks start .. start + n - 1."""

    n: int
    start: int
    distance: float

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.start + self.n))

    def describe(self) -> str:
        where = f"block {self.start}" if self.n == 1 else f"blocks {self.start}-{self.start + self.n - 1}"
        return f"n={self.n}: {where} (angular distance {self.distance:.4f})"


@dataclass(frozen=True)
class BlockRow:
    """One block's scores; None where the metric was not collected."""

    block: int
    bi: float | None
    cka_io: float | None
    angular: float | None  # angular distance between the block's input and output, angular[l, l + 1]


@dataclass
class Analysis:
    """What `analyze` found out about a model's blocks.

    Attributes:
        num_blocks: L, the number of blocks.
        num_tokens: Real (non-padding) calibration tokens the model saw.
        scores: The collector's metric results by name (float64 CPU tensors, shapes as in the module doc).
        msrs: MSRS of the block-output CKA matrix (None when "cka" was not collected).
        msrs_normalised: MSRS divided by the number of block pairs L(L-1)/2.
        beta, eps: The MSRS parameters used.
        allow_last: Whether spans and rankings may include the last block.
        best_spans: For each span length n, the start with the smallest angular distance (needs "angular").
        rows: Per-block scores, one row per block.
        meta: Free-form provenance (model, data, settings) carried into `to_dict`.
    """

    num_blocks: int
    num_tokens: int
    scores: dict[str, torch.Tensor]
    msrs: float | None
    msrs_normalised: float | None
    beta: float
    eps: float
    allow_last: bool
    best_spans: list[SpanChoice]
    rows: list[BlockRow]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_scores(
        cls,
        scores: Mapping[str, torch.Tensor],
        num_blocks: int,
        *,
        num_tokens: int = 0,
        beta: float = MSRS_BETA,
        eps: float = MSRS_EPS,
        allow_last: bool = False,
        meta: Mapping[str, Any] | None = None,
    ) -> Analysis:
        """Analyse a set of metric results (as `LayerStats.scores()` returns them).

        Args:
            scores: Metric results by name; any subset of bi [L], angular [L+1, L+1], cka [L+1, L+1],
                cka_io [L]. Other names are kept but not interpreted.
            num_blocks: L.
            num_tokens: How many tokens the scores were averaged over (for the record).
            beta: MSRS sharpness (RedTest uses 100).
            eps: MSRS similarity threshold (RedTest uses 0.8).
            allow_last: Let the best spans and rankings include the last block.
            meta: Provenance to keep with the analysis.

        Example:
            >>> import torch
            >>> a = Analysis.from_scores({"bi": torch.tensor([0.3, 0.1, 0.2])}, 3)
            >>> a.most_redundant("bi")
            [1, 0]
        """
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise AnalysisError(f"num_blocks must be a positive integer, got {num_blocks!r}")
        _check_msrs_params(beta, eps)
        tensors = {name: _as_float64(name, value) for name, value in scores.items()}
        _check_shapes(tensors, num_blocks)
        if "cka_io" not in tensors and "cka" in tensors:
            # CKA(input, output) of block l is the first off-diagonal of the full matrix.
            tensors["cka_io"] = off_diagonal(tensors["cka"])

        summary = summarise_msrs(tensors, beta=beta, eps=eps)  # None without cka or with one block
        raw = normalised = None
        if summary is not None:
            raw, normalised = summary["raw"], summary["normalised"]

        angular_next = off_diagonal(tensors["angular"]) if "angular" in tensors else None
        rows = [
            BlockRow(
                block=block,
                bi=_item(tensors.get("bi"), block),
                cka_io=_item(tensors.get("cka_io"), block),
                angular=_item(angular_next, block),
            )
            for block in range(num_blocks)
        ]
        spans = _best_spans(tensors["angular"], num_blocks, allow_last) if "angular" in tensors else []
        return cls(
            num_blocks=num_blocks,
            num_tokens=int(num_tokens),
            scores=tensors,
            msrs=raw,
            msrs_normalised=normalised,
            beta=float(beta),
            eps=float(eps),
            allow_last=allow_last,
            best_spans=spans,
            rows=rows,
            meta=dict(meta or {}),
        )

    @classmethod
    def from_stats(
        cls,
        stats: Any,
        *,
        beta: float = MSRS_BETA,
        eps: float = MSRS_EPS,
        allow_last: bool = False,
        meta: Mapping[str, Any] | None = None,
    ) -> Analysis:
        """Analyse the statistics `prune.collect.collect_stats` returned.

        Args:
            stats: A `LayerStats`.
            beta, eps, allow_last, meta: As in `from_scores`.

        Example:
            >>> analysis = Analysis.from_stats(collect_stats(model, batches, metrics=DEFAULT_METRICS))  # doctest: +SKIP
        """
        return cls.from_scores(
            stats.scores(),
            stats.num_blocks,
            num_tokens=stats.num_tokens,
            beta=beta,
            eps=eps,
            allow_last=allow_last,
            meta=meta,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Analysis:
        """Rebuild an analysis from `to_dict()` output (e.g. a saved analysis.json).

        Example:
            >>> import json
            >>> again = Analysis.from_dict(json.load(open("analysis/minilm-l6/analysis.json")))  # doctest: +SKIP
        """
        try:
            scores = {
                name: torch.tensor(_nan_for_none(value), dtype=torch.float64)
                for name, value in data["scores"].items()
            }
            return cls.from_scores(
                scores,
                int(data["num_blocks"]),
                num_tokens=int(data.get("num_tokens", 0)),
                beta=float(data["msrs"]["beta"]),
                eps=float(data["msrs"]["eps"]),
                allow_last=bool(data.get("allow_last", False)),
                meta=data.get("meta"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AnalysisError(
                f"not an analysis file ({type(exc).__name__}: {exc}); write one with `prune-llm analyze`"
            ) from None

    # ----------------------------------------------------------------------------------------------
    def candidates(self) -> list[int]:
        """Blocks the rankings consider: all but the last one unless `allow_last`."""
        stop = self.num_blocks if self.allow_last or self.num_blocks == 1 else self.num_blocks - 1
        return list(range(stop))

    def most_redundant(self, metric: str, k: int | None = None) -> list[int]:
        """Blocks ranked from most to least redundant by a per-block score.

        Args:
            metric: "bi" (low is redundant), "cka_io" (high is redundant) or "angular" (the distance
                across the block, low is redundant).
            k: Keep only the first k.

        Example:
            >>> import torch
            >>> Analysis.from_scores({"cka_io": torch.tensor([0.5, 0.9, 0.7, 0.99])}, 4).most_redundant("cka_io")
            [1, 2, 0]
        """
        if metric not in _REDUNDANT_WHEN_LOW:
            raise AnalysisError(f"unknown per-block score {metric!r}; choose one of: bi, cka_io, angular")
        values = {row.block: getattr(row, metric) for row in self.rows}
        blocks = [b for b in self.candidates() if values[b] is not None and math.isfinite(values[b])]
        sign = 1.0 if _REDUNDANT_WHEN_LOW[metric] else -1.0
        ranked = sorted(blocks, key=lambda b: (sign * values[b], b))
        return ranked if k is None else ranked[:k]

    def best_span(self, n: int) -> SpanChoice:
        """The best span of n blocks to cut (smallest angular distance between its input and output)."""
        for span in self.best_spans:
            if span.n == n:
                return span
        limit = max((s.n for s in self.best_spans), default=0)
        raise AnalysisError(f"no span of {n} blocks was analysed; choose n between 1 and {limit}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: settings, MSRS, best spans, per-block rows and the full score matrices.

        Non-finite numbers become None so that the output is strict JSON.
        """
        return {
            "num_blocks": self.num_blocks,
            "num_tokens": self.num_tokens,
            "allow_last": self.allow_last,
            "msrs": {
                "raw": to_jsonable(self.msrs),
                "normalised": to_jsonable(self.msrs_normalised),
                "beta": self.beta,
                "eps": self.eps,
                "pairs": self.num_blocks * (self.num_blocks - 1) // 2,
            },
            "most_redundant": {
                metric: self.most_redundant(metric) for metric in _REDUNDANT_WHEN_LOW if self._has(metric)
            },
            "best_spans": [
                {"n": s.n, "start": s.start, "blocks": list(s.blocks), "distance": to_jsonable(s.distance)}
                for s in self.best_spans
            ],
            "blocks": [to_jsonable(asdict(r)) for r in self.rows],
            "scores": to_jsonable(self.scores),
            "meta": self.meta,
        }

    def to_table(self) -> str:
        """Per-block scores as a plain-text table; the most redundant block by each score is marked.

        Example:
            >>> import torch
            >>> print(Analysis.from_scores({"bi": torch.tensor([0.3, 0.1, 0.2])}, 3).to_table())  # doctest: +SKIP
        """
        return analysis_table(self)

    def _has(self, metric: str) -> bool:
        return any(getattr(row, metric) is not None for row in self.rows)


def analyze(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    anatomy: Any = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    beta: float = MSRS_BETA,
    eps: float = MSRS_EPS,
    token_mode: str = "tokens",
    skip_tokens: int = 0,
    cka_minibatch: int = CKA_MINIBATCH,
    cka_window: int = CKA_WINDOW,
    seed: int = 0,
    accelerator: Any = None,
    max_tokens: int | None = None,
    state_path: str | None = None,
    progress: bool = True,
    allow_last: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> Analysis:
    """Collect block statistics over calibration batches and analyse the model's redundancy.

    Args:
        model: Any model whose blocks `prune.anatomy.get_anatomy` finds (or that `anatomy` describes).
        batches: Dicts with input_ids and attention_mask, e.g. from `prune.data.make_batches`.
        anatomy: Where the blocks are; found automatically when None.
        metrics: Which metrics to collect (all four by default; MSRS needs "cka", spans need "angular").
        beta: MSRS sharpness.
        eps: MSRS similarity threshold.
        token_mode: Compare every token ("tokens"), the mean over each sequence ("mean") or its last token.
        skip_tokens: Leave the first N tokens of every sequence out (1 leaves out the attention-sink token
            whose massive activations inflate CKA and MSRS on many LLMs).
        cka_minibatch: Tokens per CKA minibatch ("tokens" mode), drawn across the sequences of a window.
        cka_window: Tokens shuffled together before they are cut into minibatches.
        seed: Seed of that shuffle.
        accelerator: An `accelerate.Accelerator` to reduce statistics over processes.
        max_tokens: Stop after this many tokens.
        state_path: Where the collector checkpoints its running sums (to resume).
        progress: Show a progress bar.
        allow_last: Let best spans and rankings include the last block.
        meta: Provenance to keep with the analysis.

    Example:
        >>> from prune.loading import load_model
        >>> from prune.data import load_texts, make_batches
        >>> loaded = load_model("minilm-l6")  # doctest: +SKIP
        >>> batches = make_batches(loaded.tokenizer, load_texts("default", purpose="calib"), seq_len=128,
        ...                        batch_size=8, num_samples=64, packed=False)  # doctest: +SKIP
        >>> print(analyze(loaded.model, batches).to_table())  # doctest: +SKIP
    """
    if token_mode not in TOKEN_MODES:
        raise AnalysisError(f"unknown token mode {token_mode!r}; choose one of: {', '.join(TOKEN_MODES)}")
    if not metrics:
        raise AnalysisError(f"no metrics to collect; pass some of: {', '.join(DEFAULT_METRICS)}")
    _check_msrs_params(beta, eps)
    from prune.collect import collect_stats

    stats = collect_stats(
        model,
        batches,
        anatomy=anatomy,
        metrics=tuple(metrics),
        accelerator=accelerator,
        max_tokens=max_tokens,
        token_mode=token_mode,
        skip_tokens=skip_tokens,
        cka_minibatch=cka_minibatch,
        cka_window=cka_window,
        seed=seed,
        state_path=state_path,
        progress=progress,
    )
    info = {
        "token_mode": token_mode,
        "skip_tokens": skip_tokens,
        "cka_minibatch": cka_minibatch,
        "cka_window": cka_window,
        "metrics": list(metrics),
        **dict(meta or {}),
    }
    info.setdefault("num_sequences", getattr(stats, "num_sequences", None))
    return Analysis.from_stats(stats, beta=beta, eps=eps, allow_last=allow_last, meta=info)


# --------------------------------------------------------------------------------------------------
def _best_spans(angular: torch.Tensor, num_blocks: int, allow_last: bool) -> list[SpanChoice]:
    spans = []
    # Cutting the last block is excluded by default: the span may end at block L-2 at the latest.
    last_end = num_blocks if allow_last else num_blocks - 1
    for n in range(1, last_end + 1):
        distances = span_distances(angular, num_blocks, n, allow_last)
        finite = {start: d for start, d in distances.items() if math.isfinite(d)}
        if not finite:
            continue
        best = min(finite, key=lambda start: (finite[start], start))
        spans.append(SpanChoice(n=n, start=best, distance=finite[best]))
    return spans


def _check_msrs_params(beta: float, eps: float) -> None:
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
        raise AnalysisError(f"beta must be a positive number, got {beta!r}; RedTest uses --beta 100")
    if not (isinstance(eps, int | float) and -1.0 <= eps <= 1.0):
        raise AnalysisError(f"eps must be a CKA value between -1 and 1, got {eps!r}; RedTest uses --eps 0.8")


def _check_shapes(tensors: Mapping[str, torch.Tensor], num_blocks: int) -> None:
    for name, value in tensors.items():
        shape = expected_shape(name, num_blocks)
        if shape is not None and tuple(value.shape) != shape:
            raise AnalysisError(
                f"score {name!r} has shape {tuple(value.shape)} but a model with {num_blocks} blocks "
                f"needs {shape}; pass scores from the same model"
            )


def _as_float64(name: str, value: Any) -> torch.Tensor:
    try:
        return torch.as_tensor(value).detach().to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AnalysisError(f"score {name!r} is not numeric ({exc}); pass tensors or nested lists") from None


def _item(values: torch.Tensor | None, index: int) -> float | None:
    return None if values is None else float(values[index])


def _nan_for_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_for_none(v) for v in value]
    return math.nan if value is None else value
