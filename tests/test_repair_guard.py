"""The default cut is repair-aware (strategy ``auto``), and the repair guard keeps the plain cut when
the repair makes the model worse on held-back calibration data."""

from __future__ import annotations

import pytest
import torch
import yaml

from prune import stages
from prune.anatomy import get_anatomy
from prune.errors import PlanError
from prune.options import PruneOptions
from prune.pipeline import run_pruning
from prune.plan import plan_pruning, resolve_strategy
from prune.report import report_markdown
from prune.stages.depth import run_strategy
from prune.stages.prepare import guard_samples
from tests.tiny_models import build_tiny

FAST = {"calib_samples": 4, "seq_len": 16, "batch_size": 2, "eval_samples": 4}


def _options(folder: str, text: str, **extra) -> PruneOptions:
    return PruneOptions(**{"model": folder, "target": "drop-1", "calib": text, "eval": text, **FAST, **extra})


def test_auto_is_span_repair_when_the_run_repairs_with_linear_and_span_otherwise():
    mlp = get_anatomy(build_tiny("llama")).mlp
    assert resolve_strategy("auto", "linear", mlp) == "span-repair"
    assert resolve_strategy("auto", "none", mlp) == "span"
    assert resolve_strategy("auto", "scale", mlp) == "span"
    assert resolve_strategy("auto", "linear", None) == "span"  # nowhere to fold a map
    assert resolve_strategy("cka", "linear", mlp) == "cka"
    anatomy = get_anatomy(build_tiny("llama"))
    assert run_strategy(PruneOptions(model="m", target="drop-1"), anatomy) == "span-repair"
    assert run_strategy(PruneOptions(model="m", target="drop-1", repair="none"), anatomy) == "span"
    with pytest.raises(PlanError, match="resolve it first"):
        plan_pruning({}, 4, "drop-1", "auto")


def test_the_default_run_cuts_the_span_best_after_repair_and_records_it(
    tiny_llama_folder, word_text_file, tmp_path
):
    out = tmp_path / "out"
    result = run_pruning(_options(tiny_llama_folder, word_text_file, out=str(out)), progress=False)
    plan = result.report["plan"]
    details = plan["details"]
    assert details["strategy_requested"] == "auto" and plan["strategy"] == "span-repair"
    assert "auto chose span-repair" in plan["reason"] and details["candidates"]
    assert "auto_candidates" not in details  # no comparison by default
    # what was used is what the recipe, the recorded command line and the card say
    assert yaml.safe_load((out / "prune_recipe.yaml").read_text())["strategy"] == plan["strategy"]
    assert f"--strategy {plan['strategy']}" in result.report["command"]
    assert f"`{plan['strategy']}`" in (out / "README.md").read_text()


def test_auto_with_candidates_makes_the_best_of_their_cuts(tiny_llama_folder, word_text_file):
    options = _options(
        tiny_llama_folder, word_text_file, target="drop-2", auto_candidates="span-repair,random"
    )
    plan = run_pruning(options, progress=False).report["plan"]
    compared = plan["details"].get("auto_candidates")
    assert plan["strategy"] in ("span-repair", "random")
    if compared:  # random's seeded cut may be span-repair's own
        best = min(compared, key=lambda c: c["held_back_loss"])
        assert plan["drop"] == best["blocks"] and "held-back calibration loss" in plan["reason"]


def test_repair_none_keeps_the_plain_span(tiny_llama_folder, word_text_file):
    result = run_pruning(_options(tiny_llama_folder, word_text_file, repair="none"), progress=False)
    assert result.report["plan"]["strategy"] == "span"
    assert result.report["repair"]["method"] == "none" and result.report["repair"]["guard"] is None
    assert guard_samples(_options(tiny_llama_folder, word_text_file, repair="none")) == 0


def test_an_explicit_strategy_is_kept(tiny_llama_folder, word_text_file):
    result = run_pruning(_options(tiny_llama_folder, word_text_file, strategy="span"), progress=False)
    assert result.report["plan"]["strategy"] == "span"
    assert "strategy_requested" not in result.report["plan"]["details"]


def _context(folder: str, text: str, **extra):
    ctx = stages.RunContext(_options(folder, text, **extra), progress=False)
    for stage in (stages.check, stages.load, stages.calibrate, stages.collect, stages.plan, stages.cut):
        ctx = stage(ctx)
    return ctx


def _logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in batches])


def _harmful(monkeypatch) -> None:
    """Plant a repair that hurts: the real repair, then the kept block's down projection scaled by 6."""
    import prune.repair as repair_package

    real = repair_package.repair_cut

    def hurting(original, pruned, drop, *args, **kwargs):
        report = real(original, pruned, drop, *args, **kwargs)
        anatomy = get_anatomy(pruned)
        for span in report.spans:
            if span.kept_block is not None:
                kept = [i for i in range(anatomy.num_blocks + len(drop)) if i not in set(drop)]
                block = anatomy.blocks(pruned)[kept.index(span.kept_block)]
                down = block.mlp.down_proj
                down.weight = torch.nn.Parameter(down.weight.detach() * 6.0)
        return report

    monkeypatch.setattr(repair_package, "repair_cut", hurting)


def test_the_guard_keeps_the_plain_cut_when_the_repair_hurts(tiny_llama_folder, word_text_file, monkeypatch):
    _harmful(monkeypatch)
    ctx = _context(tiny_llama_folder, word_text_file, strategy="span-repair")
    assert ctx.plan.drop[0] > 0  # a map goes into a kept block
    plain = _logits(stages.refine._plain_cut(ctx, share_weights=True), ctx.guard_batches)
    ctx = stages.repair(ctx)
    guard = ctx.repair.guard
    assert ctx.guard_batches and guard["kept"] == "plain"
    assert guard["loss_repaired"] > guard["loss_plain"] and guard["sequences"] == 1
    assert not ctx.repair.applied
    torch.testing.assert_close(_logits(ctx.pruned, ctx.guard_batches), plain)
    # the original is untouched by the fall-back
    assert all(p.isfinite().all() for p in ctx.original.parameters())

    report = {
        "model": {"spec": "tiny"},
        "plan": ctx.plan.to_dict(),
        "repair": ctx.repair.to_dict(),
    }
    text = report_markdown(report)
    assert "Guard: the plain cut was kept" in text
    assert f"{guard['loss_plain']:.4g}" in text and f"{guard['loss_repaired']:.4g}" in text
    assert any("plain cut was kept" in w for w in ctx.repair.warnings)
    # what was applied is the plain cut; what was asked for, and fitted, is still said
    assert (report["repair"]["method"], report["repair"]["method_requested"]) == ("none", "linear")
    assert report["repair"]["spans"] and report["repair"]["spans"][0]["method"] == "linear"
    assert "None applied: the model is the plain cut. Method `linear` was fitted" in text
    assert "folded into the kept weights" not in text


def test_reports_name_the_method_applied_and_the_one_asked_for(capsys):
    from types import SimpleNamespace

    from prune.card import build_model_card
    from prune.cli.prune_cmd import print_summary
    from prune.repair import RepairReport

    span = {"first": 2, "last": 2, "kept_block": 1, "method": "linear", "map": "full map: block 1",
            "residual_before": 0.5, "residual_after": 0.1, "ridge": 0.1, "tokens": 64, "seconds": 0.1,
            "skipped": None}  # fmt: skip
    guard = {"loss_plain": 2.0, "loss_repaired": 2.5, "measure": "next-token loss", "kept": "plain",
             "sequences": 1, "tokens": 16, "seconds": 0.1}  # fmt: skip
    model = {
        "spec": "m",
        "num_blocks_before": 4,
        "num_blocks_after": 3,
        "params_before": 10,
        "params_after": 8,
    }
    plan = {"strategy": "span-repair", "drop": [2], "reason": "r"}

    def outputs(repair: dict) -> tuple[str, str, str]:
        report = {"model": model, "plan": plan, "repair": repair}
        card = str(build_model_card(report, base_model=None, license=None, command="c", repo_id=None))
        print_summary(SimpleNamespace(report=report, out_dir=None, hub_url=None))
        return report_markdown(report), card, capsys.readouterr().out

    kept = RepairReport("linear", "sequential", "mse")
    assert (kept.method, kept.method_requested) == ("linear", "linear")
    kept.keep_plain_cut()
    assert (kept.to_dict()["method"], kept.to_dict()["method_requested"]) == ("none", "linear")

    repaired = {"method": "linear", "method_requested": "linear", "spans": [span], "guard": None}
    text, card, summary = outputs(repaired)
    assert "Method `linear` (training-free, folded into the kept weights" in text
    assert "`linear` repair" in card and "repair: linear\n" in summary

    plain = {**repaired, "method": "none", "guard": guard}
    text, card, summary = outputs(plain)
    assert "Method `linear` was fitted" in text and "folded into the kept weights" not in text
    assert "`linear` repair" not in card and "Method `linear` was fitted" in card
    assert "repair: none (linear was asked for; the model is the plain cut)" in summary
    # a report written before `method_requested` (method linear, the guard's verdict) reads the same
    text_before, card_before, _ = outputs({**repaired, "method_requested": None, "guard": guard})
    assert "Method `linear` was fitted" in text_before and "`linear` repair" not in card_before

    fell_back = {
        "method": "none",
        "method_requested": "linear",
        "spans": [],
        "guard": None,
        "warnings": ["w"],
    }
    text, _, summary = outputs(fell_back)
    assert "None: the plain cut; `linear` was asked for but not applied" in text and "- Warning: w" in text
    assert "repair: none (linear was asked for" in summary


def test_the_guard_keeps_a_repair_that_helps_and_can_be_turned_off(
    tiny_llama_folder, word_text_file, monkeypatch
):
    ctx = stages.repair(_context(tiny_llama_folder, word_text_file, strategy="span-repair"))
    guard = ctx.repair.guard
    assert guard is not None and (guard["kept"] == "repaired") == (
        guard["loss_repaired"] <= guard["loss_plain"]
    )

    _harmful(monkeypatch)
    ctx = _context(tiny_llama_folder, word_text_file, strategy="span-repair", repair_guard=False)
    assert not ctx.guard_batches  # nothing is held back when nothing needs it
    ctx = stages.repair(ctx)
    assert ctx.repair.guard is None and ctx.repair.applied


def test_held_back_sequences_leave_the_calibration_batches_as_they_were(tiny_llama_folder, word_text_file):
    guarded = _context(tiny_llama_folder, word_text_file)
    unguarded = _context(tiny_llama_folder, word_text_file, strategy="span", repair_guard=False)
    assert len(guarded.guard_batches) == 1 and not unguarded.guard_batches
    for a, b in zip(guarded.calib_batches, unguarded.calib_batches, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
    calib = torch.cat([b["input_ids"] for b in guarded.calib_batches])
    held = guarded.guard_batches[0]["input_ids"]
    assert not any(torch.equal(row, other) for row in held for other in calib)


def test_auto_makes_the_candidate_cut_that_is_best_after_repair(tiny_llama_folder, word_text_file):
    from prune.plan import Plan
    from prune.repair.guard import rank_repaired_cuts
    from prune.stages.depth import _best_repaired_cut

    ctx = _context(tiny_llama_folder, word_text_file, auto_candidates="span-repair,last,topk")
    first = Plan(4, (1,), "span-repair", "angular", "drop-1", "closest", {})
    made = {"last": Plan(4, (2,), "last", None, "drop-1", "last", {}), "topk": first}
    chosen, compared = _best_repaired_cut(ctx, first, lambda name: made[name])
    assert [c["blocks"] for c in compared] == [[1], [2]]  # topk's cut is span-repair's: compared once
    losses = rank_repaired_cuts(
        ctx.original, ctx.anatomy, [(1,), (2,)], ctx.calib_batches, ctx.guard_batches, "causal-lm"
    )
    assert [(c["plain"], c["repaired"]) for c in compared] == [
        pytest.approx(pair, rel=1e-5) for pair in losses
    ]
    better = [min(pair) for pair in losses]
    assert [c["held_back_loss"] for c in compared] == pytest.approx(better, rel=1e-5)
    assert chosen.drop == ((1,) if better[0] <= better[1] else (2,))
    assert better[0] != pytest.approx(better[1])  # the two cuts really differ


def test_a_one_pass_repair_of_a_cut_at_block_0_only_folds_into_untied_embeddings_or_is_the_plain_cut(
    tiny_llama_folder, word_text_file
):
    from prune.repair import repair_cut
    from prune.surgery import remove_blocks

    ctx = _context(tiny_llama_folder, word_text_file)
    pruned = remove_blocks(ctx.original, [0], anatomy=ctx.anatomy, share_weights=True)
    report = repair_cut(ctx.original, pruned, [0], ctx.calib_batches, order="one-pass", progress=False)
    assert report.spans[0].skipped is None and "input embeddings" in report.spans[0].map  # untied: folded
    tied = remove_blocks(ctx.original, [0], anatomy=ctx.anatomy, share_weights=True)
    tied.lm_head.weight = tied.get_input_embeddings().weight
    report = repair_cut(ctx.original, tied, [0], ctx.calib_batches, order="one-pass", progress=False)
    assert [s.skipped is not None for s in report.spans] == [True] and report.warnings
