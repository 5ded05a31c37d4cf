"""Embedding fidelity of an encoder to its original.

Protocol: each text is one row (truncated to ``seq_len`` tokens, padded); its embedding is the mean of the
last hidden state over its real (attention-mask) tokens. Fidelity is the cosine similarity between the
original's and the pruned model's embedding of the same text, reported as the mean and the minimum over
texts (1.0 for identical models).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from prune.errors import DataError
from prune.evaluation.metric_loader import aggregate


def encode_texts(
    tokenizer: Any, texts: Sequence[str], *, seq_len: int, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """Batches of one text per row, truncated to `seq_len`, padded, with ``attention_mask``.

    Example:
        >>> batches = encode_texts(tokenizer, ["a film", "a long film"], seq_len=32, batch_size=8)  # doctest: +SKIP
    """
    if not texts:
        raise DataError("no texts to embed; pass --data with non-empty text")
    if batch_size < 1 or seq_len < 1:
        raise DataError(f"bad batch_size={batch_size} or seq_len={seq_len}; both must be >= 1")
    batches = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            truncation=True,
            max_length=seq_len,
            padding=True,
            return_tensors="pt",
        )
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


@torch.no_grad()
def mean_pooled_embeddings(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]
) -> torch.Tensor:
    """Mean-pooled last hidden states, one float32 row per text, on CPU.

    ``output_hidden_states=True`` makes this work for bare encoders and for models with a head alike
    (``hidden_states[-1]`` is the last block's output, after any final norm the model applies).

    Example:
        >>> emb = mean_pooled_embeddings(model, batches)  # doctest: +SKIP
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for batch in batches:
            mask = batch["attention_mask"].to(device)
            out = model(
                input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=True
            )
            hidden = out.hidden_states[-1].float()
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            rows.append(((hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(rows)


def cosine_fidelity(reference_embeddings: torch.Tensor, embeddings: torch.Tensor) -> dict[str, float]:
    """Mean and min per-text cosine similarity between two [num_texts, dim] embedding matrices.

    Example:
        >>> x = torch.randn(4, 8)
        >>> round(cosine_fidelity(x, x)["cosine_mean"], 6)
        1.0
    """
    if reference_embeddings.shape != embeddings.shape:
        raise DataError(
            f"embedding shapes differ {tuple(reference_embeddings.shape)} vs {tuple(embeddings.shape)}; "
            "compare models with the same hidden size on the same texts"
        )
    cos = F.cosine_similarity(reference_embeddings.double(), embeddings.double(), dim=-1)
    stats = aggregate("mean", values=cos.tolist())
    return {"cosine_mean": stats["mean"], "cosine_min": stats["min"]}
