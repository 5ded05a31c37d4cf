"""What the error-correcting refit did (`prune.repair.refit`), for the pruning report and the model card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class BlockRefit:
    """One refitted projection.

    Attributes:
        block: index of the block in the modified model.
        target: index of the original block whose stream it tracks (its output for ``down``, its
            mid-state, input + attention output, for ``attention``).
        features: inputs of the projection (plus 1 with a bias).
        residual_before, residual_after: ``||S - S*||^2 / ||S*||^2`` on the calibration tokens, with the
            weights as they were and after the refit (never larger).
        ridge: relative ridge used.
        projection: ``down`` (the MLP's down projection) or ``attention`` (the attention output
            projection).
    """

    block: int
    target: int
    features: int
    residual_before: float
    residual_after: float
    ridge: float
    projection: str = "down"


@dataclass
class RefitReport:
    """What `refit_model` did; `to_dict` for the pruning report and model card."""

    blocks: list[BlockRefit] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    attention_skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "attention_skipped": self.attention_skipped,
            "blocks": [asdict(b) for b in self.blocks],
        }


def refit_lines(refit: dict[str, Any] | None) -> list[str]:
    """Markdown lines for a `RefitReport` dict (the pruning report and the model card).

    Example:
        >>> refit_lines({"tokens": 8, "seconds": 1.0, "skipped": None, "blocks": [
        ...     {"block": 3, "target": 5, "features": 64, "residual_before": 0.2, "residual_after": 0.1,
        ...      "ridge": 1.0}]})[0]
        'Refit (error-correcting, training-free): 1 projection(s) refitted (1 down, 0 attention output) so that the stream tracks the original model, on 8 calibration tokens in 1.0 s. Relative stream error ||S - S*||^2 / ||S*||^2 per block:'
    """
    if not refit:
        return []
    if refit.get("skipped"):
        return [f"Refit: not applied ({refit['skipped']})."]
    blocks = refit.get("blocks") or []
    attention = sum(b.get("projection") == "attention" for b in blocks)
    lines = [
        f"Refit (error-correcting, training-free): {len(blocks)} projection(s) refitted "
        f"({len(blocks) - attention} down, {attention} attention output) so that the stream tracks the "
        f"original model, on {refit.get('tokens')} calibration tokens in {refit.get('seconds')} s. "
        "Relative stream error ||S - S*||^2 / ||S*||^2 per block:",
        "",
        "| block | tracks original block | projection | features | error before | error after | ridge |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {b['block']} | {b['target']} | {b.get('projection', 'down')} | {b['features']} | "
        f"{b['residual_before']:.4g} | {b['residual_after']:.4g} | {b['ridge']:g} |"
        for b in blocks
    ]
    if refit.get("attention_skipped"):
        lines += ["", f"Attention output projections not refitted: {refit['attention_skipped']}."]
    return lines


__all__ = ["BlockRefit", "RefitReport", "refit_lines"]
