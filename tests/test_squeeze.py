"""Width squeezing of the FFNs: exactness on planted dependencies, stock checkpoints for every family,
the compensation never hurting, budgets, groups, bad inputs and the CLI/pipeline wiring."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
import torch

from prune.anatomy import get_anatomy
from prune.errors import AnatomyError, PruneError, TargetError
from prune.fold import weight_matrix
from prune.width import FFN_METHODS, parse_ffn_keep, squeeze_model
from prune.width.stats import block_groups, gram_bytes
from tests.tiny_models import TINY_FAMILIES, auto_class, build_tiny, is_decoder, sample_input_ids

COMPENSATED = ("squeeze", "squeeze-forward", "textbook")


def _batches(family: str, rows: int = 16, length: int = 16) -> list[dict[str, torch.Tensor]]:
    ids = sample_input_ids(family, length=length, batch=rows, seed=1)
    return [
        {"input_ids": ids[i : i + 4], "attention_mask": torch.ones_like(ids[i : i + 4])}
        for i in range(0, rows, 4)
    ]


def _output(model, family: str, ids: torch.Tensor | None = None) -> torch.Tensor:
    ids = sample_input_ids(family) if ids is None else ids
    kwargs = {"use_cache": False} if is_decoder(family) else {}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _plant_duplicates(model) -> int:
    """Make the last quarter of every FFN's neurons copies of the first quarter (scaled through the up
    projection of gated MLPs): exact linear dependencies. Returns d_ff."""
    anatomy = get_anatomy(model)
    mlp = anatomy.require_mlp("test")
    size = 0
    with torch.no_grad():
        for block in anatomy.blocks(model):
            parts = mlp.parts(block)
            size = mlp.intermediate_size(block)
            quarter = size // 4
            for projection in parts.inputs:
                weight = weight_matrix(projection)
                bias = getattr(projection, "bias", None)
                for half in range(2 if projection is parts.gate_up else 1):
                    is_up = projection is parts.up or (projection is parts.gate_up and half == 1)
                    scale = 2.0 if mlp.gated and is_up else 1.0
                    start = half * size
                    weight[start + size - quarter : start + size] = weight[start : start + quarter] * scale
                    if bias is not None:
                        bias[start + size - quarter : start + size] = bias[start : start + quarter] * scale
    return size


@pytest.mark.parametrize("method", COMPENSATED)
@pytest.mark.parametrize("family", ["llama", "bert", "gpt2", "phi3"])
def test_squeezing_planted_dependencies_away_is_exact(family, method):
    model = build_tiny(family)
    size = _plant_duplicates(model)
    reference = _output(model, family)
    result = squeeze_model(model, _batches(family), keep=0.75, method=method, ridge=1e-10, progress=False)
    squeezed = result.model
    anatomy = get_anatomy(squeezed)
    assert all(anatomy.mlp.intermediate_size(b) == size * 3 // 4 for b in anatomy.blocks(squeezed))
    assert all(b.error < 1e-6 for b in result.report.blocks)
    torch.testing.assert_close(_output(squeezed, family), reference, atol=1e-4, rtol=1e-4)
    # the original is untouched
    assert anatomy.mlp.intermediate_size(get_anatomy(model).blocks(model)[0]) == size


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_squeezed_model_is_a_stock_checkpoint(family, tmp_path):
    model = build_tiny(family)
    result = squeeze_model(model, _batches(family, rows=8), keep=0.75, progress=False)
    squeezed = result.model
    squeezed.save_pretrained(tmp_path)
    anatomy = get_anatomy(squeezed)
    key = anatomy.mlp.intermediate_size_key
    config = json.loads((tmp_path / "config.json").read_text())
    config = config.get("text_config", config) if key not in config else config
    assert config[key] == result.report.kept
    reloaded = auto_class(family).from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = sample_input_ids(family)
    torch.testing.assert_close(
        _output(reloaded, family, ids), _output(squeezed, family, ids), atol=1e-5, rtol=1e-5
    )
    if is_decoder(family):
        prompt = sample_input_ids(family, length=5, batch=1)
        settings = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
        mask = torch.ones_like(prompt)
        with torch.no_grad():
            cached = squeezed.generate(prompt, attention_mask=mask, use_cache=True, **settings)
            uncached = squeezed.generate(prompt, attention_mask=mask, use_cache=False, **settings)
        assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_compensation_never_increases_the_reconstruction_error(family):
    model = build_tiny(family)
    batches = _batches(family)
    squeezed = squeeze_model(model, batches, keep=0.6, method="squeeze", progress=False).report
    bare = squeeze_model(model, batches, keep=0.6, method="pivot", progress=False).report
    for with_fold, without in zip(squeezed.blocks, bare.blocks, strict=True):
        assert with_fold.error <= with_fold.error_uncompensated + 1e-12
        # pivot is the same selection without the fold
        assert with_fold.error_uncompensated == pytest.approx(without.error)
    textbook = squeeze_model(model, batches, keep=0.6, method="textbook", progress=False).report
    assert all(b.error <= b.error_uncompensated + 1e-12 for b in textbook.blocks)


def test_output_aware_selection_beats_activation_pivoting_on_output_error():
    model = build_tiny("llama")
    batches = _batches("llama")
    squeezed = squeeze_model(model, batches, keep=0.5, method="squeeze", progress=False).report
    textbook = squeeze_model(model, batches, keep=0.5, method="textbook", progress=False).report
    assert sum(b.error for b in squeezed.blocks) < sum(b.error for b in textbook.blocks)


@pytest.mark.parametrize("method", sorted(set(FFN_METHODS) - set(COMPENSATED)))
def test_every_baseline_runs_and_keeps_the_count(method):
    model = build_tiny("bert")
    result = squeeze_model(model, _batches("bert", rows=8), keep=0.5, method=method, progress=False)
    assert result.model.config.intermediate_size == 32
    assert len(result.report.blocks) == 6
    assert torch.isfinite(_output(result.model, "bert")).all()


def test_energy_budget_keeps_only_what_spans_the_planted_neurons():
    model = build_tiny("llama")
    size = _plant_duplicates(model)
    result = squeeze_model(model, _batches("llama"), keep="auto:0.999999", ridge=1e-10, progress=False)
    assert result.report.kept <= size * 3 // 4
    assert all(b.neurons_for_energy["0.999"] <= size * 3 // 4 for b in result.report.blocks)


def test_groups_run_one_pass_each_and_stay_exact():
    model = build_tiny("llama")
    _plant_duplicates(model)
    reference = _output(model, "llama")
    result = squeeze_model(model, _batches("llama"), keep=0.75, block_group=2, ridge=1e-10, progress=False)
    assert result.report.passes == 3
    torch.testing.assert_close(_output(result.model, "llama"), reference, atol=1e-4, rtol=1e-4)


def test_block_groups_respect_the_memory_bound():
    assert gram_bytes(1536) == 1536 * 1536 * 8
    assert block_groups(30, 1536, None) == [list(range(30))]
    # Llama-7B width: two 969 MB Grams fit the default 2 GiB
    assert [len(g) for g in block_groups(32, 11008, None)] == [2] * 16
    assert block_groups(5, 64, 2) == [[0, 1], [2, 3], [4]]
    assert block_groups(3, 64, None, max_bytes=1) == [[0], [1], [2]]


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, "0", "auto:1", "auto:0", "auto:x", "half", "auto:"])
def test_bad_keep_is_refused(bad):
    with pytest.raises(TargetError, match="--ffn-keep"):
        parse_ffn_keep(bad)


def test_keep_one_and_auto_parse():
    assert parse_ffn_keep(1).fraction == 1.0
    assert parse_ffn_keep("0.75").fraction == 0.75
    assert parse_ffn_keep("auto:0.99").energy == 0.99


def test_family_without_mlp_anatomy_is_refused():
    model = build_tiny("llama")
    anatomy = dataclasses.replace(get_anatomy(model), mlp=None)
    with pytest.raises(AnatomyError, match="width squeezing"):
        squeeze_model(model, _batches("llama"), keep=0.5, anatomy=anatomy, progress=False)


def test_unknown_method_is_refused():
    with pytest.raises(KeyError, match="squeeze"):
        squeeze_model(build_tiny("llama"), _batches("llama"), keep=0.5, method="nope", progress=False)


def test_option_choices_match_the_registry():
    from prune.options import FfnMethodName

    assert sorted(typing.get_args(FfnMethodName)) == FFN_METHODS.names()


def test_options_need_a_target_or_a_width():
    from prune.options import PruneOptions

    assert PruneOptions(model="m", ffn_keep=0.75).target is None
    with pytest.raises(ValueError, match="nothing to prune"):
        PruneOptions(model="m")
    with pytest.raises(ValueError, match="fraction of neurons"):
        PruneOptions(model="m", ffn_keep=2)


def test_squeeze_command_parses_the_shared_flags():
    from prune.cli.flags import options_from_args
    from prune.cli.main import build_parser

    parser = build_parser(["squeeze"])
    args = parser.parse_args(
        ["squeeze", "minilm-l6", "--ffn-keep", "auto:0.99", "--ffn-method", "wanda", "--calib-samples", "4"]
    )
    options = options_from_args(args)
    assert (options.ffn_keep, options.ffn_method, options.calib_samples, options.target) == (
        "auto:0.99",
        "wanda",
        4,
        None,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["squeeze", "minilm-l6"])  # --ffn-keep is required
    with pytest.raises(SystemExit):
        parser.parse_args(["squeeze", "minilm-l6", "--ffn-keep", "0.5", "--target", "4-layers"])
    prune_args = build_parser([]).parse_args(["prune", "minilm-l6"])
    with pytest.raises(PruneError, match="nothing to prune"):
        options_from_args(prune_args)
