"""Model cards: metadata the Hub reads, and a body that says what was cut, why, and how to redo it."""

from __future__ import annotations

import copy

import pytest
from huggingface_hub import ModelCard

from prune.card import build_model_card, read_license

REPORT = {
    "model": {
        "spec": "minilm-l6",
        "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
        "kind": "encoder",
        "family": "bert",
        "num_blocks_before": 6,
        "num_blocks_after": 4,
        "params_before": 22_713_216,
        "params_after": 18_163_584,
        "size_bytes_before": 90_868_376,
        "size_bytes_after": 72_666_000,
    },
    "plan": {
        "strategy": "span",
        "metric": "angular",
        "target": "4-layers",
        "drop": [3, 4],
        "keep": [0, 1, 2, 5],
        "reason": "blocks 3-4 are the span of 2 with the smallest angular distance (0.0712)",
        "details": {"span_distances": [0.21, 0.15, 0.09, 0.0712, 0.11]},
    },
    "scores": {
        "bi": [0.31, 0.12, 0.08, 0.041, 0.052, 0.27],
        "cka_io": [0.5, 0.8, 0.9, 0.97, 0.95, 0.6],
        "angular": [[0.0] * 7 for _ in range(7)],
    },
    "evaluation": {
        "before": {"pseudo_perplexity": 12.5, "embedding_cosine_to_original": 1.0},
        "after": {"pseudo_perplexity": 15.0, "embedding_cosine_to_original": 0.93},
        "protocol": {"data": "default", "samples": 64, "seq_len": 128, "note": "x" * 80},
    },
    "data": {"calib": "default", "calib_samples": 64, "calib_tokens": 8030},
    "command": "prune-llm minilm-l6 --target 4-layers --out pruned",
    "prune_llm_version": "0.1.0",
}
COMMAND = "prune-llm minilm-l6 --target 4-layers --out pruned --push-to-hub me/minilm-l4"


def card_for(report=REPORT, **kwargs):
    args = {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "apache-2.0",
        "command": COMMAND,
        "repo_id": "me/minilm-l4",
    }
    args.update(kwargs)
    return build_model_card(report, **args)


def test_card_round_trips_through_huggingface_hub(tmp_path):
    card = card_for()
    path = tmp_path / "README.md"
    card.save(path)
    for parsed in (ModelCard.load(path), ModelCard(path.read_text())):
        data = parsed.data.to_dict()
        assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert data["license"] == "apache-2.0"
        assert data["library_name"] == "transformers"
        assert data["pipeline_tag"] == "feature-extraction"
        assert set(data["tags"]) == {"prune-llm", "layer-pruning", "pruned", "span"}


def test_body_has_blocks_reason_scores_table_size_and_command():
    text = card_for().text
    assert "# minilm-l4" in text
    assert "2 of its 6 transformer blocks removed (4 kept)" in text
    assert "Removed blocks (0-based): 3, 4" in text and "Kept blocks: 0, 1, 2, 5" in text
    assert REPORT["plan"]["reason"] in text
    # per-block scores, removed rows marked; matrices are left to the report
    assert "| 3 | 0.0410 | 0.9700 | **removed** |" in text
    assert "| 0 | 0.3100 | 0.5000 | kept |" in text
    assert "`angular`" not in text.split("### Per-block scores")[1].split("\n")[2]
    # before/after table with the relative change
    assert "| Metric | Original | Pruned | Change |" in text
    assert "| pseudo_perplexity | 12.5000 | 15.0000 | +20.0% |" in text
    assert "| embedding_cosine_to_original | 1.0000 | 0.9300 | -7.0% |" in text
    assert "- samples: `64`" in text and f"- note: {'x' * 80}" in text
    assert "- Data: calib `default`, calib_samples `64`, calib_tokens `8030`" in text
    assert "| Parameters | 22,713,216 | 18,163,584 | -20.0% |" in text
    assert "| Blocks | 6 | 4 | -33.3% |" in text
    assert f"```bash\n{COMMAND}\n```" in text
    assert 'AutoModel.from_pretrained("me/minilm-l4")' in text


def test_causal_lm_card_and_unknown_license():
    report = copy.deepcopy(REPORT)
    report["model"]["kind"] = "causal-lm"
    report["plan"]["strategy"] = "topk"
    card = card_for(report, license=None, base_model=None, repo_id=None)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "text-generation" and "license" not in data and "base_model" not in data
    assert "topk" in data["tags"]
    assert "AutoModelForCausalLM" in card.text and "minilm-l6 (pruned)" in card.text


def test_tolerates_a_minimal_report():
    card = build_model_card(
        {"model": {"num_blocks_before": 4, "num_blocks_after": 3}, "plan": {"strategy": "last", "drop": [3]}},
        base_model=None,
        license=None,
        command="prune-llm x --target drop-1",
        repo_id="me/x",
    )
    assert "Removed blocks (0-based): 3" in card.text
    assert "Evaluation" not in card.text and "Per-block scores" not in card.text
    assert "prune-llm x --target drop-1" in card.text
    ModelCard(str(card))  # still a valid card


@pytest.mark.parametrize(
    ("front_matter", "expected"),
    [
        ("license: mit\n", "mit"),
        ("license: other\nlicense_name: llama3\n", "llama3"),
        ("tags: [a]\n", None),
    ],
)
def test_read_license_from_local_card(tmp_path, front_matter, expected):
    (tmp_path / "README.md").write_text(f"---\n{front_matter}---\n\n# A model\n")
    assert read_license(tmp_path) == expected
    assert read_license(tmp_path / "README.md") == expected


def test_read_license_without_a_card(tmp_path):
    assert read_license(tmp_path) is None
    assert read_license("sentence-transformers/all-MiniLM-L6-v2") is None  # a Hub id, nothing local
    (tmp_path / "README.md").write_text("no front matter at all")
    assert read_license(tmp_path) is None


def test_read_license_from_the_hub_cache(tmp_path, monkeypatch):
    """A Hub id's licence comes from the card in the local Hub cache, without any network."""
    import huggingface_hub

    readme = tmp_path / "cached-README.md"
    readme.write_text("---\nlicense: llama3\n---\n")
    asked = []

    def fake_cache(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(readme) if repo_id == "meta-llama/Meta-Llama-3-8B" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fake_cache)
    assert read_license("meta-llama/Meta-Llama-3-8B") == "llama3"
    assert read_license("someone/never-downloaded") is None
    assert asked == [("meta-llama/Meta-Llama-3-8B", "README.md"), ("someone/never-downloaded", "README.md")]


def test_card_says_which_repair_was_folded_per_span():
    from prune.card import build_model_card

    span = {
        "first": 13,
        "last": 18,
        "kept_block": 12,
        "method": "linear",
        "map": "full d x d map folded into the down projection: mlp.down_proj of the kept block",
        "residual_before": 0.0045,
        "residual_after": 0.002,
        "ridge": 0.1,
        "tokens": 16384,
        "seconds": 30.0,
        "skipped": None,
    }
    report = {
        "model": {"num_blocks_before": 30, "num_blocks_after": 24, "kind": "causal-lm"},
        "plan": {"strategy": "span", "drop": list(range(13, 19))},
        "repair": {
            "method": "linear",
            "order": "sequential",
            "objective": "mse",
            "seconds": 30.0,
            "spans": [span],
        },
    }
    text = str(build_model_card(report, base_model=None, license=None, command="prune-llm x", repo_id=None))
    assert "### Repair" in text and "13-18" in text and "mlp.down_proj" in text and "0.0045" in text
    assert "folded into their weights" in text
    plain = dict(report, repair={"method": "none", "spans": [], "warnings": []})
    text = str(build_model_card(plain, base_model=None, license=None, command="prune-llm x", repo_id=None))
    assert "the plain cut" in text and "folded into their weights" not in text
