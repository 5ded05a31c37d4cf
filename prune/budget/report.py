"""The budget search in the report: the choice and why, the explored frontier as a table and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def budget_section(budget: dict[str, Any], *, heading: str = "##") -> list[str]:
    """Markdown lines for ``report["budget"]`` (`SearchResult.to_dict`)."""
    chosen = budget["chosen"]
    lines = [
        f"{heading} Budget search",
        "",
        f"- Budget: `{budget.get('budget')}`",
        f"- Chosen: {chosen['label']} (blocks cut {chosen['drop'] or 'none'}, FFN {chosen['ffn_keep']} "
        f"neurons per block), {chosen['params']:,} parameters",
        f"- Why: {budget.get('reason')}",
        f"- Held-back calibration perplexity: original {budget['reference_perplexity']:.4g}, "
        f"chosen {chosen['perplexity']:.4g} ({chosen['perplexity'] / budget['reference_perplexity']:.3f}x)",
    ]
    for name in ("width_only", "depth_only"):
        end = budget.get(name)
        if end:
            import math

            lines.append(
                f"- {name.replace('_', ' ').capitalize()} at the same budget: {end['params']:,} parameters, "
                f"held-back perplexity {math.exp(end['loss']):.4g}"
            )
    if budget.get("search_s") is not None:
        lines.append(
            f"- Search: {budget.get('builds')} candidates built in {budget['search_s']:.0f} s; fitted on "
            f"{budget.get('fit_batches')} calibration batches, scored on {budget.get('held_back_batches')} "
            "held back"
        )
    lines += ["", "| configuration | params | held-back perplexity | latency (s) |", "|---|---|---|---|"]
    for row in sorted(budget.get("explored", []), key=lambda r: r["params"]):
        mark = " **(chosen)**" if row == chosen else ""
        latency = "" if row.get("latency_s") is None else f"{row['latency_s']:.4f}"
        lines.append(f"| {row['label']}{mark} | {row['params']:,} | {row['perplexity']:.4g} | {latency} |")
    return lines


def plot_budget_frontier(budget: dict[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Held-back perplexity against parameters of every explored configuration, the choice marked."""
    from prune.plots import _figure, _save

    figure = _figure(6.4, 4.0)
    axes = figure.add_subplot()
    rows = budget.get("explored", [])
    for depth in sorted({len(r["drop"]) for r in rows}):
        points = sorted((r["params"], r["perplexity"]) for r in rows if len(r["drop"]) == depth)
        axes.plot([p / 1e6 for p, _ in points], [q for _, q in points], "o", label=f"{depth} block(s) cut")
    chosen = budget["chosen"]
    axes.plot(
        chosen["params"] / 1e6, chosen["perplexity"], "*", markersize=16, color="tab:red", label="chosen"
    )
    axes.axhline(budget["reference_perplexity"], color="gray", linewidth=0.8, label="original")
    axes.set_xlabel("parameters (M)")
    axes.set_ylabel("held-back calibration perplexity")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title(title or f"budget {budget.get('budget')}: explored configurations")
    return _save(figure, path)


__all__ = ["budget_section", "plot_budget_frontier"]
