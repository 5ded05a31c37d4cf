"""What the error-correcting refit did (`prune.repair.refit`), for the pruning report and the model card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class BlockRefit:
    """One refitted down projection.

    Attributes:
        block: index of the block in the modified model.
        target: index of the original block whose stream it tracks.
        features: inputs of its down projection (plus 1 with a bias).
        residual_before, residual_after: ``||S - S*||^2 / ||S*||^2`` on the calibration tokens, with the
            weights as they were and after the refit (never larger).
        ridge: relative ridge used.
    """

    block: int
    target: int
    features: int
    residual_before: float
    residual_after: float
    ridge: float


@dataclass
class RefitReport:
    """What `refit_model` did; `to_dict` for the pruning report and model card."""

    blocks: list[BlockRefit] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "blocks": [asdict(b) for b in self.blocks],
        }


def refit_lines(refit: dict[str, Any] | None) -> list[str]:
    """Markdown lines for a `RefitReport` dict (the pruning report and the model card).

    Example:
        >>> refit_lines({"tokens": 8, "seconds": 1.0, "skipped": None, "blocks": [
        ...     {"block": 3, "target": 5, "features": 64, "residual_before": 0.2, "residual_after": 0.1,
        ...      "ridge": 1.0}]})[0]
        'Refit (error-correcting, training-free): 1 down projection(s) refitted so that the stream tracks the original model, on 8 calibration tokens in 1.0 s. Relative stream error ||S - S*||^2 / ||S*||^2 per block:'
    """
    if not refit:
        return []
    if refit.get("skipped"):
        return [f"Refit: not applied ({refit['skipped']})."]
    blocks = refit.get("blocks") or []
    lines = [
        f"Refit (error-correcting, training-free): {len(blocks)} down projection(s) refitted so that the "
        f"stream tracks the original model, on {refit.get('tokens')} calibration tokens in "
        f"{refit.get('seconds')} s. Relative stream error ||S - S*||^2 / ||S*||^2 per block:",
        "",
        "| block | tracks original block | features | error before | error after | ridge |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {b['block']} | {b['target']} | {b['features']} | {b['residual_before']:.4g} | "
        f"{b['residual_after']:.4g} | {b['ridge']:g} |"
        for b in blocks
    ]
    return lines


__all__ = ["BlockRefit", "RefitReport", "refit_lines"]
