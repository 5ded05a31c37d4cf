"""Bad and hostile input: no silent wrong result, no lost file, no wasted run (issue #14).

Each test would fail if its item came back. Tiny models saved to folders with a small word-level
tokenizer stand in for real checkpoints; everything runs offline in seconds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

import prune
from prune.cli.main import main
from prune.errors import DataError, ModelNotFoundError, NumericalError, OutputError, TargetError
from prune.options import PruneOptions
from tests.word_models import save_with_tokenizer, word_llama, word_tokenizer, write_word_text

ROOT = Path(__file__).resolve().parents[1]
FAST = {"calib_samples": 4, "seq_len": 16, "batch_size": 2, "eval_samples": 4}
FAST_FLAGS = ["--calib-samples", "4", "--seq-len", "16", "--batch-size", "2", "--eval-samples", "4"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    return write_word_text(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    return save_with_tokenizer(word_llama(), tmp_path_factory.mktemp("llama"))


@pytest.fixture
def no_weights_load(monkeypatch):
    """Make any weights load fail loudly: what is checked first must be checked without one."""
    import prune.loading

    def forbidden(*args, **kwargs):
        raise AssertionError("the weights were loaded before the check")

    monkeypatch.setattr(prune.loading, "load_model", forbidden)


def _options(model: str, text: str, tmp_path: Path, **extra) -> PruneOptions:
    values = {"target": "drop-1", "calib": text, "eval": text, "out": str(tmp_path / "out"), **FAST, **extra}
    return PruneOptions(model=model, **values)


# -- silent wrong results -------------------------------------------------------------------------------


def test_folder_without_tokenizer_files_is_refused_and_nothing_saved(tmp_path, text_file):
    folder = save_with_tokenizer(word_llama(), tmp_path / "no-tokenizer", tokenizer=False)
    loaded = prune.load_model(folder, device="cpu", progress=False)
    assert loaded.tokenizer is None  # transformers' empty 5-token tokenizer is not used
    with pytest.raises(DataError, match="no usable tokenizer"):
        prune.run_pruning(_options(folder, text_file, tmp_path), progress=False)
    assert not (tmp_path / "out").exists()


def test_empty_tokenizer_is_detected_and_never_saved(tmp_path):
    from transformers import AutoTokenizer

    from prune.checkpoint import tokenizer_problem
    from prune.output import save_model

    folder = save_with_tokenizer(
        BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)),
        tmp_path / "b",
        False,
    )
    empty = AutoTokenizer.from_pretrained(folder)  # what transformers builds from a bare config
    assert tokenizer_problem(empty) is not None and tokenizer_problem(word_tokenizer()) is None
    with pytest.raises(DataError, match="refusing to save a tokenizer"):
        save_model(word_llama(), empty, tmp_path / "saved")


def test_text_the_tokenizer_spells_as_unknown_tokens_is_refused():
    from prune.data import make_batches

    with pytest.raises(DataError, match=r"unknown token '\[UNK\]'"):
        make_batches(
            word_tokenizer(), ["plain English words"] * 4, seq_len=4, batch_size=2, num_samples=2, packed=True
        )


def test_nan_weight_is_named_with_its_block_in_every_command(tmp_path, text_file, capsys):
    model = word_llama()
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] = float("nan")
    folder = save_with_tokenizer(model, tmp_path / "nan")
    with pytest.raises(NumericalError, match=r"model\.layers\.2\.mlp\.up_proj\.weight \(block 2\)"):
        prune.load_model(folder, device="cpu", progress=False)
    for argv in (
        [folder, "--target", "drop-1", "--calib", text_file, "--out", str(tmp_path / "o"), *FAST_FLAGS],
        ["analyze", folder, "--calib", text_file, "--out", str(tmp_path / "a"), "--seq-len", "16"],
        ["eval", folder, "--data", text_file, "--seq-len", "16", "--no-speed"],
    ):
        assert main(argv) == 2
        assert "block 2" in capsys.readouterr().err


def test_non_finite_activations_name_the_first_block(text_file):
    from prune.data import load_texts, make_batches

    model = word_llama()
    with torch.no_grad():  # finite weights whose product overflows float32 in block 1
        model.model.layers[1].mlp.down_proj.weight.fill_(3e38)
        model.model.layers[1].mlp.up_proj.weight.fill_(3e38)
    batches = make_batches(
        word_tokenizer(),
        load_texts(text_file, purpose="calib"),
        seq_len=8,
        batch_size=2,
        num_samples=2,
        packed=True,
    )
    with pytest.raises(
        NumericalError, match=r"first appear in the output of block 1 \(calibration batch 0\)"
    ):
        prune.collect_stats(model, batches, metrics=("bi",), progress=False)
    from prune.evaluation.perplexity import score_tokens

    with pytest.raises(
        NumericalError, match=r"first appear in the output of block 1 \(LlamaForCausalLM, evaluation batch\)"
    ):
        score_tokens(model, batches)


def test_config_with_more_blocks_than_the_weights_is_refused(tmp_path):
    folder = Path(save_with_tokenizer(word_llama(layers=2), tmp_path / "m"))
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 4  # two blocks would be random
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match=r"blocks \[2, 3\].*do not match"):
        prune.load_model(str(folder), device="cpu", progress=False)


# -- lost files -----------------------------------------------------------------------------------------


def test_readme_outputs_are_fresh_folders_not_parents_of_others():
    text = (ROOT / "README.md").read_text() + (ROOT / "Makefile").read_text()
    outs = [o.rstrip("/") for o in re.findall(r"--out\s+(\S+)", text)]
    assert outs
    for out in outs:
        assert not any(other.startswith(out + "/") for other in outs), (
            f"--out {out} is the parent of another output"
        )
    # the stock load example names the folder the demo writes
    assert "from_pretrained('pruned/smollm2-135m-24L')" in text


def test_out_overlapping_the_input_model_is_refused(llama_dir, text_file, no_weights_load):
    with pytest.raises(OutputError, match="overlaps the model"):
        prune.run_pruning(
            PruneOptions(model=llama_dir, target="drop-1", calib=text_file, out=llama_dir, force=True, **FAST)
        )


# -- wasted runs: checked before any weights load ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("8", "ambiguous"),
        ("drop-x", "cannot read"),
        ("0-layers", "keeps no block"),
        ("4-layers", "has 4 blocks"),
    ],
)
def test_bad_target_is_refused_before_the_weights_load(
    llama_dir, text_file, tmp_path, no_weights_load, target, match
):
    with pytest.raises(TargetError, match=match):
        prune.run_pruning(_options(llama_dir, text_file, tmp_path, target=target))


def test_missing_eval_file_is_found_before_the_weights_load(llama_dir, text_file, tmp_path, no_weights_load):
    with pytest.raises(DataError, match="nope.txt does not exist"):
        prune.run_pruning(_options(llama_dir, text_file, tmp_path, eval=str(tmp_path / "nope.txt")))


def test_sequence_limits_are_checked_from_the_config(llama_dir, text_file, tmp_path, no_weights_load):
    with pytest.raises(DataError, match="longer than the model's 64 positions"):
        prune.run_pruning(_options(llama_dir, text_file, tmp_path, seq_len=128))
    with pytest.raises(DataError, match="--skip-tokens 16 leaves no token"):
        prune.run_pruning(_options(llama_dir, text_file, tmp_path, skip_tokens=16))


def test_no_out_saves_to_a_named_default_and_says_so_first(
    llama_dir, text_file, tmp_path, monkeypatch, capsys
):
    import prune.pipeline

    seen = {}

    def fake_run(options, **kwargs):
        seen["out"] = options.out
        raise DataError("stop here")

    monkeypatch.setattr(prune.pipeline, "run_pruning", fake_run)
    assert main([llama_dir, "--target", "drop-1"]) == 2
    err = capsys.readouterr().err
    assert seen["out"] == f"pruned/{Path(llama_dir).name}-drop-1"
    assert err.index("no --out given: the pruned model will be saved to") < err.index("stop here")


def test_empty_out_is_refused(llama_dir, capsys):
    assert main([llama_dir, "--target", "drop-1", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err


def test_os_error_is_one_line_without_traceback(llama_dir, monkeypatch, capsys):
    import prune.pipeline

    def read_only(options, **kwargs):
        raise OSError(30, "Read-only file system", "/mnt/ro/out")

    monkeypatch.setattr(prune.pipeline, "run_pruning", read_only)
    assert main([llama_dir, "--target", "drop-1", "--out", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Read-only file system: /mnt/ro/out") and "Traceback" not in err


# -- offline and unknown names --------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """A machine without network: the reachability probe fails (huggingface_hub is never asked)."""
    import prune.network

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    prune.network._probe_failed.cache_clear()
    monkeypatch.setattr(prune.network.socket, "create_connection", _no_network)
    yield
    prune.network._probe_failed.cache_clear()


def _no_network(*args, **kwargs):
    raise OSError(101, "Network is unreachable")


def test_offline_unknown_name_fails_at_once_with_what_works(offline):
    from prune.loading import offline_aliases, resolve_model_source

    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_source("nosuchmodel")
    message = str(err.value)
    assert "this machine is offline" in message
    assert all(alias in message for alias in offline_aliases())


def test_offline_alias_without_a_copy_says_so_and_never_suggests_itself(offline, monkeypatch):
    import prune.loading
    import prune.sources

    monkeypatch.setattr(prune.sources, "_in_hub_cache", lambda repo: False)
    with pytest.raises(ModelNotFoundError) as err:
        prune.loading.resolve_model_source("bert-base")
    message = str(err.value)
    assert "bert-base (google-bert/bert-base-uncased) has no offline copy" in message
    assert "did you mean" not in message  # the name was right: nothing else to suggest


def test_offline_hub_dataset_fails_at_once(offline):
    from prune.data import load_texts

    with pytest.raises(DataError, match="cannot be used: this machine is offline"):
        load_texts("someone/some-dataset", purpose="calib")


def test_no_model_name_is_an_error_not_a_hub_id():
    with pytest.raises(ModelNotFoundError, match="empty model name"):
        prune.load_model(None)


def test_custom_code_without_the_flag_names_it(tmp_path):
    from prune.loading import resolve_model_source
    from prune.model_config import read_model_facts

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "my-custom-lm", "auto_map": {"AutoConfig": "configuration_my.MyConfig"}})
    )
    with pytest.raises(ModelNotFoundError, match="--trust-remote-code"):
        read_model_facts(resolve_model_source(str(folder)))


# -- long silences and the evaluation's cost --------------------------------------------------------------


def test_every_evaluation_phase_shows_progress_and_latency_reuses_the_passes(text_file, monkeypatch, capsys):
    from prune.data import load_texts
    from prune.evaluation import compare_models, speed

    def no_dedicated_timing(*args, **kwargs):
        raise AssertionError("latency was timed on passes of its own")

    monkeypatch.setattr(speed, "speed_metrics", no_dedicated_timing)
    original = word_llama()
    pruned = prune.remove_blocks(original, (1,))
    texts = load_texts(text_file, purpose="eval")
    result = compare_models(
        original,
        pruned,
        word_tokenizer(),
        kind="causal-lm",
        eval_texts=texts,
        seq_len=16,
        batch_size=2,
        num_samples=16,
        num_prompts=2,
        new_tokens=3,
        progress=True,
    )
    err = capsys.readouterr().err
    for phase in (
        "evaluating perplexity and KL",
        "greedy agreement: original",
        "greedy agreement: pruned",
        "peak memory of original",
        "peak memory of pruned model",
    ):
        assert phase in err
    assert result.after["latency_ms"] > 0 and result.before["tokens_per_s"] > 0
    assert "the forward passes of the perplexity evaluation" in result.protocol["speed"]
    assert "median of the other 6" in result.protocol["speed"]  # 8 batches, 2 warm-up


def test_eval_probe_is_off_unless_asked(llama_dir):
    from prune.cli.main import build_parser

    parser = build_parser(["eval"])
    assert parser.parse_args(["eval", llama_dir]).probe is False
    assert parser.parse_args(["eval", llama_dir, "--probe"]).probe is True
    readme = (ROOT / "README.md").read_text()
    assert "--probe" in readme and "(`--probe` adds it" in readme


# -- smaller --------------------------------------------------------------------------------------------


def test_analyze_without_matplotlib_writes_the_rest_and_says_how(
    llama_dir, text_file, tmp_path, monkeypatch, capsys
):
    import prune.plots
    from prune.errors import PruneError

    def missing(*args, **kwargs):
        raise PruneError("plots need matplotlib, which is not installed; run `pip install matplotlib`")

    monkeypatch.setattr(prune.plots, "_figure", missing)
    out = tmp_path / "analysis"
    assert (
        main(["analyze", llama_dir, "--calib", text_file, "--out", str(out), "--seq-len", "16", "--quiet"])
        == 0
    )
    captured = capsys.readouterr()
    assert (out / "analysis.json").is_file() and not (out / "cka_heatmap.png").exists()
    assert "pip install matplotlib" in captured.err
    assert "tokens (tokens)" not in captured.out


def test_empty_and_blank_calibration_files_get_the_same_message(tmp_path):
    from prune.data import load_texts

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n")
    messages = []
    for name in ("empty.txt", "blank.txt"):
        with pytest.raises(DataError) as err:
            load_texts(str(tmp_path / name), purpose="calib")
        messages.append(str(err.value).replace(name, "FILE"))
    assert messages[0] == messages[1] and "has no text" in messages[0]


def test_binary_calibration_file_names_the_bad_byte(tmp_path):
    from prune.data import load_texts

    (tmp_path / "bin.txt").write_bytes(b"ok\xff\xfe\x00")
    with pytest.raises(DataError, match="not UTF-8 text \\(byte 0xff at offset 2\\)"):
        load_texts(str(tmp_path / "bin.txt"), purpose="calib")


def test_summary_prints_counts_as_integers(capsys):
    from types import SimpleNamespace

    from prune.cli.prune_cmd import print_summary

    report = {
        "model": {
            "spec": "m",
            "num_blocks_before": 30,
            "num_blocks_after": 24,
            "params_before": 10,
            "params_after": 8,
        },
        "plan": {"drop": [1], "strategy": "span", "reason": "r"},
        "evaluation": {
            "before": {"parameters": 134515008, "num_tokens": 15045.0, "perplexity": 38.0048},
            "after": {"parameters": 113274432, "num_tokens": 15045.0, "perplexity": 70.8857},
        },
    }
    print_summary(SimpleNamespace(report=report, out_dir=None, hub_url=None))
    out = capsys.readouterr().out
    assert "134,515,008 ->    113,274,432" in out and "15,045" in out and "38.0048" in out
    assert "134515008.0000" not in out


def test_plot_labels_say_which_way_is_better():
    from prune.plots import _direction

    assert _direction("perplexity") == "lower is better"
    assert _direction("latency_ms") == "lower is better"
    assert _direction("token_agreement") == "higher is better"
    assert _direction("probe_accuracy") == "higher is better"


def test_readme_lists_what_the_tool_refuses():
    readme = (ROOT / "README.md").read_text()
    assert "## Bad input" in readme
    section = readme.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    for item in ("tokenizer", "NaN", "--force", "--target", "offline", "--seq-len", "--out"):
        assert item in section


def test_umask_is_kept_for_a_real_pruning_output(llama_dir, text_file, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        prune.run_pruning(_options(llama_dir, text_file, tmp_path, eval="none"), progress=False)
        assert oct(out.stat().st_mode & 0o777) == oct(0o755)
        assert all(oct(p.stat().st_mode & 0o777) == oct(0o644) for p in out.iterdir() if p.is_file())
    finally:
        os.umask(old)


# -- more hostile input ---------------------------------------------------------------------------------


def test_recipes_validate_names_the_file_once(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\ntarget: 8-layers\nbogus: 1\n")
    assert main(["recipes", "validate", str(bad)]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{bad}: ERROR unknown key 'bogus'") and line.count(str(bad)) == 1


def test_truncated_weights_file_is_one_clear_error(tmp_path):
    folder = Path(save_with_tokenizer(word_llama(), tmp_path / "m"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelNotFoundError, match="truncated or corrupt"):
        prune.load_model(str(folder), device="cpu", progress=False)


def test_bad_push_repo_id_is_refused_before_the_work(llama_dir, text_file, tmp_path, no_weights_load):
    from prune.errors import HubError

    with pytest.raises(HubError, match="is not a Hub repo id"):
        prune.run_pruning(_options(llama_dir, text_file, tmp_path, push_to_hub="a/b/c"))


def test_out_next_to_a_gguf_file_is_not_an_overlap(tmp_path):
    from prune.preflight import check_out_apart_from_input

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    check_out_apart_from_input(tmp_path / "pruned", gguf)  # a sibling folder is fine
    with pytest.raises(OutputError, match="overlaps"):
        check_out_apart_from_input(tmp_path, gguf)  # replacing the folder that holds it is not


def test_eval_data_equal_to_calibration_data_is_flagged(llama_dir, text_file, tmp_path, caplog):
    from prune.preflight import preflight

    with caplog.at_level("WARNING"):
        preflight(_options(llama_dir, text_file, tmp_path), model_given=False)
    assert "not on held-out text" in caplog.text


def test_reference_with_another_vocabulary_is_refused(text_file):
    from prune.data import load_texts
    from prune.evaluation import compare_models

    other = LlamaForCausalLM(LlamaConfig(**{**word_llama().config.to_dict(), "vocab_size": 80})).eval()
    with pytest.raises(DataError, match="do not share a tokenizer"):
        compare_models(
            other,
            word_llama(),
            word_tokenizer(),
            kind="causal-lm",
            eval_texts=load_texts(text_file, purpose="eval"),
            seq_len=16,
            batch_size=2,
            speed=False,
            generation=False,
        )


def test_eval_says_what_it_will_measure(llama_dir, text_file, capsys):
    argv = ["eval", llama_dir, "--reference", llama_dir, "--data", text_file, "--seq-len", "16"]
    assert main([*argv, "--no-speed", "--prompts", "2", "--new-tokens", "2", "--samples", "4"]) == 0
    err = capsys.readouterr().err
    assert "measuring: perplexity and KL, greedy agreement (2 prompts x 2 tokens), size" in err
    assert "evaluating perplexity and KL, both models" in err  # and each phase shows its progress
