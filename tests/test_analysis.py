"""Redundancy analysis: MSRS, best spans, rankings, table and JSON on hand-made scores; end to end on
tiny and real models, through the `analyze` CLI command."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from prune.analysis import Analysis, AnalysisError, analysis_summary_lines, analyze
from prune.errors import PruneError

# Six blocks. The angular distance is additive over blocks, with these per-block costs: block 5 (the last)
# is the cheapest, block 3 the cheapest of the others, blocks 2-3 the cheapest pair.
COSTS = [0.5, 0.3, 0.05, 0.04, 0.2, 0.01]
L = len(COSTS)


def _angular() -> torch.Tensor:
    edges = torch.tensor([0.0, *COSTS], dtype=torch.float64).cumsum(0)
    return (edges[None, :] - edges[:, None]).abs()


def _cka(block_outputs: torch.Tensor, embedding_row: float = 0.99) -> torch.Tensor:
    full = torch.full((L + 1, L + 1), embedding_row, dtype=torch.float64)
    full[1:, 1:] = block_outputs
    full.fill_diagonal_(1.0)
    return full


def _scores(**overrides) -> dict[str, torch.Tensor]:
    outputs = torch.full((L, L), 0.1, dtype=torch.float64)
    outputs[3:6, 3:6] = 0.95  # blocks 3, 4, 5 produce near-identical outputs: three redundant pairs
    scores = {
        "bi": torch.tensor([0.4, 0.2, 0.05, 0.1, 0.3, 0.01], dtype=torch.float64),
        "angular": _angular(),
        "cka": _cka(outputs),
        "cka_io": torch.tensor([0.5, 0.9, 0.97, 0.95, 0.6, 0.99], dtype=torch.float64),
    }
    scores.update(overrides)
    return {k: v for k, v in scores.items() if v is not None}


def test_msrs_counts_similar_block_output_pairs_only():
    analysis = Analysis.from_scores(_scores(), L, num_tokens=100)
    # tanh(100 * 0.15) ~ 1 for the three pairs at 0.95, tanh(100 * -0.7) ~ -1 for the others. The embedding
    # row (0.99 everywhere) must not count: MSRS is over block outputs.
    assert analysis.msrs == pytest.approx(3.0, abs=1e-6)
    assert analysis.msrs_normalised == pytest.approx(3.0 / 15, abs=1e-6)


def test_msrs_at_the_threshold_is_half_a_pair_each():
    outputs = torch.full((L, L), 0.8, dtype=torch.float64)
    analysis = Analysis.from_scores(_scores(cka=_cka(outputs)), L)
    assert analysis.msrs == pytest.approx(7.5)
    assert analysis.msrs_normalised == pytest.approx(0.5)
    # A looser threshold counts every pair, a sharper beta does not change exact ties.
    assert Analysis.from_scores(_scores(cka=_cka(outputs)), L, eps=0.5).msrs == pytest.approx(15.0)
    assert Analysis.from_scores(_scores(cka=_cka(outputs)), L, beta=5.0).msrs == pytest.approx(7.5)


def test_best_spans_exclude_the_last_block_by_default():
    analysis = Analysis.from_scores(_scores(), L)
    assert [(s.n, s.start) for s in analysis.best_spans] == [(1, 3), (2, 2), (3, 2), (4, 1), (5, 0)]
    assert analysis.best_span(1).distance == pytest.approx(0.04)
    assert analysis.best_span(2).distance == pytest.approx(0.09)
    assert analysis.best_span(3).blocks == (2, 3, 4)
    assert analysis.best_span(3).distance == pytest.approx(0.29)
    with_last = Analysis.from_scores(_scores(), L, allow_last=True)
    assert with_last.best_span(1).start == 5
    assert with_last.best_span(1).distance == pytest.approx(0.01)
    assert with_last.best_span(6).blocks == tuple(range(6))
    with pytest.raises(AnalysisError, match="between 1 and 5"):
        analysis.best_span(6)


def test_rankings_by_each_score():
    analysis = Analysis.from_scores(_scores(), L)
    assert analysis.most_redundant("bi") == [2, 3, 1, 4, 0]  # lowest BI first, last block left out
    assert analysis.most_redundant("cka_io", 2) == [2, 3]  # highest CKA(in, out) first
    assert analysis.most_redundant("angular", 1) == [3]
    assert Analysis.from_scores(_scores(), L, allow_last=True).most_redundant("bi", 1) == [5]
    with pytest.raises(AnalysisError, match="choose one of"):
        analysis.most_redundant("perplexity")


def test_rows_hold_each_blocks_scores():
    rows = Analysis.from_scores(_scores(), L).rows
    assert [r.block for r in rows] == list(range(L))
    assert rows[2].bi == pytest.approx(0.05)
    assert rows[2].cka_io == pytest.approx(0.97)
    assert [r.angular for r in rows] == pytest.approx(COSTS)


def test_table_marks_the_most_redundant_block_by_each_score():
    table = Analysis.from_scores(_scores(), L).to_table()
    lines = table.splitlines()
    assert "BI" in lines[0] and "CKA(in,out)" in lines[0] and "angular" in lines[0]
    rows = {int(line.split()[0]): line for line in lines[2 : 2 + L]}
    assert rows[2].endswith("<- BI, CKA(in,out)")
    assert rows[3].endswith("<- angular(l,l+1)")
    assert "<-" not in rows[5] and "<-" not in rows[0]
    assert "0.9700 *" in rows[2] and "0.0500 *" in rows[2]
    assert "last block not considered" in lines[-1]


def test_table_and_summary_with_a_subset_of_metrics():
    analysis = Analysis.from_scores({"bi": torch.tensor([0.3, 0.1, 0.2])}, 3)
    assert analysis.msrs is None and analysis.best_spans == []
    table = analysis.to_table()
    assert table.splitlines()[3].split()[:4] == ["1", "0.1000", "*", "-"]
    lines = analysis_summary_lines(analysis)
    assert lines[0].startswith("MSRS: not computed")
    assert lines[1] == "most redundant by BI (lowest first): 1, 0"
    assert len(lines) == 2


def test_cka_io_is_derived_from_the_cka_matrix_when_missing():
    scores = _scores(cka_io=None)
    analysis = Analysis.from_scores(scores, L)
    assert analysis.scores["cka_io"].tolist() == pytest.approx(torch.diagonal(scores["cka"], 1).tolist())


def test_summary_lines():
    lines = analysis_summary_lines(Analysis.from_scores(_scores(), L))
    assert lines[0] == "MSRS (beta=100, eps=0.8): 3.000 raw, 0.2000 normalised over 15 block pairs"
    assert "most redundant by BI (lowest first): 2, 3, 1" in lines
    assert "most redundant by CKA(in,out) (highest first): 2, 3, 1" in lines
    spans = [line.strip() for line in lines if line.startswith("  n=")]
    assert spans == [
        "n=1: block 3 (angular distance 0.0400)",
        "n=2: blocks 2-3 (angular distance 0.0900)",
        "n=3: blocks 2-4 (angular distance 0.2900)",
    ]


def test_to_dict_is_strict_json_and_round_trips():
    scores = _scores()
    scores["bi"][0] = math.nan  # a metric that could not be computed for one block
    analysis = Analysis.from_scores(scores, L, num_tokens=640, meta={"model": "hand-made"})
    data = json.loads(json.dumps(analysis.to_dict(), allow_nan=False))
    assert data["num_blocks"] == L and data["num_tokens"] == 640
    assert data["msrs"] == {
        "raw": pytest.approx(3.0),
        "normalised": pytest.approx(0.2),
        "beta": 100.0,
        "eps": 0.8,
        "pairs": 15,
    }
    assert data["best_spans"][1] == {"n": 2, "start": 2, "blocks": [2, 3], "distance": pytest.approx(0.09)}
    assert data["blocks"][0]["bi"] is None and data["blocks"][2]["cka_io"] == pytest.approx(0.97)
    assert data["most_redundant"]["bi"] == [2, 3, 1, 4]  # the NaN block is not ranked
    assert len(data["scores"]["cka"]) == L + 1 and len(data["scores"]["cka"][0]) == L + 1
    assert data["meta"] == {"model": "hand-made"}
    again = Analysis.from_dict(data)
    assert again.msrs == pytest.approx(analysis.msrs)
    assert again.best_spans == analysis.best_spans
    assert torch.equal(again.scores["angular"], analysis.scores["angular"])
    assert math.isnan(again.rows[0].bi)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": {"bi": torch.zeros(5)}}, r"shape \(5,\) but a model with 6 blocks needs \(6,\)"),
        ({"scores": {"cka": torch.eye(6)}}, "needs \\(7, 7\\)"),
        ({"scores": {"bi": ["a"] * 6}}, "not numeric"),
        ({"beta": 0.0}, "beta must be a positive number"),
        ({"eps": 1.5}, "eps must be a CKA value"),
        ({"num_blocks": 0}, "num_blocks must be a positive integer"),
    ],
)
def test_bad_scores_and_settings(kwargs, message):
    arguments = {"scores": _scores(), "num_blocks": L, **kwargs}
    with pytest.raises(AnalysisError, match=message):
        Analysis.from_scores(arguments.pop("scores"), arguments.pop("num_blocks"), **arguments)


def test_from_dict_rejects_other_json():
    with pytest.raises(AnalysisError, match="prune-llm analyze"):
        Analysis.from_dict({"model": "x"})


def test_analyze_rejects_bad_settings_before_any_work():
    model = torch.nn.Linear(2, 2)  # never run: the settings fail first
    with pytest.raises(AnalysisError, match="choose one of: tokens, mean, last"):
        analyze(model, [], token_mode="pooled")
    with pytest.raises(AnalysisError, match="no metrics"):
        analyze(model, [], metrics=())
    with pytest.raises(PruneError, match="beta"):
        analyze(model, [], beta=-1.0)


def test_analysis_error_is_a_prune_error():
    assert issubclass(AnalysisError, PruneError)


def _cli(argv: list[str]) -> argparse.Namespace:
    from prune.cli import analyze_cmd

    parser = argparse.ArgumentParser(prog="prune-llm")
    analyze_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["analyze", *argv])


def test_cli_flags_and_default_out_dir():
    from prune.cli.analyze_cmd import default_out_dir

    args = _cli(["minilm-l6", "--calib-samples", "16", "--token-mode", "mean", "--beta", "50"])
    assert (args.model, args.calib, args.calib_samples, args.token_mode, args.beta) == (
        "minilm-l6",
        "default",
        16,
        "mean",
        50.0,
    )
    assert args.eps == 0.8 and args.seq_len == 256 and not args.json and not args.force
    with pytest.raises(SystemExit):
        _cli(["minilm-l6", "--calib-samples", "0"])
    with pytest.raises(SystemExit):
        _cli(["minilm-l6", "--token-mode", "pooled"])
    with pytest.raises(SystemExit):
        _cli(["minilm-l6", "--skip-tokens", "-1"])
    assert _cli(["minilm-l6", "--skip-tokens", "0"]).skip_tokens == 0
    assert str(default_out_dir("HuggingFaceTB/SmolLM2-135M")) == "analysis/SmolLM2-135M"
    assert str(default_out_dir("/models/smol/SmolLM2-135M-Instruct.Q4_1.gguf")) == (
        "analysis/SmolLM2-135M-Instruct.Q4_1"
    )
    assert str(default_out_dir("./my model/")) == "analysis/my-model"


# ---------------------------------------------------------------------------------------------- end to end
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tiny_batches(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    from tests.tiny_models import sample_input_ids

    batches = []
    for i in range(2):
        ids = sample_input_ids("llama", length=12, batch=4, seed=seed + i)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_analyze_a_tiny_model(family):
    pytest.importorskip("prune.collect")
    from tests.tiny_models import build_tiny

    model = build_tiny(family)
    analysis = analyze(model, _tiny_batches(), progress=False, meta={"model": family})
    blocks = model.config.num_hidden_layers
    assert analysis.num_blocks == blocks and analysis.num_tokens == 2 * 4 * 12
    assert analysis.scores["cka"].shape == (blocks + 1, blocks + 1)
    assert analysis.scores["bi"].shape == (blocks,)
    assert torch.isfinite(analysis.scores["angular"]).all()
    assert 0.0 <= analysis.msrs_normalised <= 1.0
    assert analysis.msrs == pytest.approx(analysis.msrs_normalised * blocks * (blocks - 1) / 2)
    # The best single block is, by definition, the one with the smallest angular distance across it.
    across = torch.diagonal(analysis.scores["angular"], 1)[: blocks - 1]
    assert analysis.best_span(1).start == int(across.argmin())
    assert analysis.meta["model"] == family and analysis.meta["token_mode"] == "tokens"
    json.dumps(analysis.to_dict(), allow_nan=False)


def test_analyze_with_a_subset_of_metrics_and_token_mode():
    pytest.importorskip("prune.collect")
    from tests.tiny_models import build_tiny

    analysis = analyze(
        build_tiny("llama"), _tiny_batches(), metrics=("bi", "angular"), token_mode="mean", progress=False
    )
    assert set(analysis.scores) == {"bi", "angular"}
    assert analysis.msrs is None and analysis.num_tokens == 96
    assert analysis.meta["num_sequences"] == 8  # one mean vector per sequence was compared
    assert analysis.best_spans and all(r.cka_io is None for r in analysis.rows)
    with pytest.raises(PruneError, match="unknown metric 'pooled'"):
        analyze(build_tiny("llama"), _tiny_batches(), metrics=("bi", "pooled"), progress=False)


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    args = _cli(argv)
    status = args.func(args)
    return status, capsys.readouterr().out


def _check_outputs(out, num_blocks: int) -> dict:
    image = pytest.importorskip("matplotlib.image")
    assert sorted(p.name for p in out.iterdir()) == [
        "analysis.json",
        "analysis.txt",
        "block_scores.png",
        "cka_heatmap.png",
        "ffn_neurons_needed.png",
    ]
    for name in ("block_scores.png", "cka_heatmap.png", "ffn_neurons_needed.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        pixels = image.imread(out / name)
        assert pixels.ndim == 3 and pixels.shape[2] in (3, 4) and pixels.shape[0] > 200
    data = json.loads((out / "analysis.json").read_text())
    assert data["num_blocks"] == num_blocks and data["num_tokens"] > 0
    assert len(data["blocks"]) == num_blocks and len(data["scores"]["bi"]) == num_blocks
    needed = data["ffn_neurons_needed"]
    assert len(needed["counts"]) == num_blocks
    for counts in needed["counts"]:  # more energy needs more neurons, never more than d_ff
        assert 0 < counts["0.9"] <= counts["0.99"] <= counts["0.999"] <= needed["size"]
    for name in ("cka", "angular"):
        matrix = data["scores"][name]
        assert len(matrix) == num_blocks + 1 and all(len(row) == num_blocks + 1 for row in matrix)
        assert all(isinstance(v, float) and math.isfinite(v) for row in matrix for v in row)
    assert 0.0 <= data["msrs"]["normalised"] <= 1.0 and math.isfinite(data["msrs"]["raw"])
    assert [s["n"] for s in data["best_spans"]] == list(range(1, num_blocks))
    return data


def test_cli_analyze_minilm(tmp_path, capsys):
    pytest.importorskip("prune.collect")
    out = tmp_path / "minilm"
    argv = [
        "minilm-l6",
        "--calib-samples",
        "16",
        "--seq-len",
        "64",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    status, printed = _run_cli(argv, capsys)
    assert status == 0
    data = _check_outputs(out, 6)
    assert data["meta"]["model"] == "minilm-l6" and data["meta"]["kind"] == "encoder"
    assert "MSRS (beta=100, eps=0.8)" in printed and "most redundant by" in printed
    assert printed.count("\n") > 6 + 5
    assert "FFN neurons needed per block" in printed

    # An existing folder is kept unless --force; --json prints the same analysis as the file.
    before = (out / "analysis.json").read_text()
    with pytest.raises(PruneError, match="--force"):
        _run_cli(argv, capsys)
    assert (out / "analysis.json").read_text() == before
    rerun = [
        *argv,
        "--force",
        "--json",
        "--token-mode",
        "mean",
        "--no-plots",
        "--skip-tokens",
        "1",
        "--no-neurons",
    ]
    status, printed = _run_cli(rerun, capsys)
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json", "analysis.txt"]  # replaced whole
    printed_data = json.loads(printed)
    assert printed_data == json.loads((out / "analysis.json").read_text())
    assert printed_data["meta"]["token_mode"] == "mean" and printed_data["meta"]["skip_tokens"] == 1
    # Each of the 16 sequences lost its first token ([CLS]) from the statistics.
    assert printed_data["num_tokens"] == data["num_tokens"] - 16


def test_cli_analyze_resumes_from_its_state_file(tmp_path, capsys, monkeypatch):
    """An analysis interrupted half way resumes from --state and ends with the uninterrupted numbers."""
    import prune.collect.collector as collector

    argv = ["minilm-l6", "--calib-samples", "16", "--seq-len", "32", "--batch-size", "4"]
    argv += ["--device", "cpu", "--quiet", "--no-plots", "--json", "--no-neurons"]
    status, printed = _run_cli([*argv, "--out", str(tmp_path / "whole")], capsys)
    assert status == 0
    whole = json.loads(printed)

    state = tmp_path / "sums.pt"
    real_run = collector._HiddenStateCapture.run
    calls = {"n": 0}

    def dies_at_third_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a user's Ctrl-C would
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(collector._HiddenStateCapture, "run", dies_at_third_batch)
    with pytest.raises(KeyboardInterrupt):
        _run_cli([*argv, "--out", str(tmp_path / "resumed"), "--state", str(state)], capsys)
    assert state.exists() and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(collector._HiddenStateCapture, "run", real_run)
    status, printed = _run_cli([*argv, "--out", str(tmp_path / "resumed"), "--state", str(state)], capsys)
    assert status == 0
    resumed = json.loads(printed)
    assert resumed["num_tokens"] == whole["num_tokens"]
    for name in ("bi", "cka", "angular"):
        torch.testing.assert_close(torch.tensor(resumed["scores"][name]), torch.tensor(whole["scores"][name]))


def test_cli_analyze_fails_fast_on_bad_input(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(PruneError, match="--force"):
        _run_cli(["no-such-model-anywhere", "--out", str(taken)], capsys)
    with pytest.raises(PruneError, match="--beta"):
        _run_cli(["minilm-l6", "--beta", "0", "--out", str(tmp_path / "x")], capsys)
    with pytest.raises(PruneError):
        _run_cli(["no-such-model-anywhere", "--out", str(tmp_path / "y")], capsys)
    assert (taken / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_cli_analyze_smollm2(tmp_path, capsys):
    pytest.importorskip("prune.collect")
    out = tmp_path / "smol"
    argv = [
        "smollm2-135m",
        "--calib-samples",
        "16",
        "--seq-len",
        "128",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    status, _ = _run_cli(argv, capsys)
    assert status == 0
    data = _check_outputs(out, 30)
    assert data["meta"]["kind"] == "causal-lm"
    # Deep layers of an LLM are alike: neighbouring middle blocks have high CKA.
    cka = torch.tensor(data["scores"]["cka"])
    assert float(torch.diagonal(cka, 1)[10:25].mean()) > 0.8
