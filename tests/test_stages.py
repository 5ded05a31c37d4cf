"""The run as stages: each usable alone, a saved run reproducible from its recipe, publishable as is."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from prune import stages
from prune.cli.main import main
from prune.options import PruneOptions
from prune.pipeline import run_pruning
from prune.plan import STRATEGIES, SelectRequest

FAST = {"calib_samples": 4, "seq_len": 16, "batch_size": 2, "eval_samples": 4}
FAST_FLAGS = ["--calib-samples", "4", "--seq-len", "16", "--batch-size", "2", "--eval-samples", "4"]


def _report(folder: Path) -> dict:
    return json.loads((folder / "prune_report.json").read_text())


def test_saved_run_reproduces_from_its_recipe(tiny_llama_folder, word_text_file, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    flags = ["--target", "drop-2", "--strategy", "topk", "--calib", word_text_file, "--eval", word_text_file]
    assert main([tiny_llama_folder, *flags, *FAST_FLAGS, "--out", str(first), "--quiet"]) == 0
    recipe = first / "prune_recipe.yaml"
    values = yaml.safe_load(recipe.read_text())
    assert values["strategy"] == "topk" and values["seq_len"] == 16 and "out" not in values
    assert "started as: prune-llm" in recipe.read_text()
    report = _report(first)
    assert report["recipe"] == "prune_recipe.yaml"
    card = (first / "README.md").read_text()
    assert "prune-llm run prune_recipe.yaml" in card and report["command"] in card

    assert main(["run", str(recipe), "--out", str(second), "--quiet"]) == 0
    again = _report(second)
    assert again["plan"] == report["plan"]
    assert again["model"]["params_after"] == report["model"]["params_after"]
    assert yaml.safe_load((second / "prune_recipe.yaml").read_text()) == values


def test_a_shipped_base_recipe_run_records_the_strategy_auto_chose(
    tiny_llama_folder, word_text_file, tmp_path
):
    """The shipped recipes leave ``strategy`` to the default ``auto``; a run of one says what it used."""
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        f"include: _base\nmodel: {tiny_llama_folder}\ntarget: drop-1\ncalib: {word_text_file}\n"
        f"eval: {word_text_file}\ncalib_samples: 4\nseq_len: 16\nbatch_size: 2\neval_samples: 4\n"
    )
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    report = _report(out)
    plan = report["plan"]
    assert plan["strategy"] == "span-repair" and plan["details"]["strategy_requested"] == "auto"
    assert yaml.safe_load((out / "prune_recipe.yaml").read_text())["strategy"] == "span-repair"
    assert "`span-repair`" in (out / "README.md").read_text()  # the card's strategy


def test_python_run_records_a_command_and_writes_its_card(tiny_llama_folder, word_text_file, tmp_path):
    out = tmp_path / "out"
    options = PruneOptions(
        model=tiny_llama_folder, target="drop-1", calib=word_text_file, eval="none", out=str(out), **FAST
    )
    result = run_pruning(options, progress=False)
    assert result.report["command"].startswith(f"prune-llm {tiny_llama_folder} --target drop-1")
    assert "--seq-len 16" in result.report["command"]
    assert (out / "README.md").is_file() and (out / "prune_recipe.yaml").is_file()


def test_stages_run_alone_give_the_run_s_plan(tiny_llama_folder, word_text_file):
    options = PruneOptions(
        model=tiny_llama_folder, target="drop-1", calib=word_text_file, eval="none", **FAST
    )
    ctx = stages.RunContext(options, progress=False)
    for stage in (stages.check, stages.load, stages.calibrate, stages.collect, stages.plan):
        ctx = stage(ctx)
    assert sorted(ctx.scores) == ["angular", "bi", "cka", "cka_io"]
    assert ctx.plan.drop == run_pruning(options, progress=False).plan.drop
    cut = stages.cut(ctx).pruned
    assert cut.config.num_hidden_layers == 3 and ctx.original.config.num_hidden_layers == 4
    # another strategy on the same statistics, without collecting again
    assert stages.plan(ctx, strategy="last").plan.drop == (2,)


def test_a_strategy_answers_one_request_and_says_whether_it_searches():
    request = SelectRequest({"bi": torch.tensor([0.3, 0.1, 0.2, 0.9])}, 4, 2, metric="bi")
    assert STRATEGIES.get("topk").select(request).drop == (1, 2)
    assert STRATEGIES.get("iterative").needs_search and not STRATEGIES.get("topk").needs_search
