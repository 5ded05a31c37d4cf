"""The least-squares core of the error-correcting refit (`prune.repair.refit`): sums, ridge, solve, fold.

Each refitted projection P (a down projection, or an attention output projection) has features Z (its
input, with a constant 1 where it has a bias) and a target D = S* - S + P(Z): what its output should be
so that the stream sum S it joins equals the original's S*. The float64 sums ``Z^T Z``, ``Z^T D``,
``||D||^2`` and ``||S*||^2`` are accumulated in two halves (even and odd calibration batches), which
choose the ridge by held-out error; the solution is pulled towards the current weights, so the error on
the calibration tokens never rises.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from prune.fold import _set_bias, _set_weight, weight_matrix

logger = logging.getLogger(__name__)

# Relative ridges (to the mean diagonal of the feature Gram), towards the current weights.
REFIT_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class RefitSums:
    """The sums of one projection's refit, in two halves (even and odd batches)."""

    def __init__(self) -> None:
        self.halves: list[dict[str, Tensor]] = [{}, {}]

    def add(self, index: int, z: Tensor, d: Tensor, t: Tensor) -> None:
        """Add batch `index`'s rows: features `z` [n, f], target `d` [n, d] and the stream target `t`."""
        part = {
            "gram": z.T @ z,
            "cross": z.T @ d,
            "dd": (d * d).sum().reshape(()),
            "tt": (t * t).sum().reshape(()),
        }
        half = self.halves[index % 2]
        for name, value in part.items():
            value = value.double().cpu()
            half[name] = value if name not in half else half[name] + value

    def filled(self) -> list[dict[str, Tensor]]:
        return [h for h in self.halves if h]

    def totals(self) -> dict[str, Tensor]:
        halves = self.filled()
        return {name: sum(h[name] for h in halves) for name in halves[0]}  # type: ignore[misc]


def current_solution(module: nn.Module) -> tuple[Tensor, bool]:
    """The projection's weights as a float64 [f (+1 with a bias), d] least-squares variable."""
    bias = getattr(module, "bias", None)
    has_bias = isinstance(bias, Tensor)
    current = weight_matrix(module).detach().to(torch.float64).cpu().T
    if has_bias:
        current = torch.cat([current, bias.detach().to(torch.float64).cpu()[None]])
    return current, has_bias


def fit_and_fold(
    module: nn.Module, sums: RefitSums, ridge: float | None, columns: Tensor | None = None
) -> tuple[float, float, float, int]:
    """Solve the refit of `module` from `sums` and fold it into its weight (and bias).

    Args:
        module: the projection (``nn.Linear`` or GPT-2's ``Conv1D``).
        sums: its accumulated sums (targets already weighted by `columns`).
        ridge: relative ridge; None chooses it from `REFIT_RIDGES` on the held-out halves.
        columns: per-output-channel weights the targets were multiplied by (post-norm gains), or None.

    Returns:
        The relative error before and after, the ridge used and the number of features.
    """
    current, has_bias = current_solution(module)
    penalised = current.shape[0] - int(has_bias)
    if columns is None:
        columns = torch.ones(current.shape[1], dtype=torch.float64)
    scaled = current * columns  # the weights in the weighted channels' units
    totals = sums.totals()
    chosen = ridge if ridge is not None else choose_ridge(sums.filled(), scaled, penalised)
    solution = solve(totals["gram"], totals["cross"], scaled, chosen, penalised)
    before, after = error(scaled, totals), error(solution, totals)
    solution = solution / columns
    if not after <= before:  # cannot happen for an exact solve; guards a failed one
        logger.warning("a refit would raise its calibration error; %s left as it was", type(module).__name__)
        solution, after = current, before
    _set_weight(module, solution[:penalised].T)
    if has_bias:
        _set_bias(module, solution[penalised])
    return before, after, chosen, int(solution.shape[0])


def solve(gram: Tensor, rhs: Tensor, current: Tensor, ridge: float, penalised: int) -> Tensor:
    """``argmin x^T G x - 2 x^T C + lambda ||x - x0||^2`` over the first `penalised` rows (float64)."""
    scale = float(torch.diagonal(gram)[:penalised].mean().clamp_min(1e-30))
    diagonal = torch.zeros(gram.shape[0], dtype=torch.float64)
    diagonal[:penalised] = ridge * scale
    system = gram + torch.diag(diagonal)
    target = rhs + diagonal[:, None] * current
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(target, factor)
    return torch.linalg.lstsq(system, target).solution


def choose_ridge(halves: list[dict[str, Tensor]], current: Tensor, penalised: int) -> float:
    """The ridge of `REFIT_RIDGES` whose fit on one half of the batches has the lowest error on the other."""
    if len(halves) < 2:
        return 1e-2
    a, b = halves

    def heldout(r: float) -> float:
        return error(solve(a["gram"], a["cross"], current, r, penalised), b) + error(
            solve(b["gram"], b["cross"], current, r, penalised), a
        )

    return min(REFIT_RIDGES, key=heldout)


def error(x: Tensor, sums: dict[str, Tensor]) -> float:
    """``||Z x - D||^2 / ||S*||^2`` from the sums (D = S* - S + P(Z))."""
    g, c = sums["gram"], sums["cross"]
    return float(((x * (g @ x)).sum() - 2 * (x * c).sum() + sums["dd"]) / sums["tt"].clamp_min(1e-300))


__all__ = ["REFIT_RIDGES", "RefitSums", "choose_ridge", "error", "fit_and_fold", "solve"]
