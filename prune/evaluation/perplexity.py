"""Perplexity and KL divergence of causal LMs on held-out text, with a stated protocol.

Protocol: the texts are tokenized without special tokens and concatenated with the EOS token between them
into one stream; the stream is cut into windows of ``seq_len`` tokens starting every ``stride`` tokens
(default ``stride = seq_len``: non-overlapping); tail tokens that do not fill a window are dropped. The
first token of the stream has no context and is never predicted. With ``stride < seq_len`` (the sliding
window of the Hugging Face perplexity guide) every window after the first scores only its last ``stride``
tokens, which are new, so each token is counted once and sees ``seq_len - stride`` tokens of context or
more. With ``stride = seq_len`` the first token of every window is not predicted. Perplexity is
exp(mean NLL) over the scored tokens; KL(reference || model) is averaged over the same token positions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from prune.errors import DataError
from prune.evaluation.metric_loader import aggregate
from prune.finite import check_finite_logits


def encode_stream(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Tokenize `texts` into one 1-D stream of token ids, EOS between texts.

    Args:
        tokenizer: A Hugging Face tokenizer (its EOS token separates the texts when it has one).
        texts: The held-out texts.

    Example:
        >>> stream = encode_stream(tokenizer, ["Hello world.", "Bye."])  # doctest: +SKIP
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError("no evaluation text (all texts are empty); pass --data with non-empty text")
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        if ids and eos is not None:
            ids.append(int(eos))
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    from prune.data import check_known_tokens

    check_known_tokens(tokenizer, [ids])
    return torch.tensor(ids, dtype=torch.long)


def make_windows(
    stream: torch.Tensor,
    *,
    seq_len: int,
    batch_size: int,
    stride: int | None = None,
    max_windows: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Cut a token stream into batches of scoring windows (see the module docstring for the protocol).

    Each batch has ``input_ids``, ``attention_mask`` and ``score_mask`` ([b, seq_len]; True where the token
    is a scored target, predicted from the tokens before it).

    Args:
        stream: 1-D token ids (from :func:`encode_stream`).
        seq_len: Tokens per window.
        batch_size: Windows per batch.
        stride: Start-to-start distance of windows; ``None`` means ``seq_len`` (non-overlapping).
        max_windows: Keep only the first this many windows.

    Example:
        >>> batches = make_windows(torch.arange(100), seq_len=10, batch_size=4)
        >>> len(batches), int(sum(b["score_mask"].sum() for b in batches))
        (3, 90)
    """
    stride = seq_len if stride is None else stride
    if seq_len < 2 or not 1 <= stride <= seq_len or batch_size < 1:
        raise DataError(
            f"bad window protocol seq_len={seq_len} stride={stride} batch_size={batch_size}; "
            "use seq_len >= 2, 1 <= stride <= seq_len and batch_size >= 1"
        )
    n = int(stream.numel())
    if n < seq_len:
        raise DataError(
            f"the evaluation text has only {n} tokens, fewer than one window of {seq_len}; "
            "lower --seq-len or pass more text"
        )
    starts = list(range(0, n - seq_len + 1, stride))
    if max_windows is not None:
        starts = starts[:max_windows]
    rows, masks = [], []
    for i, start in enumerate(starts):
        mask = torch.zeros(seq_len, dtype=torch.bool)
        # The first window predicts all but its first token; later ones only the tokens no earlier window
        # scored (with stride == seq_len that is also everything but the first token).
        mask[1 if i == 0 else max(1, seq_len - stride) :] = True
        rows.append(stream[start : start + seq_len])
        masks.append(mask)
    batches = []
    for b in range(0, len(rows), batch_size):
        ids = torch.stack(rows[b : b + batch_size])
        batches.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "score_mask": torch.stack(masks[b : b + batch_size]),
            }
        )
    return batches


def score_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scored-target mask of a batch: its ``score_mask``, else every real token preceded by a real one.

    The fallback makes batches from ``prune.data.make_batches`` (no ``score_mask``) score the same tokens
    as non-overlapping windows: all but the first token of each row, and no padding.
    """
    if "score_mask" in batch:
        return batch["score_mask"].bool()
    attn = batch.get("attention_mask")
    attn = torch.ones_like(batch["input_ids"]) if attn is None else attn
    mask = torch.zeros_like(attn, dtype=torch.bool)
    mask[:, 1:] = attn[:, 1:].bool() & attn[:, :-1].bool()
    return mask


@dataclass
class TokenScores:
    """Per scored token: the model's NLL, the reference's NLL and KL(reference || model), float64 on CPU."""

    nll: torch.Tensor
    reference_nll: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    # Wall seconds of each batch's forward pass and its [rows, tokens] shape (the latency measurement
    # reuses the passes of this evaluation instead of running its own: see prune.evaluation.speed).
    seconds: list[tuple[tuple[int, int], float]] = field(default_factory=list)
    reference_seconds: list[tuple[tuple[int, int], float]] = field(default_factory=list)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], times: list | None = None
) -> torch.Tensor:
    device = _device(model)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if times is not None:
        times.append(((int(ids.shape[0]), int(ids.shape[1])), time.perf_counter() - start))

    def hidden_states() -> tuple[torch.Tensor, ...]:
        return model(
            input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True
        ).hidden_states

    return check_finite_logits(out.logits, f"{type(model).__name__}, evaluation batch", hidden_states)


@torch.no_grad()
def score_tokens(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    reference: torch.nn.Module | None = None,
) -> TokenScores:
    """Run `model` (and `reference`, on the same batches) and score every target token.

    Logits at position t predict token t+1; the scored targets are those of :func:`score_mask`. The
    log-softmax is taken in float32 whatever the model dtype, one row at a time to bound memory.

    Args:
        model: A causal LM (``model(input_ids=...).logits``).
        batches: Batches with ``input_ids`` and ``attention_mask`` (and optionally ``score_mask``).
        reference: The original model; when given, its NLL and KL(reference || model) are scored too.

    Example:
        >>> scores = score_tokens(pruned, batches, reference=original)  # doctest: +SKIP
        >>> float(scores.kl.mean())  # doctest: +SKIP
    """
    was_training = [m.training for m in (model, reference) if m is not None]
    for m in (model, reference):
        if m is not None:
            m.eval()
    nll, ref_nll, kl = [], [], []
    seconds: list = []
    ref_seconds: list = []
    try:
        for batch in batches:
            mask = score_mask(batch)[:, 1:]
            targets = batch["input_ids"][:, 1:]
            logits = _logits(model, batch, seconds)
            ref_logits = _logits(reference, batch, ref_seconds) if reference is not None else None
            for row in range(targets.shape[0]):
                keep = mask[row]
                if not keep.any():
                    continue
                tgt = targets[row][keep].to(logits.device)
                logp = F.log_softmax(logits[row, :-1][keep.to(logits.device)].float(), dim=-1)
                nll.append(-logp.gather(-1, tgt[:, None])[:, 0].double().cpu())
                if ref_logits is not None:
                    ref = F.log_softmax(ref_logits[row, :-1][keep.to(ref_logits.device)].float(), dim=-1)
                    ref = ref.to(logp.device)
                    ref_nll.append(-ref.gather(-1, tgt[:, None])[:, 0].double().cpu())
                    kl.append((ref.exp() * (ref - logp)).sum(-1).double().cpu())
    finally:
        for m, training in zip([m for m in (model, reference) if m is not None], was_training, strict=True):
            m.train(training)
    if not nll:
        raise DataError(
            "no token to score in the evaluation batches; pass longer texts or a larger --seq-len"
        )
    return TokenScores(
        nll=torch.cat(nll),
        reference_nll=torch.cat(ref_nll) if ref_nll else None,
        kl=torch.cat(kl) if kl else None,
        seconds=seconds,
        reference_seconds=ref_seconds,
    )


def perplexity_from_nll(nll: torch.Tensor) -> dict[str, float]:
    """Perplexity, mean NLL and token count of per-token NLLs, through the shipped `evaluate` module.

    Example:
        >>> round(perplexity_from_nll(torch.tensor([1.0, 3.0]))["perplexity"], 4)
        7.3891
    """
    return aggregate("perplexity", nll=nll.double().tolist())


def mean_kl(kl: torch.Tensor) -> dict[str, float]:
    """Mean and max per-token KL divergence, through the shipped `evaluate` module."""
    return aggregate("kl_divergence", kl=kl.double().tolist())
