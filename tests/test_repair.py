"""Training-free repair: exact on planted redundancy, identity folds change nothing, stock checkpoints.

The planted tests replace the cut blocks of a tiny model by modules whose contribution is, by
construction, exactly the map the family admits (a linear function of the last kept block's MLP output
for pre-norm decoders, a per-channel affine map of its output for post-norm encoders, a per-channel
scale of the post-feedforward norm's output for Gemma). The fitted repair must then make the pruned
model compute what the original computed, to float tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune.anatomy import get_anatomy
from prune.collect.capture import collect_site_sums
from prune.fold import weight_matrix
from prune.repair import REPAIRS, RepairError, get_repair, repair_cut
from prune.repair.base import contiguous_spans
from prune.repair.stage import SpanTask, fit_spans
from prune.surgery import remove_blocks
from tests.tiny_models import (
    TINY_FAMILIES,
    assert_reloads_stock,
    build_tiny,
    is_decoder,
    sample_input_ids,
)

DROP = (1, 3)  # two spans, each after a kept block: 0 | 1 cut | 2 | 3 cut | 4 5


def _batches(family: str, count: int = 6, length: int = 16) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(count):
        ids = sample_input_ids(family, length=length, batch=4, seed=100 + seed)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _output(model: nn.Module, family: str, ids: torch.Tensor | None = None) -> torch.Tensor:
    ids = sample_input_ids(family, length=12) if ids is None else ids
    kwargs = {"use_cache": False} if is_decoder(family) else {}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


class Planted(nn.Module):
    """Stands in for a cut block: returns ``fn(hidden_states)``.

    `fn` reads what hooks captured through its closure: a function survives the model copies that
    surgery makes (deepcopy keeps functions as they are), a dict attribute would be copied and go stale.
    """

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, hidden_states, *args, **kwargs):
        return self.fn(hidden_states)


def _plant(model: nn.Module, kept: int, capture: str, fn) -> dict:
    """Blocks kept+1 and kept+2 become planted (the first applies `fn`, the second passes through);
    `capture` names the module of block `kept` whose output `fn` reads."""
    anatomy = get_anatomy(model)
    blocks = anatomy.blocks(model)
    store: dict = {}
    module = blocks[kept].get_submodule(capture)
    module.register_forward_hook(lambda m, a, o: store.__setitem__("x", o.detach().clone()))
    blocks[kept + 1] = Planted(lambda h: fn(h, store))
    blocks[kept + 2] = Planted(lambda h: h)
    return store


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_linear_repair_is_exact_on_a_planted_linear_redundancy(family):
    torch.manual_seed(0)
    model = build_tiny(family)
    mlp = get_anatomy(model).mlp
    width = model.config.hidden_size
    a = torch.randn(width, width) * 0.3
    has_bias = isinstance(
        getattr(mlp.parts(get_anatomy(model).blocks(model)[1]).down, "bias", None), torch.Tensor
    )
    c = torch.randn(width) if has_bias else torch.zeros(width)  # an offset only where a bias can hold it
    _plant(model, 1, mlp.down, lambda h, s: h + s["x"] @ a + c)
    reference = _output(model, family)
    drop = (2, 3)
    pruned = remove_blocks(model, drop)
    plain = _output(pruned, family)
    report = repair_cut(model, pruned, drop, _batches(family), method="linear", ridge=0.0, progress=False)
    repaired = _output(pruned, family)
    assert not torch.allclose(plain, reference, atol=1e-2)  # the planted blocks did matter
    torch.testing.assert_close(repaired, reference, atol=2e-4, rtol=1e-4)
    assert report.spans[0].residual_after < 1e-8 < report.spans[0].residual_before


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_linear_repair_is_exact_affine_on_a_planted_post_norm_encoder(family):
    torch.manual_seed(0)
    model = build_tiny(family)
    mlp = get_anatomy(model).mlp
    width = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.dim
    scale, shift = 1 + 0.5 * torch.randn(width), 0.3 * torch.randn(width)
    _plant(model, 1, mlp.output_norm, lambda h, s: h * scale + shift)
    reference = _output(model, family)
    pruned = remove_blocks(model, (2, 3))
    report = repair_cut(model, pruned, (2, 3), _batches(family), method="linear", ridge=0.0, progress=False)
    torch.testing.assert_close(_output(pruned, family), reference, atol=2e-4, rtol=1e-4)
    assert "affine" in report.spans[0].map


def test_linear_repair_is_exact_channel_scale_on_a_planted_gemma():
    torch.manual_seed(0)
    model = build_tiny("gemma2")
    mlp = get_anatomy(model).mlp
    scale = 1 + 0.5 * torch.randn(model.config.hidden_size)
    _plant(model, 1, mlp.post_mlp_norm, lambda h, s: h + (scale - 1) * s["x"])
    reference = _output(model, "gemma2")
    pruned = remove_blocks(model, (2, 3))
    report = repair_cut(model, pruned, (2, 3), _batches("gemma2"), method="linear", ridge=0.0, progress=False)
    torch.testing.assert_close(_output(pruned, "gemma2"), reference, atol=2e-4, rtol=1e-4)
    assert "post-feedforward" in report.spans[0].map


@pytest.mark.parametrize("method", ["linear", "scale"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_folding_the_identity_changes_nothing(family, method):
    model = build_tiny(family)
    anatomy = get_anatomy(model)
    chosen = get_repair(method)
    plain = remove_blocks(model, DROP, anatomy=anatomy)
    folded = remove_blocks(model, DROP, anatomy=anatomy)
    blocks = get_anatomy(folded).blocks(folded)
    width = weight_matrix(anatomy.mlp.parts(blocks[0]).down).shape[0]  # the residual stream's width
    chosen.fold(blocks, 0, range(1, len(blocks)), chosen.identity(anatomy.mlp, width), anatomy.mlp)
    torch.testing.assert_close(_output(folded, family), _output(plain, family), atol=1e-5, rtol=1e-5)


# linear on every family; scale (a scalar into the same modules' weights) on one family of each placement
RELOAD_CASES = [(family, "linear") for family in TINY_FAMILIES] + [
    (family, "scale") for family in ("llama", "gpt2", "falcon", "gemma2", "bert")
]


@pytest.mark.parametrize(("family", "method"), RELOAD_CASES)
def test_repaired_model_reloads_with_stock_auto_class_and_generates_with_cache(family, method, tmp_path):
    model = build_tiny(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = remove_blocks(model, DROP, share_weights=True)
    plain = _output(pruned, family)
    report = repair_cut(model, pruned, DROP, _batches(family, count=4), method=method, progress=False)
    assert [(s.first, s.last) for s in report.spans] == [(1, 1), (3, 3)]
    repaired = _output(pruned, family)
    assert not torch.equal(repaired, plain)  # something was folded
    for key, value in model.state_dict().items():  # the original (sharing its tensors) is untouched
        assert torch.equal(value, before[key]), key
    assert_reloads_stock(pruned, family, tmp_path, repaired, lambda m: _output(m, family))


def _junction_error(model, pruned, family, kept, end) -> float:
    """||h_l' - h_e||^2 / ||h_e||^2 measured by hooks: the pruned model's kept block vs the original's block e."""
    seen = {}
    get_anatomy(model).blocks(model)[end].register_forward_hook(lambda m, a, o: seen.__setitem__("e", o))
    get_anatomy(pruned).blocks(pruned)[kept].register_forward_hook(lambda m, a, o: seen.__setitem__("l", o))
    total, norm = 0.0, 0.0
    for batch in _batches(family):
        _output(model, family, batch["input_ids"])
        _output(pruned, family, batch["input_ids"])
        total += float(((seen["l"] - seen["e"]) ** 2).sum())
        norm += float((seen["e"] ** 2).sum())
    return total / norm


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "bert", "gemma2"])
def test_repair_never_increases_the_calibration_error_it_minimises(family):
    model = build_tiny(family)
    drop = (2, 3)
    plain = remove_blocks(model, drop)
    repaired = remove_blocks(model, drop)
    report = repair_cut(model, repaired, drop, _batches(family), method="linear", progress=False)
    before, after = (
        _junction_error(model, plain, family, 1, 3),
        _junction_error(model, repaired, family, 1, 3),
    )
    assert after <= before
    span = report.spans[0]
    assert span.residual_after <= span.residual_before
    assert span.residual_before == pytest.approx(before, rel=1e-3)
    assert span.residual_after == pytest.approx(after, rel=1e-3)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_repair_statistics_do_not_grow_with_the_number_of_tokens(family):
    model = build_tiny(family)
    anatomy = get_anatomy(model)
    method = get_repair("linear")
    sites, sums = method.sites(anatomy.mlp, 1, 3), method.sums(anatomy.mlp, False)
    small = collect_site_sums(model, _batches(family, 2), sites, sums, anatomy=anatomy, progress=False)
    large = collect_site_sums(model, _batches(family, 8, 24), sites, sums, anatomy=anatomy, progress=False)
    assert large.num_tokens > 5 * small.num_tokens
    assert {k: v.shape for k, v in small.sums.items()} == {k: v.shape for k, v in large.sums.items()}
    width = model.config.hidden_size
    bound = (width + 1) * 2 * width + 3 if anatomy.mlp.residual == "pre_norm" else 6 * width + 1
    assert sum(v.numel() for v in large.sums.values()) == bound


def test_one_pass_and_sequential_agree_on_a_single_span():
    model = build_tiny("llama")
    outputs = []
    for order in ("sequential", "one-pass"):
        pruned = remove_blocks(model, (2, 3))
        repair_cut(model, pruned, (2, 3), _batches("llama"), method="linear", order=order, progress=False)
        outputs.append(_output(pruned, "llama"))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_sequential_fits_the_second_span_on_the_repaired_first():
    model = build_tiny("llama")
    reports = {}
    for order in ("sequential", "one-pass"):
        pruned = remove_blocks(model, DROP)
        reports[order] = repair_cut(model, pruned, DROP, _batches("llama"), order=order, progress=False)
    first = [r.spans[0].residual_after for r in reports.values()]
    second = [r.spans[1].residual_before for r in reports.values()]
    assert first[0] == pytest.approx(first[1])  # the first span sees the same model either way
    assert second[0] != pytest.approx(second[1])  # the second sees the cut and repaired first span


def test_cut_at_block_zero_is_skipped_with_a_warning_by_linear_when_tied_and_repaired_by_scale():
    model = build_tiny("llama")
    model.lm_head.weight = model.get_input_embeddings().weight  # tied: a fold would change the head
    drop = (0, 1)
    pruned = remove_blocks(model, drop)
    plain = _output(pruned, "llama")
    report = repair_cut(model, pruned, drop, _batches("llama"), method="linear", progress=False)
    assert report.spans[0].skipped and report.warnings and "tied" in report.warnings[0]
    torch.testing.assert_close(_output(pruned, "llama"), plain)
    # nothing was fitted, so the method applied is none; the one asked for is kept beside it
    assert (report.method, report.method_requested, report.applied) == ("none", "linear", False)
    report = repair_cut(model, pruned, drop, _batches("llama"), method="scale", progress=False)
    assert report.spans[0].skipped is None and report.spans[0].kept_block is None
    assert (report.method, report.method_requested, report.applied) == ("scale", "scale", True)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_linear_repair_of_a_cut_at_block_zero_folds_exactly_into_untied_embeddings(family):
    # Block 0 planted as an exact linear map of its input: cutting it and folding the fitted map into the
    # (untied) token embeddings gives the uncut model's logits.
    torch.manual_seed(0)
    model = build_tiny(family)
    blocks = get_anatomy(model).blocks(model)
    width = model.config.hidden_size
    a = torch.eye(width) + 0.2 * torch.randn(width, width) / width**0.5
    blocks[0] = Planted(lambda h: h @ a)
    ids = sample_input_ids(family)
    expected = _output(model, family, ids)
    pruned = remove_blocks(model, [0])
    report = repair_cut(model, pruned, [0], _batches(family), method="linear", ridge=1e-9, progress=False)
    span = report.spans[0]
    assert span.skipped is None and "input embeddings" in span.map and span.residual_after < 1e-6
    torch.testing.assert_close(_output(pruned, family, ids), expected, rtol=1e-3, atol=1e-3)
    assert model.get_input_embeddings().weight is not pruned.get_input_embeddings().weight


def test_a_cut_at_block_zero_with_position_embeddings_is_a_plain_cut_with_the_reason():
    model = build_tiny("gpt2")
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie
    pruned = remove_blocks(model, [0])
    report = repair_cut(model, pruned, [0], _batches("gpt2"), method="linear", progress=False)
    assert report.spans[0].skipped and "not a multiple of the token embeddings" in report.warnings[0]


def test_post_norm_cut_at_block_zero_is_a_plain_cut_with_a_warning_under_scale():
    # A post-norm encoder folds alpha into the output LayerNorm of the block before the cut; at block 0
    # there is none, so the span is skipped (it used to raise from deep inside the fold).
    model = build_tiny("bert")
    drop = (0,)
    pruned = remove_blocks(model, drop)
    plain = _output(pruned, "bert")
    report = repair_cut(model, pruned, drop, _batches("bert"), method="scale", progress=False)
    assert report.spans[0].skipped and "keep block 0" in report.warnings[0]
    assert "--repair scale" not in report.warnings[0]
    torch.testing.assert_close(_output(pruned, "bert"), plain)


def test_none_and_unknown_methods():
    model = build_tiny("llama")
    pruned = remove_blocks(model, (2,))
    assert repair_cut(model, pruned, (2,), _batches("llama"), method="none").spans == []
    with pytest.raises(RepairError, match="linear"):
        repair_cut(model, pruned, (2,), _batches("llama"), method="lstsq")
    assert sorted(REPAIRS.names()) == ["linear", "none", "scale"]


def test_unknown_residual_placement_is_refused_with_the_fix():
    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    from dataclasses import replace

    unknown = replace(anatomy, mlp=replace(anatomy.mlp, residual=None))
    pruned = remove_blocks(model, (2,))
    with pytest.raises(RepairError, match="family file"):
        repair_cut(model, pruned, (2,), _batches("llama"), anatomy=unknown, progress=False)


def test_fit_spans_scores_many_candidates_in_one_pass():
    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    tasks = [SpanTask(str(s), s - 1, s + 1) for s in (1, 2, 3)]
    fits, tokens = fit_spans(model, anatomy, _batches("llama"), tasks, get_repair("linear"))
    assert set(fits) == {"1", "2", "3"} and tokens == 6 * 4 * 16
    assert all(f.residual_after <= f.residual_before for f in fits.values())


def test_contiguous_spans():
    assert contiguous_spans([5, 1, 2, 9, 8]) == [(1, 2), (5, 5), (8, 9)]
    assert contiguous_spans([]) == []


def test_span_repair_picks_the_closest_span_with_the_lowest_repaired_error():
    from prune.collect import collect_stats
    from prune.plan import SearchContext, plan_pruning

    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    batches = _batches("llama")
    scores = collect_stats(model, batches, anatomy=anatomy, metrics=("angular",), progress=False).scores()
    search = SearchContext(model=model, batches=batches, kind="causal-lm", anatomy=anatomy)
    plan = plan_pruning(scores, anatomy.num_blocks, "drop-2", "span-repair", search=search)
    candidates = plan.details["candidates"]
    assert all(c["start"] >= 1 for c in candidates)  # nothing before block 0 could hold the map
    best = min(candidates, key=lambda c: (c["error_repaired"], c["start"]))
    closest = candidates[0]  # ordered by angular distance
    if best["error_repaired"] > 0.95 * closest["error_repaired"]:
        best = closest  # a near tie keeps the closest span
    assert plan.drop == (best["start"], best["start"] + 1)
    assert all(c["error_repaired"] <= c["error_plain"] for c in candidates)
    assert "after linear repair" in plan.reason


@pytest.mark.parametrize(("lower_by", "moves"), [(0.02, False), (0.2, True)])
def test_span_repair_leaves_the_closest_span_only_for_a_clearly_better_repair(monkeypatch, lower_by, moves):
    # A near tie of the repaired error on calibration tokens says nothing about held-out text, so only a
    # clearly better repair (by more than the 5% margin) moves the cut away from the closest span.
    import prune.repair
    from prune.collect import collect_stats
    from prune.plan import SearchContext, plan_pruning

    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    batches = _batches("llama")
    scores = collect_stats(model, batches, anatomy=anatomy, metrics=("angular",), progress=False).scores()
    search = SearchContext(model=model, batches=batches, kind="causal-lm", anatomy=anatomy)
    real = prune.repair.fit_spans
    picked: dict[str, int] = {}

    def rigged(*args, **kwargs):
        fits, tokens = real(*args, **kwargs)
        keys = list(fits)  # in order of angular distance; make the second one repair better
        picked["closest"], picked["other"] = int(keys[0]), int(keys[1])
        base = fits[keys[0]].residual_after
        for key in keys[2:]:
            fits[key].residual_after = 2 * base  # the rest clearly worse
        fits[keys[1]].residual_after = base * (1 - lower_by)
        return fits, tokens

    monkeypatch.setattr(prune.repair, "fit_spans", rigged)
    plan = plan_pruning(scores, anatomy.num_blocks, "drop-2", "span-repair", search=search)
    expected = picked["other"] if moves else picked["closest"]
    assert plan.drop == (expected, expected + 1)


def test_span_repair_2_places_two_separated_spans_each_with_its_own_map():
    from prune.collect import collect_stats
    from prune.plan import SearchContext, plan_pruning

    model = build_tiny("llama")
    anatomy = get_anatomy(model)
    batches = _batches("llama")
    scores = collect_stats(model, batches, anatomy=anatomy, metrics=("angular",), progress=False).scores()
    search = SearchContext(model=model, batches=batches, kind="causal-lm", anatomy=anatomy)
    plan = plan_pruning(scores, anatomy.num_blocks, "drop-2", "span-repair-2", search=search)
    (a, b), (c, d) = plan.details["spans"]
    assert a >= 1 and c > b + 1 and d < anatomy.num_blocks - 1  # a kept block before each span
    errors = {(x["start"], x["length"]): x["error_repaired"] for x in plan.details["candidates"]}
    placements = [
        errors[p] + errors[q] for p in errors for q in errors if q[0] > p[0] + p[1] and p[1] + q[1] == 2
    ]
    assert plan.details["summed_error_repaired"] == pytest.approx(min(placements), abs=1e-6)
