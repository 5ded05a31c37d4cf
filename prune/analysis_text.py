"""An `prune.analysis.Analysis` in words: the per-block table and the summary lines the CLI prints."""

from __future__ import annotations

from typing import Any

from prune.scores import SCORE_LABELS

__all__ = ["analysis_summary_lines", "analysis_table"]


def analysis_table(analysis: Any) -> str:
    """Per-block scores of an `Analysis` as a plain-text table; the most redundant block by each score is marked."""
    columns = ["bi", "cka_io", "angular"]
    top = {m: (analysis.most_redundant(m, 1) or [None])[0] for m in columns if analysis._has(m)}
    header = f"{'block':>5}  " + "  ".join(f"{SCORE_LABELS[m]:>14}" for m in columns) + "  most redundant by"
    lines = [header, "-" * len(header)]
    for row in analysis.rows:
        cells = []
        for metric in columns:
            value = getattr(row, metric)
            text = "-" if value is None else f"{value:.4f}"
            cells.append(f"{text + (' *' if top.get(metric) == row.block else '  '):>14}")
        marks = ", ".join(SCORE_LABELS[m] for m in columns if top.get(m) == row.block)
        line = f"{row.block:>5}  " + "  ".join(cells) + (f"  <- {marks}" if marks else "")
        lines.append(line.rstrip())
    note = "* most redundant: lowest BI, highest CKA(in,out), lowest angular distance"
    lines.append(note + ("" if analysis.allow_last else " (last block not considered)"))
    return "\n".join(lines)


def analysis_summary_lines(analysis: Any, *, top: int = 3) -> list[str]:
    """Human-readable lines for the CLI: MSRS, the most redundant blocks by each score, the best spans.

    Args:
        analysis: The analysis to summarise.
        top: How many blocks to list per score.

    Example:
        >>> import torch
        >>> from prune.analysis import Analysis
        >>> a = Analysis.from_scores({"bi": torch.tensor([0.3, 0.1, 0.2])}, 3)
        >>> analysis_summary_lines(a)[1]
        'most redundant by BI (lowest first): 1, 0'
    """
    lines = []
    pairs = analysis.num_blocks * (analysis.num_blocks - 1) // 2
    if analysis.msrs is None:
        lines.append("MSRS: not computed (collect the 'cka' metric)")
    else:
        lines.append(
            f"MSRS (beta={analysis.beta:g}, eps={analysis.eps:g}): {analysis.msrs:.3f} raw, "
            f"{analysis.msrs_normalised:.4f} normalised over {pairs} block pairs"
        )
    orders = {"bi": "lowest first", "cka_io": "highest first", "angular": "lowest first"}
    for metric, order in orders.items():
        if analysis._has(metric):
            blocks = ", ".join(str(b) for b in analysis.most_redundant(metric, top))
            lines.append(f"most redundant by {SCORE_LABELS[metric]} ({order}): {blocks}")
    shown = [s for s in analysis.best_spans if s.n <= max(1, analysis.num_blocks // 2)]
    if shown:
        lines.append("best span of n blocks to cut (smallest angular distance):")
        lines.extend(f"  {span.describe()}" for span in shown)
    return lines
