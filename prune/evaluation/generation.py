"""Greedy-generation agreement of a causal LM with its original.

Protocol: ``num_prompts`` prompts of ``prompt_len`` tokens are cut from the evaluation token stream at
evenly spaced offsets; each model continues every prompt greedily (argmax, KV cache) for exactly
``new_tokens`` tokens (EOS does not stop it, so lengths match). Token agreement is the fraction of positions where the two
continuations hold the same token; exact match is the fraction of prompts whose continuations are equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from prune.errors import DataError
from prune.evaluation.metric_loader import aggregate
from prune.forward import forward_accepts


def prompts_from_stream(stream: torch.Tensor, *, num_prompts: int, prompt_len: int) -> torch.Tensor:
    """Cut `num_prompts` prompts of `prompt_len` tokens from evenly spaced offsets of a token stream.

    Args:
        stream: 1-D token ids (``prune.evaluation.perplexity.encode_stream``).
        num_prompts: How many prompts.
        prompt_len: Tokens per prompt.

    Example:
        >>> prompts_from_stream(torch.arange(100), num_prompts=2, prompt_len=3).tolist()
        [[0, 1, 2], [48, 49, 50]]
    """
    n = int(stream.numel())
    if num_prompts < 1 or prompt_len < 1:
        raise DataError("generation agreement needs num_prompts >= 1 and prompt_len >= 1; raise them")
    if n < prompt_len:
        raise DataError(
            f"the evaluation text has {n} tokens, fewer than one prompt of {prompt_len}; pass more text"
        )
    span = n - prompt_len
    starts = [span * i // num_prompts for i in range(num_prompts)] if span > 0 else [0] * num_prompts
    return torch.stack([stream[s : s + prompt_len] for s in starts])


@torch.no_grad()
def greedy_continuations(
    model: torch.nn.Module, prompts: torch.Tensor, *, new_tokens: int, steps: Iterable[int] | None = None
) -> torch.Tensor:
    """Greedy continuations of exactly `new_tokens` tokens for each prompt row, as [num_prompts, new_tokens].

    `steps` may be ``range(new_tokens)`` wrapped in a progress bar.

    Example:
        >>> tokens = greedy_continuations(model, prompts, new_tokens=16)  # doctest: +SKIP
    """
    # A plain greedy loop over the KV cache rather than `generate`: the checkpoint's generation defaults
    # (sampling, EOS stopping, which `generate` fills in even when told eos_token_id=None) must not apply,
    # and every continuation must have exactly `new_tokens` tokens.
    device = next(model.parameters()).device
    ids = prompts.to(device)
    # transformers >= 5.24 takes the KV cache as `cache` (`past_key_values` is deprecated); older releases
    # and custom models take `past_key_values`.
    cache_kwarg = "cache" if forward_accepts(model, "cache") else "past_key_values"
    was_training = model.training
    model.eval()
    tokens = []
    try:
        out = model(input_ids=ids, use_cache=True)
        for step in steps if steps is not None else range(new_tokens):
            next_token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(next_token)
            if step == new_tokens - 1:
                break
            ids = torch.cat([ids, next_token], dim=1)
            cache = _returned_cache(out)
            # Models without a cache recompute the whole sequence; the tokens are the same.
            out = (
                model(input_ids=next_token, use_cache=True, **{cache_kwarg: cache})
                if cache is not None
                else model(input_ids=ids)
            )
    finally:
        model.train(was_training)
    return torch.cat(tokens, dim=1).cpu()


def _returned_cache(out: Any) -> Any:
    """The KV cache a forward returned, under either name (None when the model returns none)."""
    for name in ("cache", "past_key_values"):
        value = out.get(name) if isinstance(out, dict) else getattr(out, name, None)
        if value is not None:
            return value
    return None


def agreement(reference_tokens: torch.Tensor, tokens: torch.Tensor) -> dict[str, Any]:
    """Token agreement and exact-match rate of two [num_prompts, new_tokens] continuations.

    Example:
        >>> agreement(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 2], [3, 5]]))["token_agreement"]
        0.75
    """
    if reference_tokens.shape != tokens.shape:
        raise DataError(
            f"continuations differ in shape {tuple(reference_tokens.shape)} vs {tuple(tokens.shape)}"
        )
    same = reference_tokens == tokens
    per_token = aggregate("mean", values=same.double().flatten().tolist())
    exact = aggregate("mean", values=same.all(dim=1).double().tolist())
    return {"token_agreement": per_token["mean"], "exact_match": exact["mean"]}
