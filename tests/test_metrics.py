"""Metrics from the collector against direct computations on output_hidden_states (tiny models)."""

from __future__ import annotations

import math

import pytest
import torch
from test_cka import reference_cka
from transformers import BertConfig, BertModel, LlamaForCausalLM

from prune.collect import CollectError, LayerStats, collect_stats
from prune.metrics import METRICS, sums_for
from tests.word_models import word_llama

ALL = ("bi", "angular", "cka", "cka_io")


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


def tiny_llama() -> LlamaForCausalLM:
    return word_llama(vocab_size=60, eos_token_id=2, pad_token_id=None)


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (5, 11), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate([11, 7, 3, 9, 5]):
        mask[row, length:] = 0
        ids[row, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def reference_states(model, batch) -> list[torch.Tensor]:
    """h_0..h_L from output_hidden_states; for Llama the last entry is after the final norm, so the
    last block's own output is taken with a plain hook instead."""
    captured = []
    blocks = model.encoder.layer if isinstance(model, BertModel) else model.model.layers
    handle = blocks[-1].register_forward_hook(
        lambda m, a, o: captured.append(o if torch.is_tensor(o) else o[0])
    )
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    handle.remove()
    return [h.double() for h in out.hidden_states[:-1]] + [captured[0].double()]


def reference_minibatches(states, mask, size: int, window: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """CKA minibatches as documented: the valid tokens in reading order, in windows of `window` tokens
    (a multiple of `size`), each permuted by randperm(its length, seed) and cut into runs of `size`;
    runs under 4 tokens dropped."""
    tokens = [h[mask.bool()] for h in states]
    n = tokens[0].shape[0]
    groups = []
    for start in range(0, n, window):
        length = min(window, n - start)
        order = torch.randperm(length, generator=torch.Generator().manual_seed(seed)) + start
        for i in range(0, length, size):
            if len(order[i : i + size]) >= 4:
                groups.append([t[order[i : i + size]] for t in tokens])
    return groups


def reference_bi_angular(states, mask):
    valid = mask.bool()
    vecs = [h[valid] for h in states]
    s = len(vecs)
    cos = torch.zeros(s, s, dtype=torch.float64)
    ang = torch.zeros(s, s, dtype=torch.float64)
    for i in range(s):
        for j in range(s):
            c = torch.nn.functional.cosine_similarity(vecs[i], vecs[j], dim=-1).clamp(-1, 1)
            cos[i, j] = c.mean()
            ang[i, j] = (torch.arccos(c) / math.pi).mean()
    ang.fill_diagonal_(0.0)
    return 1 - torch.diagonal(cos, offset=1), ang


@pytest.mark.parametrize("build", [tiny_bert, tiny_llama])
def test_bi_angular_cka_equal_direct_computation_with_padding(build) -> None:
    model, batch = build(), padded_batch()
    stats = collect_stats(model, [batch], metrics=ALL, cka_minibatch=6, cka_window=12, seed=3, progress=False)
    scores = stats.scores()
    states = reference_states(model, batch)
    bi, ang = reference_bi_angular(states, batch["attention_mask"])
    assert stats.num_tokens == int(batch["attention_mask"].sum()) == 35
    assert stats.num_sequences == 5
    assert torch.allclose(scores["bi"], bi, atol=1e-5)
    assert torch.allclose(scores["angular"], ang, atol=2e-4)
    # CKA: 35 tokens in windows of 12, 12 and 11 (the last incomplete), each shuffled and cut into
    # minibatches of 6: 2 + 2 + 2 (6 and 5 tokens).
    groups = reference_minibatches(states, batch["attention_mask"], 6, 12, seed=3)
    assert len(groups) == 6 and stats.sums["hsic_groups"].item() == 6
    cka = reference_cka(groups)
    cka.fill_diagonal_(1.0)
    assert torch.allclose(scores["cka"], cka, atol=1e-4)
    assert torch.allclose(scores["cka_io"], torch.diagonal(cka, offset=1), atol=1e-4)


def test_padding_is_excluded() -> None:
    model, batch = tiny_bert(), padded_batch()
    base = collect_stats(model, [batch], metrics=ALL, progress=False).scores()
    # Longer padding on every row plus two rows of pure padding with junk ids.
    ids = torch.cat([batch["input_ids"], torch.randint(1, 60, (5, 6))], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.zeros(5, 6, dtype=torch.long)], dim=1)
    ids = torch.cat([ids, torch.randint(1, 60, (2, 17))])
    mask = torch.cat([mask, torch.zeros(2, 17, dtype=torch.long)])
    stats = collect_stats(model, [{"input_ids": ids, "attention_mask": mask}], metrics=ALL, progress=False)
    assert stats.num_tokens == 35 and stats.num_sequences == 5
    for name, value in stats.scores().items():
        assert torch.allclose(value, base[name], atol=1e-5), name


def test_pooled_modes_equal_direct_computation() -> None:
    model, batch = tiny_bert(), padded_batch()
    states = reference_states(model, batch)
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1)
    pooled = {
        "mean": [(h * mask[..., None]).sum(1) / lengths[:, None] for h in states],
        "last": [h[torch.arange(5), lengths - 1] for h in states],
    }
    for mode, vecs in pooled.items():
        stats = collect_stats(model, [batch], metrics=ALL, token_mode=mode, group_size=5, progress=False)
        bi, ang = reference_bi_angular([v[:, None] for v in vecs], torch.ones(5, 1))
        scores = stats.scores()
        assert torch.allclose(scores["bi"], bi, atol=1e-5), mode
        assert torch.allclose(scores["angular"], ang, atol=2e-4), mode
        cka = reference_cka([vecs])
        cka.fill_diagonal_(1.0)
        assert torch.allclose(scores["cka"], cka, atol=1e-4), mode


def split(batch: dict[str, torch.Tensor], sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    out, start = [], 0
    for size in sizes:
        out.append({k: v[start : start + size] for k, v in batch.items()})
        start += size
    return out


@pytest.mark.parametrize("mode", ["tokens", "mean"])
def test_one_batch_equals_many(mode: str) -> None:
    model, batch = tiny_llama(), padded_batch(3)
    # Windows of 8 tokens (minibatches of 4) that straddle the batch boundaries in "tokens" mode.
    options = {"metrics": ALL, "token_mode": mode, "group_size": 4, "cka_minibatch": 4, "cka_window": 8}
    one = collect_stats(model, [batch], progress=False, **options)
    many = collect_stats(model, split(batch, [2, 1, 2]), progress=False, **options)
    assert one.sums["hsic_groups"].item() == (8 if mode == "tokens" else 1)
    assert one.num_tokens == many.num_tokens
    for name, value in one.scores().items():
        assert torch.allclose(value, many.scores()[name], atol=1e-5), name
    for name, value in one.sums.items():
        assert torch.allclose(value, many.sums[name], rtol=1e-6, atol=1e-9), name


def test_max_tokens_is_exact() -> None:
    model, batch = tiny_llama(), padded_batch()
    batches = split(batch, [2, 2, 1])
    stats = collect_stats(model, batches, metrics=ALL, max_tokens=20, progress=False)
    assert stats.num_tokens == 20
    # Same as masking by hand: rows 0 (11 tokens) and 1 (7), then the first 2 of row 2 (3 valid).
    mask = batch["attention_mask"].clone()
    mask[2, 2:] = 0
    mask[3:] = 0
    manual = collect_stats(model, [{**batch, "attention_mask": mask}], metrics=ALL, progress=False)
    assert manual.num_tokens == 20
    for name, value in stats.scores().items():
        assert torch.allclose(value, manual.scores()[name], atol=1e-5), name
    assert stats.info["batches"] == 2  # the third batch was never run


def left_padded(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same sequences with the padding moved to the left."""
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        ids[row] = torch.cat([ids[row, n:], ids[row, :n]])
        mask[row] = torch.cat([mask[row, n:], mask[row, :n]])
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("padding", ["right", "left"])
def test_skip_tokens_leaves_out_each_sequences_first_tokens(padding: str) -> None:
    model, batch = tiny_llama(), padded_batch()
    if padding == "left":
        batch = left_padded(batch)
    stats = collect_stats(
        model, [batch], metrics=ALL, skip_tokens=2, cka_minibatch=6, cka_window=12, progress=False
    )
    # By hand: per row, drop the first two positions that hold a real token.
    kept = batch["attention_mask"].bool().clone()
    for row in range(kept.shape[0]):
        kept[row, kept[row].nonzero()[:2, 0]] = False
    assert stats.num_tokens == int(kept.sum()) == 35 - 2 * 5
    assert stats.info["skip_tokens"] == 2
    states = reference_states(model, batch)
    bi, ang = reference_bi_angular(states, kept)
    scores = stats.scores()
    assert torch.allclose(scores["bi"], bi, atol=1e-5)
    assert torch.allclose(scores["angular"], ang, atol=2e-4)
    # Rows keep 9, 5, 1, 7, 3 tokens: 25 tokens, windows of 12, 12 and 1: four CKA minibatches of 6.
    groups = reference_minibatches(states, kept, 6, 12)
    assert len(groups) == 4 and stats.sums["hsic_groups"].item() == 4
    cka = reference_cka(groups)
    cka.fill_diagonal_(1.0)
    assert torch.allclose(scores["cka"], cka, atol=1e-4)


def test_skipped_tokens_do_not_count_towards_the_budget() -> None:
    model, batch = tiny_llama(), padded_batch()
    batches = split(batch, [3, 2])
    stats = collect_stats(model, batches, metrics=ALL, max_tokens=27, skip_tokens=1, progress=False)
    assert stats.num_tokens == 27
    # Rows keep 10, 6, 2, 8, 4 tokens after their first: the first batch gives 18, the second needs
    # row 3 (8) and then one token of row 4, which a budget counting the skipped tokens would drop.
    kept = batch["attention_mask"].bool().clone()
    kept[:, 0] = False
    kept[4, 2:] = False
    assert int(kept.sum()) == 27
    bi, ang = reference_bi_angular(reference_states(model, batch), kept)
    assert torch.allclose(stats.scores()["bi"], bi, atol=1e-5)
    assert torch.allclose(stats.scores()["angular"], ang, atol=2e-4)


def test_registry_declares_shared_sums_once() -> None:
    assert {"bi", "angular", "cka", "cka_io"} <= set(METRICS.names())
    assert METRICS.get("cka").sums == METRICS.get("cka_io").sums
    names = sums_for(["cka", "cka_io", "bi", "angular"])
    assert len(names) == len(set(names))
    assert names.count("hsic") == 1 and names.count("samples") == 1
    stats = collect_stats(tiny_llama(), [padded_batch()], metrics=["bi"], progress=False)
    assert "hsic" not in stats.sums and "angle" not in stats.sums


def test_layer_stats_save_load_roundtrip(tmp_path) -> None:
    stats = collect_stats(tiny_llama(), [padded_batch()], metrics=ALL, progress=False)
    stats.save(tmp_path / "stats.pt")
    loaded = LayerStats.load(tmp_path / "stats.pt")
    assert (
        loaded.num_blocks == 4 and loaded.metrics == stats.metrics and loaded.num_tokens == stats.num_tokens
    )
    for name, value in stats.scores().items():
        assert torch.equal(value, loaded.scores()[name])
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(CollectError, match="delete it or pass another path"):
        LayerStats.load(tmp_path / "junk.pt")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": ["nope"]}, "unknown metric 'nope'"),
        ({"metrics": []}, "no metrics requested"),
        ({"token_mode": "pooled"}, "unknown token_mode"),
        ({"max_tokens": 0}, "max_tokens must be a positive"),
        ({"group_size": 2}, "group_size must be at least 4"),
        ({"skip_tokens": -1}, "skip_tokens must be a whole number"),
        ({"cka_minibatch": 3}, "cka_minibatch must be at least 4"),
        ({"cka_minibatch": 64, "cka_window": 32}, "pass e.g. cka_window=1024"),
    ],
)
def test_bad_options_raise_collect_error(kwargs, match) -> None:
    with pytest.raises(CollectError, match=match):
        collect_stats(tiny_llama(), [padded_batch()], progress=False, **kwargs)


def test_last_mode_takes_the_last_valid_token_with_left_or_right_padding() -> None:
    from prune.metrics import Samples

    states = [torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3) + 100 * i for i in range(2)]
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)  # left-padded row, right-padded row
    vectors = Samples(list(states), mask, "last").vectors
    assert torch.equal(vectors[1], torch.stack([states[1][0, 3], states[1][1, 2]]))
    mean = Samples(list(states), mask, "mean").vectors
    assert torch.allclose(mean[0, 0], states[0][0, 2:].mean(0))
