"""benchmarks/width_allocation.py: its allocation is the least-error choice of one count per block that adds
up to the total (checked against every combination), and its doc example runs."""

from __future__ import annotations

import doctest
import itertools
import random

import pytest


def test_allocation_is_the_best_combination_with_the_total():
    from benchmarks.width_allocation import _allocate

    rng = random.Random(0)
    counts = (2, 3, 4)
    errors = {b: {c: rng.random() / c for c in counts} for b in range(5)}
    total = 15
    best = min(
        (combo for combo in itertools.product(counts, repeat=5) if sum(combo) == total),
        key=lambda combo: sum(errors[b][c] for b, c in enumerate(combo)),
    )
    assert _allocate(errors, total) == dict(enumerate(best))
    with pytest.raises(SystemExit, match="adds up to 100"):
        _allocate(errors, 100)


def test_doc_example_runs():
    import benchmarks.width_allocation as module

    assert doctest.testmod(module, report=False).failed == 0
