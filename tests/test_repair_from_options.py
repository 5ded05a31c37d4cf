"""`repair_from_options`: a run's options mapped to `repair_cut` once, for the run, the budget search and
the benchmarks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import prune.repair as repair_package
from prune.anatomy import get_anatomy
from prune.options import PruneOptions
from prune.repair import RepairError, repair_cut, repair_from_options
from prune.repair.from_options import refit_after_cut
from prune.surgery import remove_blocks
from tests.tiny_models import build_tiny, sample_input_ids

DROP = (2, 3)


def _batches(count: int = 4) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(count):
        ids = sample_input_ids("llama", length=16, batch=4, seed=200 + seed)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b, use_cache=False).logits for b in batches])


def _recording(monkeypatch) -> dict:
    """Replace `prune.repair.repair_cut` by one that records its arguments (and repairs nothing)."""
    seen: dict = {}

    def record(original, pruned, drop, batches, **kwargs):
        seen.update(kwargs, drop=drop)
        return repair_package.RepairReport(kwargs["method"], kwargs["order"], kwargs["objective"])

    monkeypatch.setattr(repair_package, "repair_cut", record)
    return seen


def test_every_repair_option_reaches_repair_cut(monkeypatch):
    seen = _recording(monkeypatch)
    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    options = PruneOptions(
        model="m",
        target="drop-2",
        repair="scale",
        repair_order="one-pass",
        repair_objective="relative",
        max_tokens=123,
        skip_tokens=1,
        refit="on",
        refit_blocks=0,
        refit_attention=False,
    )
    repair_from_options(model, model, DROP, [], options, anatomy=anatomy, progress=True)
    assert seen == {
        "drop": DROP,
        "method": "scale",
        "anatomy": anatomy,
        "order": "one-pass",
        "objective": "relative",
        "max_tokens": 123,
        "skip_tokens": 1,
        "progress": True,
        "refit": True,
        "refit_blocks": None,  # 0: every block after the junction
        "refit_attention": False,
    }
    repair_from_options(
        model, model, DROP, [], options.model_copy(update={"refit_blocks": 3}), anatomy=anatomy
    )
    assert seen["refit_blocks"] == 3 and seen["progress"] is False
    # refit=False (the budget search's candidates) wins over the options
    repair_from_options(model, model, DROP, [], options, anatomy=anatomy, refit=False)
    assert seen["refit"] is False


def test_refit_auto_refits_pre_norm_models_only():
    decoder, encoder = get_anatomy(build_tiny("llama")), get_anatomy(build_tiny("bert"))
    assert refit_after_cut("auto", decoder) and not refit_after_cut("auto", encoder)
    assert refit_after_cut("on", encoder) and not refit_after_cut("off", decoder)


def test_the_same_repair_as_repair_cut_spelled_out():
    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    batches = _batches()
    options = PruneOptions(
        model="m", target="drop-2", refit_blocks=2
    )  # the defaults: linear, refit, attention
    by_hand = remove_blocks(model, DROP, anatomy=anatomy, share_weights=True)
    expected = repair_cut(
        model,
        by_hand,
        DROP,
        batches,
        method="linear",
        anatomy=anatomy,
        order="sequential",
        objective="mse",
        progress=False,
        refit=True,
        refit_blocks=2,
        refit_attention=True,
    )
    pruned = remove_blocks(model, DROP, anatomy=anatomy, share_weights=True)
    report = repair_from_options(model, pruned, DROP, batches, options, anatomy=anatomy)
    refitted = [(b["block"], b["residual_after"]) for b in report.refit["blocks"]]
    assert refitted and refitted == [(b["block"], b["residual_after"]) for b in expected.refit["blocks"]]
    assert [s.residual_after for s in report.spans] == [s.residual_after for s in expected.spans]
    torch.testing.assert_close(_logits(pruned, batches), _logits(by_hand, batches))
    assert not torch.allclose(_logits(pruned, batches), _logits(remove_blocks(model, DROP), batches))


def test_an_unrepairable_model_is_the_plain_cut_unless_the_method_was_named(caplog):
    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    unknown = replace(anatomy, mlp=replace(anatomy.mlp, residual=None))
    pruned = remove_blocks(model, DROP)
    default = PruneOptions(model="m", target="drop-2")
    report = repair_from_options(model, pruned, DROP, _batches(1), default, anatomy=unknown)
    assert (report.method, report.method_requested, report.applied) == ("none", "linear", False)
    assert any("family file" in w for w in report.warnings)
    assert any("not repaired" in r.getMessage() for r in caplog.records)
    named = PruneOptions(model="m", target="drop-2", repair="linear")
    with pytest.raises(RepairError, match="family file"):
        repair_from_options(model, pruned, DROP, _batches(1), named, anatomy=unknown)
