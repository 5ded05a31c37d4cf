"""The fast greedy selections pick what the textbook one-neuron-at-a-time loops pick.

`prune.width.selection` defers the full-matrix updates of its greedy steps (see `_greedy`); the
references below are the plain loops (one rank-1 update of the whole matrix per pick). On random Grams
the selections must be the same neurons, or at worst a set whose reconstruction error is not higher.
"""

from __future__ import annotations

import pytest
import torch

from prune.width import selection
from prune.width.compensate import interpolation, relative_output_error
from prune.width.selection import BlockProblem, damped, energy_curve

RIDGE = 1e-3


def _problem(seed: int, size: int = 96, d: int = 24, rank: int = 40, intercept: bool = False) -> BlockProblem:
    """Correlated neurons (a low-rank part plus noise, through a SiLU) and a random down projection."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank, size, generator=g, dtype=torch.float64)
    x = torch.randn(512, rank, generator=g, dtype=torch.float64) @ mix
    x = torch.nn.functional.silu(x + 0.2 * torch.randn(512, size, generator=g, dtype=torch.float64))
    down = torch.randn(d, size, generator=g, dtype=torch.float64) * torch.rand(size, generator=g).double()
    return BlockProblem(
        moment=x.T @ x / 512,
        mean=x.mean(0),
        down=down,
        inputs=(torch.randn(size, d, generator=g, dtype=torch.float64),),
        intercept=intercept,
    )


def _reference_greedy(matrix, coeffs, steps, score, tol=0.0):
    m, b = matrix.clone(), None if coeffs is None else coeffs.clone()
    free = torch.ones(m.shape[0], dtype=torch.bool)
    order = []
    for _ in range(steps):
        s = score(m.diagonal(), None if b is None else (b * b).sum(0))
        s[~free | (m.diagonal() <= tol)] = -float("inf")
        j = int(torch.argmax(s))
        if s[j] == -float("inf"):
            break
        root = m[j, j].sqrt()
        u = m[:, j] / root
        if b is not None:
            b -= torch.outer(b[:, j] / root, u)
        m -= torch.outer(u, u)
        free[j] = False
        order.append(j)
    return order


def _reference(problem: BlockProblem, method: str, keep: int) -> torch.Tensor:
    h = problem.fit_moment()
    if method == "output":
        inverse = torch.linalg.inv(damped(h, RIDGE))
        removed = _reference_greedy(
            inverse, problem.down, problem.size - keep, lambda d, c: -c / d.clamp_min(1e-300)
        )
        mask = torch.ones(problem.size, dtype=torch.bool)
        mask[removed] = False
        return torch.nonzero(mask).flatten()
    if method == "output_forward":
        hd = damped(h, RIDGE)
        order = _reference_greedy(hd, problem.down @ hd, keep, lambda d, c: c / d.clamp_min(1e-300))
    else:
        tol = 1e-12 * float(h.diagonal().max())
        order = _reference_greedy(h, None, keep, lambda d, c: d.clone(), tol=tol)
    return selection._fill(order, problem.size, keep)


def _error(problem: BlockProblem, kept: torch.Tensor) -> float:
    transform, offset = interpolation(problem, kept, "ls", RIDGE)
    return relative_output_error(problem, kept, transform, offset)


@pytest.mark.parametrize("method", ["output", "output_forward", "activation"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("keep", [10, 48, 80])
def test_fast_greedy_selects_what_the_textbook_loop_selects(method, seed, keep, monkeypatch):
    # a small block size makes the picks span several deferred updates
    monkeypatch.setattr(selection, "BLOCK", 7)
    problem = _problem(seed, intercept=seed == 2)
    fast = selection.SELECTORS[method](problem, keep, RIDGE)
    reference = _reference(problem, method, keep)
    assert fast.numel() == keep
    if not torch.equal(fast, reference):
        assert _error(problem, fast) <= _error(problem, reference) * (1 + 1e-9) + 1e-15


def test_fast_greedy_handles_rank_deficient_grams(monkeypatch):
    """Pivoting stops at the rank; the rest is filled, as the reference does."""
    monkeypatch.setattr(selection, "BLOCK", 5)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 40, generator=g).double()
    problem = BlockProblem(x.T @ x / 200, x.mean(0), torch.randn(8, 40).double(), (), False)
    fast = selection.SELECTORS["activation"](problem, 20, RIDGE)
    assert torch.equal(fast, _reference(problem, "activation", 20))


def test_energy_curve_equals_the_plain_pivoted_cholesky(monkeypatch):
    monkeypatch.setattr(selection, "BLOCK", 6)
    moment = _problem(4).fit_moment()
    total = float(moment.diagonal().sum())
    m, gains = moment.clone(), []
    for _ in range(moment.shape[0]):
        j = int(torch.argmax(m.diagonal()))
        if m[j, j] <= 1e-12 * float(moment.diagonal().max()) or sum(gains) >= 0.99 * total:
            break
        u = m[:, j] / m[j, j].sqrt()
        gains.append(float(u @ u))
        m -= torch.outer(u, u)
    expected = torch.tensor(gains, dtype=torch.float64).cumsum(0) / total
    curve = energy_curve(moment, limit=0.99)
    assert torch.allclose(curve, expected.clamp(max=1.0), atol=1e-10)
