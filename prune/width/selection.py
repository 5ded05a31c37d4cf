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
from functools import cached_property

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

    @cached_property
    def down_moment(self) -> Tensor:
        """``W E[a a^T]`` [d, d_ff], shared by the error computations."""
        return self.down @ self.moment

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
    out = h.clone()  # one copy: adding an identity matrix would hold two more d_ff x d_ff matrices
    out.diagonal().add_(ridge * scale)
    return out


Selector = Callable[[BlockProblem, int, float], Tensor]


def _sorted(index: list[int] | Tensor) -> Tensor:
    return torch.as_tensor(index, dtype=torch.long).sort().values


# Greedy steps are exact one at a time, but the n x n matrix is touched only every BLOCK picks: between
# full updates the picks' vectors are kept aside, a column of the current matrix is the stored one minus
# their contribution (O(n t)), and the diagonal and the coefficient column norms that the scores need are
# updated in O(n) and O(d n) per pick. The BLOCK picks are then applied to the full matrices in one
# matrix product (BLAS-3). Rank-1 updates of a d_ff x d_ff matrix per pick are memory-bound and were the
# slow part on a CPU; this makes the same picks as the textbook loop (tests/test_squeeze.py checks it
# against one).
BLOCK = 64


def _greedy(
    matrix: Tensor,
    coeffs: Tensor | None,
    steps: int,
    score: Callable[[Tensor, Tensor | None], Tensor],
    *,
    tol: float = 0.0,
    stop_gain: float = float("inf"),
) -> tuple[list[int], list[float]]:
    """Pick `steps` indices greedily; after picking j: ``M -= u u^T``, ``B -= b u^T`` with
    ``u = M_{:,j} / sqrt(M_jj)`` and ``b = B_{:,j} / sqrt(M_jj)``.

    Forward selection runs it on the residual moment (``M = S``, ``B = W S``), backward elimination on
    the inverse moment (``M = P``, ``B`` = the re-fitted down weights): the same update.

    Args:
        matrix: M [m, m] (copied).
        coeffs: B [d, m] (copied) or None.
        steps: Number of picks.
        score: ``f(diag, column_norms_squared or None)``: higher is picked first.
        tol: Picks need ``M_jj > tol``; when none is left the picking stops early.
        stop_gain: Stop once the picks' ``||u||^2`` add up to this much.

    Returns:
        The picked indices in order, and ``||u||^2`` of each pick (the energy it explains, for pivoting).
    """
    m = matrix.clone()
    b = None if coeffs is None else coeffs.clone()
    size = m.shape[0]
    free = torch.ones(size, dtype=torch.bool)
    order: list[int] = []
    gains: list[float] = []
    total = 0.0
    while len(order) < steps and total < stop_gain:
        width = min(BLOCK, steps - len(order))
        us = torch.zeros(size, width, dtype=m.dtype)
        bs = None if b is None else torch.zeros(b.shape[0], width, dtype=m.dtype)
        diag = m.diagonal().clone()
        norms = None if b is None else (b * b).sum(0)
        t = 0
        while t < width and total < stop_gain:
            scores = score(diag, norms)
            scores[~free | (diag <= tol)] = -float("inf")
            j = int(torch.argmax(scores))
            if scores[j] == -float("inf"):
                break
            root = float(diag[j]) ** 0.5
            row = us[j, :t]
            u = (m[:, j] - us[:, :t] @ row) / root
            us[:, t] = u
            if b is not None:
                bj = (b[:, j] - bs[:, :t] @ row) / root
                bs[:, t] = bj
                # b^T B_current, from the stored B and the picks since it was stored
                cross = bj @ b - (bj @ bs[:, :t]) @ us[:, :t].T
                norms = norms - 2 * u * cross + u * u * float(bj @ bj)
            diag = diag - u * u
            free[j] = False
            order.append(j)
            gains.append(float(u @ u))
            total += gains[-1]
            t += 1
        if t == 0:
            break
        # in place (addmm_): a temporary n x n product and a second pass over m cost more than the product
        picked = us[:, :t].contiguous()
        m.addmm_(picked, picked.T, alpha=-1.0)
        if b is not None:
            b.addmm_(bs[:, :t].contiguous(), picked.T, alpha=-1.0)
    return order, gains


def _fill(order: list[int], size: int, keep: int) -> Tensor:
    """`order` completed to `keep` indices with the lowest unpicked ones (when pivoting stopped early)."""
    rest = [i for i in range(size) if i not in set(order)]
    return _sorted(order + rest[: keep - len(order)])


def select_output(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """Backward elimination on the output error (see the module docstring)."""
    h = damped(problem.fit_moment(), ridge)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    removed, _ = _greedy(inverse, problem.down, problem.size - keep, lambda d, c: -c / d.clamp_min(1e-300))
    mask = torch.ones(problem.size, dtype=torch.bool)
    mask[removed] = False
    return _sorted(torch.nonzero(mask).flatten())


def select_output_forward(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """Greedy forward selection on the output error (see the module docstring)."""
    h = damped(problem.fit_moment(), ridge)
    order, _ = _greedy(h, problem.down @ h, keep, lambda d, c: c / d.clamp_min(1e-300))
    return _fill(order, problem.size, keep)


def _pivot_tol(h: Tensor) -> float:
    return 1e-12 * float(h.diagonal().max().clamp_min(1e-300))


def select_activation(problem: BlockProblem, keep: int, ridge: float) -> Tensor:
    """Pivoted Cholesky of the activation moment: the textbook rank-revealing selection."""
    h = problem.fit_moment()
    order, _ = _greedy(h, None, keep, lambda d, c: d.clone(), tol=_pivot_tol(h))
    return _fill(order, problem.size, keep)


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
    total = float(moment.diagonal().sum())
    if total <= 0:
        return torch.ones(1, dtype=torch.float64)
    _, gains = _greedy(
        moment, None, moment.shape[0], lambda d, c: d.clone(), tol=_pivot_tol(moment), stop_gain=limit * total
    )
    fractions = torch.tensor(gains, dtype=torch.float64).cumsum(0) / total
    return fractions.clamp(max=1.0) if fractions.numel() else torch.ones(1, dtype=torch.float64)


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
