"""Figures of a redundancy analysis and of a before/after comparison, written as PNG files.

matplotlib is a dependency (drawing is optional: `--no-plots`). It is imported inside each function and
drives a `Figure` on the Agg canvas directly, never pyplot, so that plotting touches no global backend
state and works on headless machines and in threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prune.errors import PruneError

_MAX_TICKS = 16


def _figure(width: float, height: float) -> Any:
    """A new Figure on an Agg canvas, or a PruneError naming the extra to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PruneError(
            "plots need matplotlib, which is not installed; run `pip install matplotlib`"
        ) from None
    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def require_matplotlib() -> None:
    """Raise the PruneError of a missing matplotlib now, before any long work starts."""
    _figure(1, 1)


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def _matrix(values: Any, what: str) -> list[list[float]]:
    rows = values.tolist() if hasattr(values, "tolist") else [list(r) for r in values]
    if not rows or any(not isinstance(r, list) or len(r) != len(rows) for r in rows):
        raise PruneError(f"{what} must be a non-empty square matrix; pass the L x L 'cka' score")
    return [[float(v) for v in r] for r in rows]


def _vector(values: Any) -> list[float]:
    return [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _tick_positions(size: int) -> list[int]:
    # Every index up to _MAX_TICKS layers; beyond that a round stride keeps labels readable (80 -> 0,5,..).
    if size <= _MAX_TICKS:
        return list(range(size))
    stride = next(s for s in (2, 4, 5, 10, 20, 25, 50, 100, 200, 500) if size / s <= _MAX_TICKS)
    return list(range(0, size, stride))


def plot_cka_heatmap(
    cka: Any,
    path: str | Path,
    *,
    title: str | None = None,
    labels: Sequence[str] | None = None,
    axis_label: str = "layer",
) -> Path:
    """Draw a layer-by-layer CKA matrix as a heatmap (RedTest Fig. 1f style) and save it as PNG.

    Layer index runs along both axes with the origin at the lower left, colours span CKA 0..1.

    Args:
        cka: Square matrix (tensor, array or nested lists), e.g. `analysis.scores["cka"]`.
        path: Where to write the PNG.
        title: Figure title.
        labels: One tick label per row (e.g. ["emb", "0", "1", ...]); indices by default.
        axis_label: Text of both axis labels.

    Returns:
        The written path.

    Example:
        >>> plot_cka_heatmap(analysis.scores["cka"], "cka_heatmap.png", title="MiniLM-L6")  # doctest: +SKIP
    """
    matrix = _matrix(cka, "cka")
    size = len(matrix)
    if labels is not None and len(labels) != size:
        raise PruneError(f"got {len(labels)} labels for a {size} x {size} matrix; pass one label per layer")
    names = [str(i) for i in range(size)] if labels is None else [str(x) for x in labels]
    figure = _figure(6.4, 5.6)
    axes = figure.add_subplot()
    image = axes.imshow(
        [[v if math.isfinite(v) else math.nan for v in row] for row in matrix],
        origin="lower",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        aspect="equal",
    )
    ticks = _tick_positions(size)
    axes.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if max(map(len, names)) > 3 else 0)
    axes.set_yticks(ticks, [names[i] for i in ticks])
    axes.set_xlabel(axis_label)
    axes.set_ylabel(axis_label)
    if title:
        axes.set_title(title)
    bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    bar.set_label("linear CKA")
    return _save(figure, path)


def plot_block_scores(
    scores: Mapping[str, Any],
    path: str | Path,
    *,
    removed: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Plot per-block BI, 1 - CKA(input, output) and the angular distance across each block.

    Low values mean a redundant block on all three curves. Removed blocks, when given, are shaded red.

    Args:
        scores: Metric results as `Analysis.scores` holds them: any of "bi" [L], "cka_io" [L] and
            "angular" [L+1, L+1] (its first off-diagonal is the distance across each block).
        path: Where to write the PNG.
        removed: Blocks to mark as removed.
        title: Figure title.

    Returns:
        The written path.

    Example:
        >>> plot_block_scores(analysis.scores, "block_scores.png", removed=[3, 4])  # doctest: +SKIP
    """
    series: dict[str, list[float]] = {}
    if "bi" in scores:
        series["BI = 1 - cos(in, out)"] = _vector(scores["bi"])
    if "cka_io" in scores:
        series["1 - CKA(in, out)"] = [1.0 - v for v in _vector(scores["cka_io"])]
    if "angular" in scores:
        angular = _matrix(scores["angular"], "angular")
        series["angular distance(in, out)"] = [angular[i][i + 1] for i in range(len(angular) - 1)]
    if not series:
        raise PruneError(
            "no per-block score to plot; collect at least one of the metrics bi, cka_io, angular"
        )
    lengths = {len(v) for v in series.values()}
    if len(lengths) != 1:
        raise PruneError(
            f"per-block scores have different lengths {sorted(lengths)}; pass scores of one model"
        )
    num_blocks = lengths.pop()
    removed = sorted(set(removed or ()))
    if any(not 0 <= b < num_blocks for b in removed):
        raise PruneError(f"removed blocks {removed} outside 0..{num_blocks - 1}; pass indices of this model")

    figure = _figure(max(6.4, min(14.0, 0.2 * num_blocks + 4)), 4.0)
    axes = figure.add_subplot()
    blocks = list(range(num_blocks))
    for block in removed:
        axes.axvspan(block - 0.5, block + 0.5, color="tab:red", alpha=0.18, linewidth=0)
    for (label, values), marker in zip(series.items(), "osD", strict=False):
        axes.plot(blocks, values, marker=marker, markersize=4, linewidth=1.5, label=label)
        if removed:
            axes.plot(
                removed,
                [values[b] for b in removed],
                linestyle="none",
                marker="x",
                color="red",
                markersize=8,
                markeredgewidth=2,
            )
    if removed:
        axes.plot([], [], linestyle="none", marker="x", color="red", label=f"removed ({len(removed)})")
    ticks = _tick_positions(num_blocks)
    axes.set_xticks(ticks, [str(i) for i in ticks])
    axes.set_xlim(-0.5, num_blocks - 0.5)
    axes.set_xlabel("block")
    axes.set_ylabel("score (low = redundant)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    return _save(figure, path)


def plot_neurons_needed(
    counts: Sequence[Mapping[str, int]],
    size: int,
    path: str | Path,
    *,
    kept: int | None = None,
    title: str | None = None,
) -> Path:
    """Plot, per block, the FFN neurons that keep each fraction of the activation energy.

    Args:
        counts: One mapping per block: energy level (e.g. "0.99") -> neurons needed.
        size: d_ff (the y axis ends there).
        path: Where to write the PNG.
        kept: Neurons a squeeze kept in every block, drawn as a line.
        title: Figure title.

    Example:
        >>> plot_neurons_needed([{"0.9": 300, "0.99": 900}], 1536, "neurons.png")  # doctest: +SKIP
    """
    if not counts:
        raise PruneError("no per-block neuron counts to plot; pass the counts of at least one block")
    figure = _figure(max(6.4, min(14.0, 0.2 * len(counts) + 4)), 4.0)
    axes = figure.add_subplot()
    blocks = list(range(len(counts)))
    for level, marker in zip(counts[0], "osD^", strict=False):
        axes.plot(
            blocks, [c[level] for c in counts], marker=marker, markersize=4, label=f"{level} of the energy"
        )
    if kept is not None:
        axes.axhline(kept, color="tab:red", linestyle="--", label=f"kept ({kept})")
    axes.axhline(size, color="gray", linewidth=0.8)
    ticks = _tick_positions(len(counts))
    axes.set_xticks(ticks, [str(i) for i in ticks])
    axes.set_ylim(0, size * 1.05)
    axes.set_xlabel("block")
    axes.set_ylabel(f"FFN neurons needed (of {size})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    return _save(figure, path)


def plot_before_after(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    path: str | Path,
    *,
    title: str | None = None,
    labels: tuple[str, str] = ("before", "after"),
) -> Path:
    """Grouped bars of each metric before and after pruning, normalised per metric, raw values written on top.

    Each metric is divided by the larger of its two absolute values so that perplexities in the
    hundreds and accuracies below one share an axis. Metrics that are not finite numbers in both dicts
    are left out.

    Args:
        before: Metric name -> value of the original model.
        after: Metric name -> value of the pruned model.
        path: Where to write the PNG.
        title: Figure title.
        labels: Legend names of the two bars.

    Returns:
        The written path.

    Example:
        >>> plot_before_after({"perplexity": 18.2, "params_m": 134.5},
        ...                   {"perplexity": 21.2, "params_m": 130.0}, "before_after.png")  # doctest: +SKIP
    """
    names = [
        name
        for name in before
        if name in after and name not in _NOT_PLOTTED and _number(before[name]) and _number(after[name])
    ]
    if not names:
        raise PruneError("before and after share no numeric metric; pass the dicts of one comparison")
    pairs = [(float(before[n]), float(after[n])) for n in names]
    figure = _figure(max(5.0, 1.3 * len(names) + 2), 4.0)
    axes = figure.add_subplot()
    width = 0.38
    for side, (label, colour) in enumerate(zip(labels, ("tab:blue", "tab:orange"), strict=True)):
        xs = [i + (side - 0.5) * width for i in range(len(names))]
        raw = [pair[side] for pair in pairs]
        heights = [value / (max(abs(a), abs(b)) or 1.0) for value, (a, b) in zip(raw, pairs, strict=True)]
        bars = axes.bar(xs, heights, width, label=label, color=colour)
        axes.bar_label(bars, labels=[_short(v) for v in raw], fontsize="x-small", padding=2)
    ticks = [f"{name}\n({_direction(name)})" if _direction(name) else name for name in names]
    crowded = len(names) > 4
    axes.set_xticks(
        range(len(names)),
        ticks,
        rotation=35 if crowded else 0,
        ha="right" if crowded else "center",
        fontsize="small",
    )
    low = min(0.0, *(v / (max(abs(a), abs(b)) or 1.0) for a, b in pairs for v in (a, b)))
    axes.set_ylim(low * 1.15, 1.3)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_ylabel("value / max(|before|, |after|)")
    axes.legend(fontsize="small", ncol=2, loc="upper right")
    if title:
        axes.set_title(title)
    return _save(figure, path)


# Counts that are the same for both models by construction (the protocol's, not the model's).
_NOT_PLOTTED = frozenset({"num_tokens"})
_LOWER_IS_BETTER = (
    "perplexity",
    "mean_nll",
    "kl_divergence",
    "latency_ms",
    "peak_memory_mb",
    "size_mb",
    "parameters",
)
_HIGHER_IS_BETTER = ("token_agreement", "exact_match", "tokens_per_s", "accuracy", "cosine")


def _direction(name: str) -> str:
    """'lower is better', 'higher is better' or '' for a metric name, for the axis labels."""
    if any(name.startswith(key) for key in _LOWER_IS_BETTER):
        return "lower is better"
    if any(key in name for key in _HIGHER_IS_BETTER):
        return "higher is better"
    return ""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: float) -> str:
    # Parameter counts and the like read better as 134.5M than as 1.345e+08.
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e5, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"
