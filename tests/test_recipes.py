"""Recipes: shipped files validate, includes merge in order, bad recipes fail with clear messages,
and the `run` / `recipes` commands and the generated flags agree with PruneOptions."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prune.cli import recipes_cmd, run_cmd
from prune.cli.flags import add_option_flags, field_flag, options_from_args, overrides_from_args
from prune.errors import PruneError, RecipeError
from prune.options import PruneOptions
from prune.recipes import (
    RECIPE_KEYS,
    check_target_format,
    find_recipe,
    list_recipes,
    load_recipe,
    read_recipe,
    recipes_dir,
    validate_recipe,
)

SHIPPED = [
    "bert-base",
    "llama-3-8b",
    "minilm-l6",
    "mistral-7b",
    "mpnet-base",
    "qwen2.5-7b",
    "smollm2-135m",
    "smollm2-135m-budget",
]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def cli(argv: list[str]) -> int:
    """Parse argv with the real registered subcommands and run the command, like `prune-llm`."""
    parser = argparse.ArgumentParser(prog="prune-llm")
    subparsers = parser.add_subparsers(dest="command")
    recipes_cmd.register(subparsers)
    run_cmd.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


# --- shipped recipes ---------------------------------------------------------------------------


def test_every_shipped_recipe_is_listed_and_validates():
    infos = {info.name: info for info in list_recipes()}
    assert sorted(infos) == SHIPPED
    for name, info in infos.items():
        options = validate_recipe(info.path)
        assert isinstance(options, PruneOptions)
        assert info.description, f"{name} has no description"
        # every shipped recipe cites where its settings come from
        assert "arXiv" in info.path.read_text() or "et al." in info.path.read_text(), name


@pytest.mark.parametrize(
    ("name", "model", "target", "strategy"),
    [
        ("bert-base", "bert-base", "8-layers", "auto"),
        ("mpnet-base", "mpnet-base", "8-layers", "auto"),
        ("minilm-l6", "minilm-l6", "4-layers", "auto"),
        ("smollm2-135m", "smollm2-135m", "24-layers", "auto"),
        ("smollm2-135m-budget", "smollm2-135m", None, "auto"),
        ("llama-3-8b", "llama-3-8b", "drop-8", "auto"),
        ("mistral-7b", "mistral-7b", "drop-8", "topk"),
        ("qwen2.5-7b", "qwen2.5-7b", "drop-7", "span"),
    ],
)
def test_shipped_recipe_settings(name, model, target, strategy):
    options = load_recipe(name)
    assert (options.model, options.target, options.strategy) == (model, target, strategy)


def test_shipped_recipes_use_the_default_strategy_unless_they_say_why():
    """`auto` comes from the options' default, not from a recipe; a recipe that sets another says why."""
    from prune.options import PlanOptions

    assert PlanOptions.model_fields["strategy"].default == "auto"
    assert "strategy" not in yaml.safe_load((recipes_dir() / "_base.yaml").read_text())
    for info in list_recipes():
        own = yaml.safe_load(info.path.read_text())
        if "strategy" in own:  # its comments name the default and why not
            text = info.path.read_text()
            assert "not the default `auto`" in text and "on purpose" in text, info.name
    deliberate = {info.name for info in list_recipes() if "strategy" in yaml.safe_load(info.path.read_text())}
    assert deliberate == {"mistral-7b", "qwen2.5-7b"}  # ShortGPT's topk, ReplaceMe's span


def test_shipped_recipes_share_a_base_through_include():
    llama = read_recipe("llama-3-8b")
    assert [p.name for p in llama.files] == ["_base.yaml", "_llm.yaml", "llama-3-8b.yaml"]
    assert llama.options.seq_len == 2048 and llama.options.dtype == "bfloat16"
    assert read_recipe("mistral-7b").options.metric == "bi"
    minilm = read_recipe("minilm-l6")
    assert [p.name for p in minilm.files] == ["_base.yaml", "_encoder.yaml", "minilm-l6.yaml"]
    assert minilm.options.seq_len == 128


def test_partial_recipes_are_not_listed_and_do_not_validate_alone():
    assert not any(info.name.startswith("_") for info in list_recipes())
    with pytest.raises(RecipeError, match="missing required key 'model'"):
        validate_recipe(recipes_dir() / "_llm.yaml")


def test_find_recipe_by_name_with_or_without_suffix_and_by_path(tmp_path):
    assert find_recipe("minilm-l6") == find_recipe("minilm-l6.yaml")
    own = write(tmp_path, "mine.yaml", "model: x\ntarget: 2-layers\n")
    assert find_recipe(own) == own
    with pytest.raises(RecipeError, match=r"not found.*minilm-l6"):
        find_recipe("no-such-recipe")


# --- includes -----------------------------------------------------------------------------------


def test_include_order_later_overrides_earlier_and_own_keys_win(tmp_path):
    write(tmp_path, "a.yaml", "seq_len: 64\nbatch_size: 2\ncalib_samples: 10\n")
    write(tmp_path, "b.yaml", "seq_len: 128\nbatch_size: 4\n")
    path = write(tmp_path, "r.yaml", "include: [a.yaml, b.yaml]\nmodel: m\ntarget: drop-1\nbatch_size: 16\n")
    options = load_recipe(path)
    assert options.seq_len == 128  # b after a
    assert options.batch_size == 16  # own key after includes
    assert options.calib_samples == 10  # only a sets it


def test_include_single_name_nested_and_shipped(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "base.yaml", "include: _encoder\nseed: 7\n")  # shipped partial by name
    path = write(tmp_path, "r.yaml", "include: sub/base\nmodel: m\ntarget: 25%\n")  # suffix optional
    recipe = read_recipe(path)
    assert recipe.options.seed == 7 and recipe.options.seq_len == 128 and recipe.options.strategy == "auto"
    assert recipe.description is None  # descriptions are not inherited


def test_overrides_win_over_recipe_and_are_validated(tmp_path):
    options = load_recipe("minilm-l6", {"target": "drop-1", "allow_last": True})
    assert options.target == "drop-1" and options.allow_last is True
    with pytest.raises(RecipeError, match="^--targett: unknown key 'targett'"):
        load_recipe("minilm-l6", {"targett": "x"})
    with pytest.raises(RecipeError, match="^--seq-len: seq_len: "):
        load_recipe("minilm-l6", {"seq_len": 1})


def test_missing_include_names_the_file(tmp_path):
    path = write(tmp_path, "r.yaml", "include: nowhere.yaml\nmodel: m\ntarget: drop-1\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "'nowhere.yaml' not found" in message and "\n" not in message


def test_include_cycle_is_reported_with_the_chain(tmp_path):
    write(tmp_path, "a.yaml", "include: b.yaml\nseed: 1\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    path = write(tmp_path, "r.yaml", "include: a.yaml\nmodel: m\ntarget: drop-1\n")
    with pytest.raises(RecipeError, match=r"include cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_recipe(path)
    self_path = write(tmp_path, "self.yaml", "include: self.yaml\n")
    with pytest.raises(RecipeError, match="include cycle"):
        load_recipe(self_path)


# --- bad recipes ----------------------------------------------------------------------------------


def test_unknown_key_is_named_with_the_valid_keys(tmp_path):
    path = write(tmp_path, "r.yaml", "model: m\ntarget: drop-1\nstrategyy: span\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "unknown key 'strategyy'" in message and str(path) in message
    for key in [*PruneOptions.model_fields, *RECIPE_KEYS]:
        assert key in message


def test_unknown_key_in_an_include_names_the_included_file(tmp_path):
    base = write(tmp_path, "base.yaml", "seqlen: 5\n")
    path = write(tmp_path, "r.yaml", "include: base.yaml\nmodel: m\ntarget: drop-1\n")
    with pytest.raises(RecipeError, match=f"{base}: unknown key 'seqlen'"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("seq_len: many", r"seq_len: .*integer.*'many'"),
        ("seq_len: 4", r"seq_len: .*greater than or equal to 8"),
        ("dtype: float8", r"dtype: .*'float8'"),
        ("allow_last: maybe", r"allow_last: .*bool"),
    ],
)
def test_bad_value_names_the_field(tmp_path, line, expected):
    path = write(tmp_path, "r.yaml", f"model: m\ntarget: drop-1\n{line}\n")
    with pytest.raises(RecipeError, match=expected):
        load_recipe(path)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("8", "ambiguous; write '8-layers'"),
        ("eight layers", "cannot read target"),
        ("150%", "out of range"),
        ("keep-4", "cannot read target"),
    ],
)
def test_bad_target_is_rejected(tmp_path, target, expected):
    path = write(tmp_path, "r.yaml", f"model: m\ntarget: '{target}'\n")
    with pytest.raises(RecipeError, match=expected):
        load_recipe(path)


def test_target_forms_accepted():
    for target in ["8-layers", "8-layer", "4-blocks", "drop-4", "25%", "12.5%", " DROP-2 "]:
        check_target_format(target)
    with pytest.raises(RecipeError, match="ambiguous"):
        check_target_format(8)  # an unquoted YAML number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: [unclosed\n", r"invalid YAML at line \d+"),
        ("- a\n- b\n", "a recipe is a mapping"),
        ("include: [3]\nmodel: m\ntarget: drop-1\n", "include entries are recipe paths or names"),
        ("include: {a: 1}\nmodel: m\ntarget: drop-1\n", "'include' must be a recipe name or a list"),
        ("description: [1]\nmodel: m\ntarget: drop-1\n", "'description' must be text"),
        ("target: drop-1\n", "missing required key 'model'"),
    ],
)
def test_malformed_files(tmp_path, text, expected):
    with pytest.raises(RecipeError, match=expected):
        load_recipe(write(tmp_path, "r.yaml", text))


# --- generated flags ------------------------------------------------------------------------------


def test_a_flag_for_every_options_field():
    parser = argparse.ArgumentParser()
    add_option_flags(parser, overrides_only=True)
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for name, field in PruneOptions.model_fields.items():
        assert field_flag(name) in flags
        action = next(a for a in parser._actions if field_flag(name) in a.option_strings)
        assert field.description.split(".")[0].replace("%", "%%") in action.help
    assert overrides_from_args(parser.parse_args([])) == {}  # nothing typed, nothing overridden


def test_flags_parse_types_bounds_and_choices(capsys):
    parser = argparse.ArgumentParser()
    add_option_flags(parser, overrides_only=True)
    args = parser.parse_args(
        ["--calib-samples", "32", "--trust-remote-code", "--dtype", "bfloat16", "--metric", "bi"]
    )
    assert overrides_from_args(args) == {
        "calib_samples": 32,
        "trust_remote_code": True,
        "dtype": "bfloat16",
        "metric": "bi",
    }
    for bad in (["--calib-samples", "0"], ["--seq-len", "x"], ["--dtype", "float8"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "--calib-samples: must be >= 1" in capsys.readouterr().err


def test_full_mode_has_model_positional_and_needs_a_target_or_a_width():
    parser = argparse.ArgumentParser()
    add_option_flags(parser, overrides_only=False)
    options = options_from_args(parser.parse_args(["minilm-l6", "--target", "4-layers", "--seq-len", "64"]))
    assert options == PruneOptions(model="minilm-l6", target="4-layers", seq_len=64)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # MODEL is required
    # --target or --ffn-keep (width only): one of them must be given
    with pytest.raises(PruneError, match="nothing to prune"):
        options_from_args(parser.parse_args(["minilm-l6"]))
    assert options_from_args(parser.parse_args(["minilm-l6", "--ffn-keep", "0.5"])).target is None


def test_flags_module_does_not_import_torch():
    code = (
        "import sys, prune.cli.flags, prune.cli.run_cmd, prune.cli.recipes_cmd; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- commands -------------------------------------------------------------------------------------


def test_recipes_ls_prints_a_table(capsys):
    assert cli(["recipes", "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "MODEL", "TARGET", "STRATEGY", "DESCRIPTION"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == SHIPPED
    assert rows["mistral-7b"][1:4] == ["mistral-7b", "drop-8", "topk"]


def test_recipes_ls_json(capsys):
    assert cli(["recipes", "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["target"] for r in rows}["smollm2-135m"] == "24-layers"


def test_recipes_validate_ok_and_errors(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", "include: _encoder\nmodel: m\ntarget: 2-layers\n")
    bad = write(tmp_path, "bad.yaml", "model: m\ntarget: 2-layers\nwat: 1\n")
    assert cli(["recipes", "validate", str(good), "minilm-l6"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{good}: OK") and out[1].startswith("minilm-l6: OK")
    assert cli(["recipes", "validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{good}: OK")
    assert out[1].startswith(f"{bad}: ERROR") and "unknown key 'wat'" in out[1]


def test_run_show_applies_flag_overrides(capsys):
    assert cli(["run", "minilm-l6", "--show", "--target", "drop-1", "--seq-len", "64", "--allow-last"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (
        shown
        == load_recipe("minilm-l6", {"target": "drop-1", "seq_len": 64, "allow_last": True}).model_dump()
    )
    assert shown["calib_samples"] == 256  # untouched recipe value


def test_run_bad_recipe_raises_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        cli(["run", str(tmp_path / "missing.yaml"), "--show"])


def test_run_calls_the_pipeline_with_the_resolved_options(monkeypatch, capsys):
    calls = {}

    class Result:
        report = {"model": {"spec": "minilm-l6"}}

    def fake_run_pruning(options, **kwargs):
        calls["options"], calls["kwargs"] = options, kwargs
        return Result()

    import types

    # the pipeline is the lead's module; the command must hand it exactly the resolved options
    monkeypatch.setitem(sys.modules, "prune.pipeline", types.SimpleNamespace(run_pruning=fake_run_pruning))
    assert cli(["run", "minilm-l6", "--json", "--quiet", "--eval", "none"]) == 0
    # without --out the run saves to a default folder (said on stderr) rather than nowhere
    assert calls["options"] == load_recipe("minilm-l6", {"eval": "none", "out": "pruned/minilm-l6-4-layers"})
    assert calls["kwargs"]["progress"] is False
    assert calls["kwargs"]["command"] == "prune-llm run minilm-l6 --eval none"  # typed argv unknown here
    captured = capsys.readouterr()
    assert json.loads(captured.out) == Result.report
    assert "saved to pruned/minilm-l6-4-layers" in captured.err


def test_cli_smoke_subprocess():
    """One real process: the installed entry point's modules run `recipes ls` end to end."""
    code = (
        "import argparse, sys; from prune.cli import recipes_cmd; p = argparse.ArgumentParser(); "
        "s = p.add_subparsers(); recipes_cmd.register(s); a = p.parse_args(['recipes', 'ls']); sys.exit(a.func(a))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "llama-3-8b" in out.stdout and "qwen2.5-7b" in out.stdout


# --- packaging ------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_shipped_recipes_are_package_data_of_prune():
    """recipes/ reaches the package as prune/_recipes (a link in the checkout, real files when installed)."""
    import prune

    folder = recipes_dir()
    assert folder.parent == Path(prune.__file__).resolve().parent or folder.parent.name == "prune"
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(
        p.name for p in (REPO / "recipes").glob("*.yaml")
    )


@pytest.mark.slow
def test_non_editable_install_ships_the_recipes(tmp_path):
    """A real `pip install --no-deps --target` of a copy of the checkout: the YAML files land and are found."""
    import shutil

    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*cache", "out*"
        ),
    )
    target = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "--target",
        str(target),
    ]
    subprocess.run([*pip, str(source)], check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in (target / "prune" / "_recipes").glob("*.yaml")) == sorted(
        p.name for p in (REPO / "recipes").glob("*.yaml")
    )
    code = "import prune.recipes as r; print(r.recipes_dir()); print(*[i.name for i in r.list_recipes()])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    folder, names = out.stdout.splitlines()
    assert Path(folder) == target / "prune" / "_recipes"
    assert sorted(names.split()) == SHIPPED


def test_shipped_recipes_name_real_strategies_metrics_and_aliases():
    """The values are checked against the planner's registry and the alias table, not only by type."""
    from prune.loading import list_aliases
    from prune.plan import STRATEGIES, required_metrics
    from prune.plan.planner import AUTO

    aliases = list_aliases()
    for info in list_recipes():
        options = load_recipe(info.path)
        assert options.strategy in (*STRATEGIES.names(), AUTO), info.name
        assert required_metrics(options.strategy, options.metric), info.name
        assert options.model in aliases, info.name


@pytest.mark.parametrize(
    "target",
    [
        "8-layers",
        "8-layer",
        "3-blocks",
        "drop-4",
        "DROP-4",
        "25%",
        "12.5 %",
        ".5%",
        "8",
        "eight",
        "0%",
        "100%",
        "x%",
        "-",
    ],
)
def test_target_format_agrees_with_the_planner(target):
    """The recipe check accepts exactly the forms prune.plan.targets parses (on a model big enough)."""
    from prune.errors import TargetError
    from prune.plan.targets import parse_target

    try:
        parse_target(target, 1000)
        planner_ok = True
    except TargetError:
        planner_ok = False
    try:
        check_target_format(target)
        recipe_ok = True
    except RecipeError:
        recipe_ok = False
    assert recipe_ok == planner_ok


def test_unknown_strategy_or_metric_fails_validation_naming_the_file(tmp_path, capsys):
    base = write(tmp_path, "base.yaml", "strategy: spna\n")
    path = write(tmp_path, "r.yaml", "include: base.yaml\nmodel: m\ntarget: drop-1\n")
    load_recipe(path)  # listing and loading do not import the planner
    with pytest.raises(RecipeError, match=rf"{base}: unknown strategy 'spna'; choose one of: .*span"):
        validate_recipe(path)
    bad_metric = write(tmp_path, "m.yaml", "model: m\ntarget: drop-1\nstrategy: span\nmetric: bi\n")
    with pytest.raises(
        RecipeError, match=r"m\.yaml: strategy 'span' cannot rank by 'bi'.*fix the value of 'metric'"
    ):
        validate_recipe(bad_metric)
    assert cli(["recipes", "validate", str(path)]) == 1
    assert "unknown strategy 'spna'" in capsys.readouterr().out
    with pytest.raises(RecipeError, match="^--strategy: unknown strategy .nope."):
        cli(["run", "minilm-l6", "--strategy", "nope", "--show"])
