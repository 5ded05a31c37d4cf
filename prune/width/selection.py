"""Which intermediate neurons of a block to keep: rank-revealing and score-based selections.

Every selector sees one block's `BlockProblem`: the neurons' second moment ``H`` (the covariance when
the down projection has a bias, since a constant is then free to fold; the uncentred moment otherwise),
their means, the down projection ``W`` [d, d_ff] and the input projections' rows. It returns the sorted
indices of the ``k`` neurons to keep.

- ``output``: backward elimination on the FFN *output* error (Optimal Brain Surgeon, structured). Start
  from all neurons with ``P = H^-1``; the neuron whose removal (with the others re-fitted by least
  squares) adds least output error is ``argmin_j ||W'_{:,j}||^2 / P_jj``; remove it, update the fitted
  coefficients ``W' -= W'_{:,j} P_{j,:} / P_jj`` and downdate ``P``. O(d_ff^2) per removed neuron.
- ``output_forward``: greedy forward selection on the same objective: with ``S`` the residual moment of
  the neurons not yet explained by the chosen ones (a Schur complement), pick ``argmax_j ||W S_{:,j}||^2
  / S_jj``. O(d_ff^2) per kept neuron.
- ``activation``: the textbook rank-revealing selection (pivoted Cholesky of ``H``, equivalent to
  column-pivoted QR of the activations): pick the neuron with the largest unexplained energy ``S_jj``.
- ``magnitude``, ``wanda``, ``flap``: score each neuron and keep the top k (weight norms; ``||W_{:,j}||
  * sqrt(E a_j^2)``; ``Var(a_j) * ||W_{:,j}||^2``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BlockProblem:
    """What a selector and the compensation know about one block (float64, CPU).

    Attributes:
        moment: [d_ff, d_ff] ``E[a a^T]`` (uncentred).
        mean: [d_ff] ``E[a]``.
        down: [d, d_ff] weight of the down projection.
        inputs: [d_ff, d] weights of the input projections (gate and up; a fused one split in halves).
        intercept: The down projection has a bias, so a constant part of the removed neurons folds into it.
    """

    moment: Tensor
    mean: Tensor
    down: Tensor
    inputs: tuple[Tensor, ...]
    intercept: bool

    @property
    def size(self) -> int:
        return int(self.moment.shape[0])

    def fit_moment(self) -> Tensor:
        """The moment least squares works on: the covariance with an intercept, else ``E[a a^T]``."""
        if self.intercept:
            return self.moment - torch.outer(self.mean, self.mean)
        return self.moment


def damped(h: Tensor, ridge: float) -> Tensor:
    """``h + ridge * mean(diag h) * I``: keeps the solves well posed when neurons are (near) dependent."""
    scale = float(h.diagonal().mean().clamp_min(1e-30))
    return h + torch.eye(h.shape[0], dtype=h.dtype) * (ridge * scale)


Selector = Callable[[BlockProblem, int, float], Tensor]


def _sorted(index: list[int] | Tensor) -> Tensor:
    return torch.as_tensor(index, dtype=torch.long).sort().values


def select_output(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """Backward elimination on the output error (see the module docstring)."""
    h = damped(problem.fit_moment(), ridge)
    p = torch.cholesky_inverse(torch.linalg.cholesky(h))
    coeffs = problem.down.clone()
    alive = torch.ones(problem.size, dtype=torch.bool)
    for _ in range(problem.size - keep):
        diag = p.diagonal()
        cost = (coeffs * coeffs).sum(0) / diag.clamp_min(1e-300)
        cost[~alive] = float("inf")
        j = int(torch.argmin(cost))
        row = p[j].clone()
        coeffs -= torch.outer(coeffs[:, j], row / row[j])
        p -= torch.outer(row, row) / row[j]
        alive[j] = False
    return _sorted(torch.nonzero(alive).flatten())


def _forward_pivots(h: Tensor, keep: int, gain: Callable[[Tensor, Tensor | None], Tensor], w: Tensor | None):
    """Greedy pivoting on the residual moment ``S`` (Schur complement), `keep` pivots."""
    s = h.clone()
    ws = None if w is None else w @ s
    chosen: list[int] = []
    free = torch.ones(h.shape[0], dtype=torch.bool)
    for _ in range(keep):
        score = gain(s, ws)
        score[~free] = -float("inf")
        j = int(torch.argmax(score))
        pivot = float(s[j, j])
        chosen.append(j)
        free[j] = False
        if pivot <= 0:
            continue
        col = s[:, j] / pivot**0.5
        if ws is not None:
            ws -= torch.outer(ws[:, j] / pivot**0.5, col)
        s -= torch.outer(col, col)
    return _sorted(chosen)


def select_output_forward(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """Greedy forward selection on the output error (see the module docstring)."""

    def gain(s: Tensor, ws: Tensor | None) -> Tensor:
        assert ws is not None
        return (ws * ws).sum(0) / s.diagonal().clamp_min(1e-300)

    return _forward_pivots(damped(problem.fit_moment(), ridge), keep, gain, problem.down)


def select_activation(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """Pivoted Cholesky of the activation moment: the textbook rank-revealing selection."""
    return _forward_pivots(problem.fit_moment(), keep, lambda s, ws: s.diagonal().clone(), None)


def _top(score: Tensor, keep: int) -> Tensor:
    return _sorted(torch.topk(score, keep).indices)


def select_magnitude(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """Weight norms: ``||W_{:,j}|| * mean_p ||P_{j,:}||`` over the input projections P."""
    inputs = torch.stack([p.norm(dim=1) for p in problem.inputs]).mean(0)
    return _top(problem.down.norm(dim=0) * inputs, keep)


def select_wanda(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """Wanda for neurons: ``||W_{:,j}|| * ||a_j||`` (activation-aware magnitude)."""
    return _top(problem.down.norm(dim=0) * problem.moment.diagonal().clamp_min(0).sqrt(), keep)


def select_flap(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """FLAP's fluctuation: ``Var(a_j) * ||W_{:,j}||^2`` (the output variance a neuron carries)."""
    variance = (problem.moment.diagonal() - problem.mean**2).clamp_min(0)
    return _top(variance * problem.down.pow(2).sum(0), keep)


def energy_curve(moment: Tensor, *, limit: float = 0.999) -> Tensor:
    """Fraction of the activation energy (trace of `moment`) the first n pivoted-Cholesky neurons keep.

    Runs until `limit` is reached (the rest of the curve is not needed for the neurons-needed counts).

    Returns:
        float64 [n_run]: entry n-1 is the fraction kept by the best n neurons found by pivoting.
    """
    s = moment.clone()
    total = float(s.diagonal().sum())
    fractions: list[float] = []
    residual = total
    for _ in range(s.shape[0]):
        diag = s.diagonal()
        j = int(torch.argmax(diag))
        pivot = float(diag[j])
        if pivot <= 0 or total <= 0:
            fractions.append(1.0)
            break
        col = s[:, j] / pivot**0.5
        s -= torch.outer(col, col)
        residual = float(s.diagonal().clamp_min(0).sum())
        fractions.append(1.0 - residual / total)
        if fractions[-1] >= limit:
            break
    return torch.tensor(fractions, dtype=torch.float64)


def neurons_needed(curve: Tensor, fraction: float, size: int) -> int:
    """The number of neurons whose pivoted selection keeps `fraction` of the energy (by `energy_curve`)."""
    reached = torch.nonzero(curve >= fraction - 1e-12).flatten()
    return int(reached[0]) + 1 if reached.numel() else size


SELECTORS: dict[str, Selector] = {
    "output": select_output,
    "output_forward": select_output_forward,
    "activation": select_activation,
    "magnitude": select_magnitude,
    "wanda": select_wanda,
    "flap": select_flap,
}

__all__ = [
    "SELECTORS",
    "BlockProblem",
    "damped",
    "energy_curve",
    "neurons_needed",
    "select_activation",
    "select_flap",
    "select_magnitude",
    "select_output",
    "select_output_forward",
    "select_wanda",
]
