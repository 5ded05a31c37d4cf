"""Capture sites and their running sums: exact against a hand computation, masked, budgeted, resumable."""

from __future__ import annotations

import pytest
import torch

from prune.anatomy import get_anatomy
from prune.collect import CaptureSite, CollectError, collect_site_sums
from prune.collect.capture import column_sum, cross, difference_gram, gram
from prune.errors import AnatomyError
from tests.tiny_models import build_tiny, sample_input_ids


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    batches = []
    for i in range(n):
        ids = sample_input_ids("llama", length=10, batch=2, seed=i)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0  # right padding on the second row
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


SITES = {
    "down_in": CaptureSite(2, "mlp.down_proj", "input"),
    "mlp": CaptureSite(2, "mlp", "output"),
    "h": CaptureSite(3),
}
SUMS = [
    gram("a", "down_in"),
    cross("mh", "mlp", "h"),
    column_sum("hs", "h"),
    difference_gram("res", "h", "mlp"),
]


def _by_hand(model, batches):
    anatomy = get_anatomy(model)
    blocks = anatomy.blocks(model)
    seen = {}
    handles = [
        blocks[2].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("down_in", a[0])),
        blocks[2].mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o)),
        blocks[3].register_forward_hook(
            lambda m, a, o: seen.__setitem__("h", o if torch.is_tensor(o) else o[0])
        ),
    ]
    totals = {"a": 0, "mh": 0, "hs": 0, "res": 0}
    with torch.no_grad():
        for batch in batches:
            model(**batch, use_cache=False)
            m = batch["attention_mask"].bool()
            x, y, h = (seen[k][m].double() for k in ("down_in", "mlp", "h"))
            totals["a"] = totals["a"] + x.T @ x
            totals["mh"] = totals["mh"] + y.T @ h
            totals["hs"] = totals["hs"] + h.sum(0)
            totals["res"] = totals["res"] + (h - y).T @ (h - y)
    for handle in handles:
        handle.remove()
    return totals


def test_sums_equal_a_hand_computation_over_the_valid_tokens():
    model = build_tiny("llama")
    batches = _batches()
    stats = collect_site_sums(model, batches, SITES, SUMS, progress=False)
    expected = _by_hand(model, batches)
    assert stats.num_tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    for name, value in expected.items():
        torch.testing.assert_close(stats.sums[name], value, atol=1e-4, rtol=1e-5)
        assert stats.sums[name].dtype == torch.float64


def test_forward_stops_after_the_deepest_site():
    model = build_tiny("llama")
    blocks = get_anatomy(model).blocks(model)
    calls = []
    handle = blocks[4].register_forward_hook(lambda m, a, o: calls.append(1))
    collect_site_sums(model, _batches(1), SITES, SUMS, progress=False)
    handle.remove()
    assert calls == []


def test_token_budget_is_exact():
    model = build_tiny("llama")
    stats = collect_site_sums(model, _batches(), SITES, [gram("a", "down_in")], max_tokens=23, progress=False)
    assert stats.num_tokens == 23


def test_interrupted_run_resumes_to_the_same_sums(tmp_path):
    model = build_tiny("llama")
    batches = _batches(4)
    full = collect_site_sums(model, batches, SITES, SUMS, progress=False)

    def failing():
        for i, batch in enumerate(batches):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    state = tmp_path / "sums.pt"
    with pytest.raises(KeyboardInterrupt):
        collect_site_sums(model, failing(), SITES, SUMS, progress=False, state_path=state)
    resumed = collect_site_sums(model, batches, SITES, SUMS, progress=False, state_path=state)
    assert resumed.num_tokens == full.num_tokens
    for name in full.sums:
        torch.testing.assert_close(resumed.sums[name], full.sums[name])
    with pytest.raises(CollectError, match="another run"):
        collect_site_sums(model, batches, SITES, [gram("a", "h")], progress=False, state_path=state)


def test_bad_sites_and_sums_are_refused():
    model = build_tiny("llama")
    with pytest.raises(CollectError, match="unknown sites"):
        collect_site_sums(model, _batches(1), SITES, [gram("a", "nope")], progress=False)
    with pytest.raises(CollectError, match="blocks 0-5"):
        collect_site_sums(model, _batches(1), {"x": CaptureSite(9)}, [gram("a", "x")], progress=False)
    with pytest.raises(AnatomyError, match="no module 'mlp.nope'"):
        collect_site_sums(
            model, _batches(1), {"x": CaptureSite(1, "mlp.nope")}, [gram("a", "x")], progress=False
        )


def test_site_sums_hold_only_the_sites_a_sum_still_waits_for(monkeypatch):
    """Each sum is added as soon as its sites are in: one block's activations at a time for per-block
    Grams (all of them at once took the FFN statistics of SmolLM2 from 1.2 to 1.9 GB)."""
    from prune.collect import capture

    model = build_tiny("llama")
    held: list[int] = []
    ready = capture._BatchSums.ready

    def spy(self, name=None):
        held.append(len(self.captured) + len(self.rows))
        ready(self, name)

    monkeypatch.setattr(capture._BatchSums, "ready", spy)
    sites = {f"a{b}": CaptureSite(b, "mlp.down_proj", "input") for b in range(6)}
    sums = [s for b in range(6) for s in (gram(f"g{b}", f"a{b}"), column_sum(f"s{b}", f"a{b}"))]
    # a cross sum waits for its second site: block 0's activations are held until block 5's arrive
    sums.append(cross("x05", "a0", "a5"))
    stats = collect_site_sums(model, _batches(), sites, sums, progress=False)
    assert held and max(held) <= 2
    reference = collect_site_sums(model, _batches(), sites, sums[:-1], progress=False)
    for name, value in reference.sums.items():
        torch.testing.assert_close(stats.sums[name], value)
