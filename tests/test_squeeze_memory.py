"""The FFN statistics stay within their documented bound: the Grams of one group of blocks at a time, and
the default group counts what is really held (two Grams per block with the auto ridge).

The Grams alive are counted (float64 d_ff x d_ff tensors reachable by the garbage collector) at the end of
every collection, the moment the most statistics exist; sizes are not timed or measured (the RSS figures
are benchmarks/ffn_memory.py's).
"""

from __future__ import annotations

import gc

import pytest
import torch

from prune.width import squeeze_model
from prune.width import stats as stats_module
from prune.width.energy import neurons_needed
from prune.width.stats import block_groups, gram_bytes
from tests.test_squeeze import _batches
from tests.tiny_models import build_tiny


def _grams_alive(size: int) -> int:
    return sum(
        1
        for o in gc.get_objects()
        if type(o) is torch.Tensor and o.dtype == torch.float64 and tuple(o.shape) == (size, size)
    )


@pytest.fixture
def collections(monkeypatch) -> list[tuple[list[int], int]]:
    """(blocks, Grams alive) after every `collect_ffn_stats` call; the default bound set to two Grams."""
    calls: list[tuple[list[int], int]] = []
    real = stats_module.collect_ffn_stats

    def collect(model, batches, anatomy, blocks, **kwargs):
        out = real(model, batches, anatomy, blocks, **kwargs)
        calls.append((list(blocks), _grams_alive(out[blocks[0]].gram.shape[0])))
        return out

    monkeypatch.setattr(stats_module, "collect_ffn_stats", collect)
    monkeypatch.setattr(stats_module, "DEFAULT_MAX_BYTES", 2 * gram_bytes(64))  # tiny llama: d_ff 64
    return calls


@pytest.mark.parametrize(("keep", "ridge"), [(0.75, "auto"), ("auto:0.9", "auto"), (0.75, 1e-3)])
def test_squeeze_holds_at_most_the_bound_of_grams(collections, keep, ridge):
    model = build_tiny("llama")  # 6 blocks, d_ff 64
    result = squeeze_model(
        model, _batches("llama"), keep=keep, method="textbook", ridge=ridge, energy_levels=(), progress=False
    )
    # the auto ridge sums the held-back batches apart: two Grams a block, so one block per pass
    per_pass = 1 if ridge == "auto" else 2
    assert {len(blocks) for blocks, _ in collections} == {per_pass}
    assert result.report.passes == (2 if keep == "auto:0.9" else 1) * 6 // per_pass
    # nothing of an earlier group (its sums, a block's pooled Gram or moment) is alive while the next is
    # collected, so the bound holds at every pass
    assert max(alive for _, alive in collections) <= 2


def test_neurons_needed_holds_one_group_at_a_time(collections):
    neurons_needed(build_tiny("llama"), _batches("llama"), block_group=1, progress=False)
    assert [blocks for blocks, _ in collections] == [[b] for b in range(6)]
    assert max(alive for _, alive in collections) == 1


def test_default_group_counts_the_held_back_grams():
    # Llama-7B width (969 MB Grams) under the 2 GiB default: two blocks per pass, one with the auto ridge
    assert [len(g) for g in block_groups(32, 11008, None)] == [2] * 16
    assert [len(g) for g in block_groups(32, 11008, None, grams_per_block=2)] == [1] * 32
    assert block_groups(30, 1536, None, grams_per_block=2) == [list(range(30))]  # SmolLM2: 1.1 GB
    assert block_groups(6, 64, 4, grams_per_block=2) == [[0, 1, 2, 3], [4, 5]]  # an explicit group wins
