"""Express the removed neurons through the kept ones and fold that into the down projection.

With kept neurons K and removed ones R, least squares on the calibration moments gives
``a_R ~ C^T a_K + c`` (``C = (H_KK + ridge)^-1 H_KR``, and with a down bias the constant
``c = mean_R - C^T mean_K``; without one there is nowhere to fold a constant, so the fit has no
intercept). The down projection then reads ``a_K`` through the interpolation matrix ``A = [I_K | C]``
(`prune.fold.fold_input_map`), and the input projections keep only the rows K (`select_outputs`). Since
the least-squares residual is the smallest in the positive semidefinite order, this is also the best
fold for the FFN *output* ``W a``, whatever W.

The output error of any (A, offset) is computed from the same moments: with ``e = a - A^T a_K - offset``
it is ``tr(W E[e e^T] W^T)``, reported relative to the output energy ``tr(W E[a a^T] W^T)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from prune.fold import fold_input_map, select_outputs
from prune.width.selection import BlockProblem, damped

Compensation = Literal["ls", "bias", "none"]


def interpolation(
    problem: BlockProblem, kept: Tensor, compensation: Compensation, ridge: float
) -> tuple[Tensor, Tensor | None]:
    """The map from the kept neurons to all of them: ``a ~ a_K @ A + offset``.

    Args:
        problem: The block's moments and weights.
        kept: Sorted indices of the kept neurons.
        compensation: "ls" (least squares, with an intercept where the down projection has a bias),
            "bias" (FLAP: the removed neurons' means into the bias, where there is one), "none".
        ridge: Damping of the least-squares solve, relative to the mean diagonal of ``H_KK``.

    Returns:
        ``A`` float64 [k, d_ff] and the offset [d_ff] (None when there is none).
    """
    size = problem.size
    removed = _complement(kept, size)
    transform = torch.zeros(kept.numel(), size, dtype=torch.float64)
    transform[torch.arange(kept.numel()), kept] = 1.0
    offset = None
    if compensation == "ls" and removed.numel():
        h = problem.fit_moment()
        coeffs = torch.linalg.solve(damped(h[kept][:, kept], ridge), h[kept][:, removed])
        transform[:, removed] = coeffs
        if problem.intercept:
            offset = torch.zeros(size, dtype=torch.float64)
            offset[removed] = problem.mean[removed] - coeffs.T @ problem.mean[kept]
    elif compensation == "bias" and problem.intercept and removed.numel():
        offset = torch.zeros(size, dtype=torch.float64)
        offset[removed] = problem.mean[removed]
    return transform, offset


def relative_output_error(
    problem: BlockProblem, kept: Tensor, transform: Tensor, offset: Tensor | None
) -> float:
    """``E||W a - W' a_K - W offset||^2 / E||W a||^2`` on the calibration moments (``W' = W A^T``)."""
    return _OutputError(problem, kept)(problem.down @ transform.T, offset)


def output_errors(
    problem: BlockProblem, kept: Tensor, transform: Tensor, offset: Tensor | None
) -> tuple[float, float]:
    """``(error, error_uncompensated)``: `relative_output_error` of the fold and of the bare selection
    (``W[:, K]``, no compensation), sharing the output energy and the kept moments (computed once)."""
    error = _OutputError(problem, kept)
    return error(problem.down @ transform.T, offset), error(problem.down[:, kept], None)


class _OutputError:
    """The relative output error of folded weights ``W'`` [d, k] (and an offset) for one kept set."""

    def __init__(self, problem: BlockProblem, kept: Tensor) -> None:
        self.problem, self.kept = problem, kept
        wm = problem.down_moment
        self.energy = float((wm * problem.down).sum())
        self.kept_moment = problem.moment[kept][:, kept]
        self.kept_cross = wm[:, kept]

    def __call__(self, folded: Tensor, offset: Tensor | None) -> float:
        p, kept = self.problem, self.kept
        error = (
            self.energy
            - 2 * float((self.kept_cross * folded).sum())
            + float(((folded @ self.kept_moment) * folded).sum())
        )
        if offset is not None:
            shift = p.down @ offset
            error += float(shift @ shift) - 2 * float((p.down @ p.mean - folded @ p.mean[kept]) @ shift)
        return max(error, 0.0) / max(self.energy, 1e-300)


def apply_to_block(parts, kept: Tensor, transform: Tensor, offset: Tensor | None) -> None:
    """Fold the interpolation into the down projection and keep rows `kept` of the input projections."""
    fold_input_map(parts.down, transform, offset)
    for projection in parts.inputs:
        select_outputs(projection, kept, fused_halves=2 if projection is parts.gate_up else 1)


def block_problem(parts, stats) -> BlockProblem:
    """The `BlockProblem` of one block from its MLP modules and its `FfnStats`."""
    from prune.fold import weight_matrix

    down = weight_matrix(parts.down).detach().to(torch.float64).cpu()
    inputs: list[Tensor] = []
    for projection in parts.inputs:
        rows = weight_matrix(projection).detach().to(torch.float64).cpu()
        inputs.extend(rows.chunk(2, dim=0) if projection is parts.gate_up else [rows])
    bias = getattr(parts.down, "bias", None)
    return BlockProblem(
        moment=stats.second_moment(centred=False),
        mean=stats.mean,
        down=down,
        inputs=tuple(inputs),
        intercept=isinstance(bias, Tensor),
    )


def _complement(kept: Tensor, size: int) -> Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[kept] = False
    return torch.nonzero(mask).flatten()


__all__ = [
    "Compensation",
    "apply_to_block",
    "block_problem",
    "interpolation",
    "output_errors",
    "relative_output_error",
]
