"""Evaluate a model, or compare a pruned model with its original on the same data and protocol.

`compare_models` runs both models on identical windows, prompts, texts and splits, and returns a
`Comparison` whose ``before`` and ``after`` dicts have the same keys, with the ``protocol`` that says what
was measured and how. Metrics relative to the original (KL, generation agreement, embedding fidelity) are
0 / 1 for the original by definition; the pruned model's values are measured against the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prune.errors import DataError
from prune.evaluation import fidelity, generation, perplexity, probe, speed
from prune.evaluation.results import Comparison, Evaluation
from prune.vocab import ModelKind


@dataclass(frozen=True)
class EvalSettings:
    """What to measure and how (every knob of the harness; the defaults are the fast pipeline default).

    Args:
        seq_len: Tokens per window (causal LMs) or truncation length per text (encoders); also the speed
            batch length.
        batch_size: Rows per forward pass, for evaluation and for the speed measurement.
        num_samples: Maximum number of windows (causal LMs) or texts (encoders) evaluated.
        stride: Window stride for perplexity (None: seq_len, non-overlapping).
        generation: Measure greedy-generation agreement (causal LMs with a reference).
        num_prompts: Prompts for the agreement.
        prompt_len: Tokens per prompt.
        new_tokens: Greedy tokens generated per prompt.
        speed: Measure latency, throughput and peak memory.
        warmup: Untimed forward passes before timing.
        repeats: Timed forward passes (median reported).
        probe: Measure classification accuracy (encoders): the model's head, or a logistic probe.
        probe_data: Labelled data for the probe ("default": offline Pang & Lee, online GLUE SST-2).
        probe_train: Probe training sentences.
        probe_test: Probe test sentences (disjoint from the training ones).
        probe_seq_len: Truncation length of probe sentences.
        lm_eval_tasks: lm-evaluation-harness task names to run too (needs the `lm-eval` extra).
        lm_eval_limit: Examples per lm-eval task (None: all).
        seed: Seed of the probe split.
        progress: Show a progress bar for every phase (perplexity, agreement, probe, latency).
    """

    seq_len: int = 256
    batch_size: int = 8
    num_samples: int = 64
    stride: int | None = None
    generation: bool = True
    num_prompts: int = 8
    prompt_len: int = 32
    new_tokens: int = 32
    speed: bool = True
    warmup: int = 2
    repeats: int = 5
    probe: bool = False
    probe_data: str = "default"
    probe_train: int = 2000
    probe_test: int = 1000
    probe_seq_len: int = 128
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_limit: int | None = None
    seed: int = 0
    progress: bool = False


@dataclass
class _Data:
    """The shared inputs both models see."""

    batches: list[dict[str, torch.Tensor]]
    stream: torch.Tensor | None = None
    split: probe.LabelledSplit | None = None
    protocol: dict[str, Any] = field(default_factory=dict)


def _stated_protocol(module: Any) -> str:
    """The "Protocol: ..." paragraph of a module docstring as one plain line (the docs and the report agree)."""
    text = module.__doc__.split("Protocol: ", 1)[1].split("\n\n", 1)[0]
    return " ".join(text.replace("``", "").split())


def _prepare(
    tokenizer: Any, kind: str, texts: Sequence[str] | None, batches: list | None, s: EvalSettings
) -> _Data:
    if kind not in tuple(ModelKind):
        choices = ", ".join(repr(k.value) for k in ModelKind)
        raise DataError(f"unknown model kind {kind!r}; use one of: {choices}")
    protocol: dict[str, Any] = {"kind": kind, "seq_len": s.seq_len, "batch_size": s.batch_size}
    data = _Data(batches=[], protocol=protocol)
    if kind == ModelKind.OTHER:
        return data
    if texts is None and batches is None:
        raise DataError(
            "evaluation needs texts or batches; pass eval_texts (e.g. from prune.data.load_texts)"
        )
    if kind == ModelKind.CAUSAL_LM:
        if texts is not None:
            data.stream = perplexity.encode_stream(tokenizer, texts)
            data.batches = perplexity.make_windows(
                data.stream,
                seq_len=s.seq_len,
                batch_size=s.batch_size,
                stride=s.stride,
                max_windows=s.num_samples,
            )
        else:
            data.batches = list(batches)
            data.stream = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in data.batches])
        protocol["perplexity"] = (
            _stated_protocol(perplexity)
            if texts is not None
            else "exp(mean NLL) over the given batches: every real token of a row but its first is scored"
        )
        protocol["num_windows"] = sum(b["input_ids"].shape[0] for b in data.batches)
        protocol["stride"] = s.stride or s.seq_len
        protocol["num_tokens_scored"] = int(sum(perplexity.score_mask(b).sum() for b in data.batches))
    else:
        if texts is not None:
            texts = [t for t in texts if t.strip()][: s.num_samples]
            data.batches = fidelity.encode_texts(tokenizer, texts, seq_len=s.seq_len, batch_size=s.batch_size)
        else:
            data.batches = list(batches)
        protocol["num_texts"] = sum(b["input_ids"].shape[0] for b in data.batches)
        if s.probe:
            data.split = probe.load_labelled_split(
                s.probe_data, num_train=s.probe_train, num_test=s.probe_test, seed=s.seed
            )
            protocol["probe"] = _stated_protocol(probe) + (
                f" Data: {data.split.source}; {s.probe_train} train / {s.probe_test} test sentences, seed "
                f"{s.seed}, truncated to {s.probe_seq_len} tokens."
            )
    return data


def _bar(items: Any, desc: str, s: EvalSettings, total: int | None = None) -> Any:
    """`items` with a progress bar when the settings ask for one (phases take minutes on a CPU)."""
    if not s.progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit="batch")


def _speed_and_size(
    model: torch.nn.Module, s: EvalSettings, name: str, passes: list | None = None
) -> dict[str, float]:
    """Size, and latency/throughput/peak memory: from the evaluation's own timed passes when there are
    enough of them (`passes`), else from dedicated passes."""
    out: dict[str, float] = dict(speed.size_metrics(model))
    if not s.speed:
        return out
    reused = (
        speed.latency_from_passes(
            passes, batch_size=s.batch_size, seq_len=s.seq_len, warmup=s.warmup, repeats=s.repeats
        )
        if passes
        else None
    )
    if reused is None:
        steps = _bar(range(1), f"timing {name}", s)
        for _ in steps:
            out.update(
                speed.speed_metrics(
                    model, batch_size=s.batch_size, seq_len=s.seq_len, warmup=s.warmup, repeats=s.repeats
                )
            )
        return out
    for _ in _bar(range(1), f"peak memory of {name}", s):
        peak = speed.peak_memory_mb(model, batch_size=s.batch_size, seq_len=s.seq_len)
    out.update({"latency_ms": reused["latency_ms"], "tokens_per_s": reused["tokens_per_s"]})
    out["peak_memory_mb"] = peak
    return out


def _lm_eval(model: torch.nn.Module, tokenizer: Any, s: EvalSettings) -> dict[str, float]:
    if not s.lm_eval_tasks:
        return {}
    from prune.evaluation.lm_eval_bridge import run_lm_eval

    results = run_lm_eval(
        model, tokenizer, list(s.lm_eval_tasks), batch_size=s.batch_size, limit=s.lm_eval_limit
    )
    return {
        f"lm_eval/{task}/{metric}": value
        for task, metrics in results.items()
        for metric, value in metrics.items()
    }


def _evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    kind: str,
    data: _Data,
    s: EvalSettings,
    reference: torch.nn.Module | None,
) -> tuple[dict[str, float], dict[str, float] | None]:
    """Metrics of `model`, and of `reference` on the same inputs when it is given (one paired pass)."""
    for m in (model, reference):
        limit = getattr(getattr(m, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and s.seq_len > limit:
            raise DataError(f"seq_len {s.seq_len} exceeds the model's {limit} positions; lower --seq-len")
    if reference is not None:
        sizes = [getattr(getattr(m, "config", None), "vocab_size", None) for m in (model, reference)]
        if None not in sizes and sizes[0] != sizes[1]:
            raise DataError(
                f"the model's vocabulary has {sizes[0]} tokens and the reference's {sizes[1]}: they do not share "
                "a tokenizer, so their outputs cannot be compared; compare a pruned model with its own original"
            )
    out: dict[str, float] = {}
    ref: dict[str, float] | None = {} if reference is not None else None
    passes: dict[str, list | None] = {"model": None, "reference": None}
    name = "pruned model" if reference is not None else "model"
    if kind == ModelKind.CAUSAL_LM:
        what = "perplexity and KL, both models" if reference is not None else "perplexity"
        scores = perplexity.score_tokens(
            model, _bar(data.batches, f"evaluating {what}", s), reference=reference
        )
        passes = {"model": scores.seconds, "reference": scores.reference_seconds}
        out.update(perplexity.perplexity_from_nll(scores.nll))
        if ref is not None:
            ref.update(perplexity.perplexity_from_nll(scores.reference_nll))
            out["kl_divergence"] = perplexity.mean_kl(scores.kl)["kl_divergence"]
            ref["kl_divergence"] = 0.0
            if s.generation:
                prompts = generation.prompts_from_stream(
                    data.stream, num_prompts=s.num_prompts, prompt_len=s.prompt_len
                )
                runs = {}
                for label, m in (("original", reference), ("pruned", model)):
                    steps = _bar(range(s.new_tokens), f"greedy agreement: {label}", s)
                    runs[label] = generation.greedy_continuations(
                        m, prompts, new_tokens=s.new_tokens, steps=steps
                    )
                out.update(generation.agreement(runs["original"], runs["pruned"]))
                ref.update({"token_agreement": 1.0, "exact_match": 1.0})
    elif kind == ModelKind.ENCODER:
        if ref is not None:
            emb = fidelity.mean_pooled_embeddings(model, _bar(data.batches, "embeddings: pruned", s))
            original = fidelity.mean_pooled_embeddings(
                reference, _bar(data.batches, "embeddings: original", s)
            )
            out.update(fidelity.cosine_fidelity(original, emb))
            ref.update({"cosine_mean": 1.0, "cosine_min": 1.0})
        if data.split is not None:
            kwargs = {"seq_len": s.probe_seq_len, "batch_size": s.batch_size}

            def wrap(label: str) -> Any:
                return (lambda batches: _bar(batches, f"probe: {label}", s)) if s.progress else None

            out.update(probe.classification_accuracy(model, tokenizer, data.split, wrap=wrap(name), **kwargs))
            if ref is not None:
                ref.update(
                    probe.classification_accuracy(
                        reference, tokenizer, data.split, wrap=wrap("original"), **kwargs
                    )
                )
    out.update(_speed_and_size(model, s, name, passes["model"]))
    out.update(_lm_eval(model, tokenizer, s))
    if ref is not None:
        ref.update(_speed_and_size(reference, s, "original", passes["reference"]))
        ref.update(_lm_eval(reference, tokenizer, s))
    return out, ref


def _protocol(data: _Data, s: EvalSettings, model: torch.nn.Module, relative: bool) -> dict[str, Any]:
    protocol = dict(data.protocol)
    protocol["device"] = str(next(model.parameters()).device)
    protocol["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    if relative and data.protocol["kind"] == ModelKind.CAUSAL_LM:
        protocol["kl_divergence"] = (
            "mean over the scored tokens of KL(original || model) of the next-token distributions "
            "(float32 log-softmax), nats; 0 for the original by definition"
        )
        if s.generation:
            protocol["generation"] = _stated_protocol(generation) + (
                f" Here {s.num_prompts} prompts x {s.prompt_len} tokens, {s.new_tokens} new tokens; "
                "1.0 for the original by definition."
            )
    if relative and data.protocol["kind"] == ModelKind.ENCODER:
        protocol["fidelity"] = _stated_protocol(fidelity)
    protocol["size"] = (
        "parameters: unique parameter elements; size_mb: bytes of the unique state-dict tensors / 2**20 (safetensors payload, header excluded)"
    )
    if s.speed:
        full = sum(tuple(b["input_ids"].shape) == (s.batch_size, s.seq_len) for b in data.batches)
        reused = data.protocol["kind"] == ModelKind.CAUSAL_LM and full - s.warmup >= max(1, s.repeats)
        timing = (
            f"the forward passes of the perplexity evaluation ({s.batch_size} x {s.seq_len} tokens, no KV "
            f"cache, {'both models interleaved batch by batch, ' if relative else ''}timed as they run): "
            f"the first {s.warmup} left out as warm-up, median of the other {full - s.warmup}"
            if reused
            else f"forward pass on {s.batch_size} x {s.seq_len} random token ids, no KV cache; {s.warmup} "
            f"warm-up passes, median of {s.repeats} timed passes"
        )
        protocol["speed"] = (
            f"latency: {timing}; throughput = tokens / median latency; peak memory: one more forward on "
            f"{s.batch_size} x {s.seq_len} random token ids, "
            + (
                "CUDA max_memory_allocated during one forward (weights included)"
                if protocol["device"].startswith("cuda")
                else "largest rise of the process RSS during one forward, sampled every 1 ms (weights excluded)"
            )
        )
    if s.lm_eval_tasks:
        protocol["lm_eval"] = f"lm-evaluation-harness tasks {list(s.lm_eval_tasks)}, limit {s.lm_eval_limit}"
    return protocol


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    kind: ModelKind,
    batches: list[dict[str, torch.Tensor]] | None = None,
    texts: Sequence[str] | None = None,
    reference: torch.nn.Module | None = None,
    settings: EvalSettings | None = None,
) -> dict[str, float]:
    """Metrics of one model: perplexity (causal LMs), probe accuracy (encoders, if asked), size and speed.

    With a `reference` (the original), also KL divergence and greedy agreement (causal LMs) or embedding
    fidelity (encoders) relative to it.

    Args:
        model: The model to evaluate.
        tokenizer: Its tokenizer.
        kind: "causal-lm", "encoder" or "other" (``prune.loading.model_kind``).
        batches: Evaluation batches (``prune.data.make_batches``); or pass `texts` instead.
        texts: Held-out texts, windowed by the harness (preferred: it knows the stride protocol).
        reference: The original model, for the relative metrics.
        settings: What to measure and how (default :class:`EvalSettings`).

    Example:
        >>> evaluate_model(model, tok, kind="causal-lm", texts=load_texts("default", purpose="eval"))  # doctest: +SKIP
        {'perplexity': 18.2, ...}
    """
    s = settings or EvalSettings()
    data = _prepare(tokenizer, kind, texts, batches, s)
    return _evaluate(model, tokenizer, kind, data, s, reference)[0]


def compare_models(
    original: torch.nn.Module,
    pruned: torch.nn.Module,
    tokenizer: Any,
    *,
    kind: ModelKind,
    eval_texts: Sequence[str] | None = None,
    seq_len: int | None = None,
    batch_size: int | None = None,
    batches: list[dict[str, torch.Tensor]] | None = None,
    settings: EvalSettings | None = None,
    **options: Any,
) -> Comparison:
    """Evaluate the original and the pruned model on the same data with the same protocol.

    Args:
        original: The model before pruning (the reference of the relative metrics).
        pruned: The model after pruning.
        tokenizer: The shared tokenizer.
        kind: "causal-lm", "encoder" or "other".
        eval_texts: Held-out texts (e.g. ``prune.data.load_texts("default", purpose="eval")``).
        seq_len: Window / truncation length (default: the settings', 256).
        batch_size: Rows per forward pass (default: the settings', 8).
        batches: Ready-made batches instead of `eval_texts`.
        settings: Full settings; `seq_len`, `batch_size` and `options` override its fields.
        **options: Any other :class:`EvalSettings` field, e.g. ``speed=False, probe=True, stride=128``.

    Example:
        >>> cmp = compare_models(model, pruned, tok, kind="causal-lm", eval_texts=texts, seq_len=256,
        ...                      batch_size=8, speed=False)  # doctest: +SKIP
        >>> print(cmp.to_markdown())  # doctest: +SKIP
    """
    from dataclasses import replace

    unknown = set(options) - set(EvalSettings.__dataclass_fields__)
    if unknown:
        raise DataError(
            f"unknown evaluation option(s) {sorted(unknown)}; use fields of EvalSettings: "
            f"{', '.join(sorted(EvalSettings.__dataclass_fields__))}"
        )
    given = {"seq_len": seq_len, "batch_size": batch_size}
    s = replace(settings or EvalSettings(), **{k: v for k, v in given.items() if v is not None}, **options)
    if "lm_eval_tasks" in options:
        s = replace(s, lm_eval_tasks=tuple(options["lm_eval_tasks"]))
    data = _prepare(tokenizer, kind, eval_texts, batches, s)
    after, before = _evaluate(pruned, tokenizer, kind, data, s, original)
    assert before is not None  # a reference was given
    return Comparison(before=before, after=after, protocol=_protocol(data, s, pruned, relative=True))


def evaluate_report(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    kind: ModelKind,
    texts: Sequence[str] | None = None,
    batches: list[dict[str, torch.Tensor]] | None = None,
    settings: EvalSettings | None = None,
) -> Evaluation:
    """Like :func:`evaluate_model` without a reference, with the protocol attached (for the CLI).

    Example:
        >>> print(evaluate_report(model, tok, kind="causal-lm", texts=texts).to_markdown())  # doctest: +SKIP
    """
    s = settings or EvalSettings()
    data = _prepare(tokenizer, kind, texts, batches, s)
    metrics = _evaluate(model, tokenizer, kind, data, s, None)[0]
    return Evaluation(metrics=metrics, protocol=_protocol(data, s, model, relative=False))
