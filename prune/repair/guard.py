"""The repair guard: keep the plain cut when the repair made the model worse on held-back data.

The repair (and the refit) minimise the reconstruction error of hidden states on the calibration tokens,
not what the user measures. Where a map overfits the calibration tokens (a long span, few tokens: SmolLM2-135M
30 -> 21 with span + linear went from 289 to 520 held-out perplexity) or where matching the hidden state
does not help the output (MPNet's post-norm affine fold: 0.837 -> 0.749 cosine), the repaired model is
worse than the plain cut. `guard_repair` scores both on held-back calibration sequences that nothing was
fitted on, with the loss the budget search uses (`held_back_loss`: mean next-token loss for causal LMs,
mean ``1 - cos`` of the final hidden state to the original's for encoders), and says which to keep.
Its cost is three forward passes over the held-back sequences (original, plain cut, repaired), a small
share of the repair's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# The kinds whose held-back loss is defined; others are not guarded (the report says so).
GUARDED_KINDS = ("causal-lm", "encoder")


@dataclass(frozen=True)
class GuardResult:
    """The guard's verdict on one repaired cut.

    Attributes:
        loss_plain: held-back loss of the plain cut (the same blocks removed, no repair).
        loss_repaired: held-back loss of the repaired (and refitted) cut.
        measure: what the loss is: ``next-token loss`` or ``1 - cosine to the original``.
        kept: ``repaired`` or ``plain`` (the plain cut is kept when the repair raised the loss).
        sequences: how many held-back sequences were scored.
        tokens: how many of their tokens.
        seconds: time of the guard's forward passes.
    """

    loss_plain: float
    loss_repaired: float
    measure: str
    kept: str
    sequences: int
    tokens: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict for the repair report (perplexities added for causal LMs)."""
        data = asdict(self)
        if self.measure == "next-token loss":
            data["perplexity_plain"] = _exp(self.loss_plain)
            data["perplexity_repaired"] = _exp(self.loss_repaired)
        return data


def outputs(model: nn.Module, batch: dict, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`model`'s logits (causal LMs) or final hidden states (others) on `batch`, with its ids and mask.

    Returns:
        (float32 outputs on the CPU, input ids, boolean attention mask).
    """
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if kind == "causal-lm":
                out = model(**inputs, use_cache=False, return_dict=True).logits
            else:
                out = model(**inputs, output_hidden_states=True, return_dict=True)
                final = getattr(out, "last_hidden_state", None)
                out = final if final is not None else out.hidden_states[-1]
    finally:
        model.train(was_training)
    return out.float().cpu(), inputs["input_ids"].cpu(), mask.cpu()


def reference_outputs(original: nn.Module, batches: Sequence[dict], kind: str) -> list[Any]:
    """What `held_back_loss` compares encoders with: the original's final hidden states (None for LMs)."""
    if kind == "causal-lm":
        return [None] * len(batches)
    return [out[mask] for out, _, mask in (outputs(original, b, kind) for b in batches)]


def held_back_loss(model: nn.Module, batches: Sequence[dict], kind: str, reference: Sequence[Any]) -> float:
    """Mean next-token loss (causal LMs) or mean ``1 - cos`` to `reference` (encoders); lower is better.

    Example:
        >>> ref = reference_outputs(original, held, "encoder")  # doctest: +SKIP
        >>> held_back_loss(pruned, held, "encoder", ref) >= 0  # doctest: +SKIP
        True
    """
    total, count = 0.0, 0
    for batch, ref in zip(batches, reference, strict=True):
        out, ids, mask = outputs(model, batch, kind)
        if kind == "causal-lm":
            valid = mask[:, 1:] & mask[:, :-1]
            logits, targets = out[:, :-1][valid], ids[:, 1:][valid]
            total += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += int(valid.sum())
        else:
            cos = nn.functional.cosine_similarity(out[mask], ref, dim=-1)
            total += float((1.0 - cos).sum())
            count += cos.numel()
    return total / max(count, 1)


def guard_repair(
    original: nn.Module, plain: nn.Module, repaired: nn.Module, batches: Sequence[dict], kind: str
) -> GuardResult:
    """Score the plain cut and the repaired cut on held-back `batches`; keep the repaired one unless worse.

    Args:
        original: the uncut model (the encoders' reference).
        plain: the cut model without its repair.
        repaired: the same cut, repaired (and refitted).
        batches: held-back calibration batches (nothing was fitted on them).
        kind: ``causal-lm`` or ``encoder`` (`GUARDED_KINDS`).

    Returns:
        The `GuardResult`; ``kept == "plain"`` when the repair raised the held-back loss.

    Example:
        >>> guard_repair(model, plain, repaired, held, "causal-lm").kept  # doctest: +SKIP
        'repaired'
    """
    import time

    started = time.perf_counter()
    reference = reference_outputs(original, batches, kind)
    loss_plain = held_back_loss(plain, batches, kind, reference)
    loss_repaired = held_back_loss(repaired, batches, kind, reference)
    masks = [b.get("attention_mask", torch.ones_like(b["input_ids"])) for b in batches]
    return GuardResult(
        loss_plain=float(f"{loss_plain:.6g}"),
        loss_repaired=float(f"{loss_repaired:.6g}"),
        measure="next-token loss" if kind == "causal-lm" else "1 - cosine to the original",
        kept="plain" if loss_repaired > loss_plain else "repaired",
        sequences=sum(int(m.shape[0]) for m in masks),
        tokens=sum(int(m.sum()) for m in masks),
        seconds=round(time.perf_counter() - started, 3),
    )


def rank_repaired_cuts(
    original: nn.Module,
    anatomy: Any,
    drops: Sequence[tuple[int, ...]],
    batches: Sequence[dict],
    held: Sequence[dict],
    kind: str,
    *,
    method: str = "linear",
    objective: str = "mse",
    max_tokens: int | None = None,
    skip_tokens: int = 0,
) -> list[tuple[float, float]]:
    """The held-back loss of each cut in `drops`, plain and after its repair (fitted on `batches`).

    Each cut is a weight-sharing copy of `original`, scored with `held_back_loss` on `held` as it is
    and after `method` is folded in (one pass, every span fitted on the original; no refit). The
    repair-aware default (`prune.stages.depth.plan`) ranks the cuts of several strategies with it.

    Returns:
        One (plain loss, repaired loss) per cut, in the order of `drops` (lower is better).

    Example:
        >>> rank_repaired_cuts(model, anatomy, [(3, 4), (2, 5)], batches, held, "causal-lm")  # doctest: +SKIP
        [(4.35, 3.91), (4.40, 4.02)]
    """
    from prune.repair.stage import repair_cut
    from prune.surgery import remove_blocks

    reference = reference_outputs(original, held, kind)
    losses = []
    for drop in drops:
        cut = remove_blocks(original, drop, anatomy=anatomy, share_weights=True)
        plain = held_back_loss(cut, held, kind, reference)
        repair_cut(
            original,
            cut,
            drop,
            batches,
            method=method,
            anatomy=anatomy,
            order="one-pass",
            objective=objective,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            skip_tokens=skip_tokens,
            progress=False,
        )
        losses.append((plain, held_back_loss(cut, held, kind, reference)))
        del cut
    return losses


def _exp(loss: float) -> float:
    return float(f"{math.exp(loss):.6g}") if loss < 700 else math.inf


__all__ = [
    "GUARDED_KINDS",
    "GuardResult",
    "guard_repair",
    "held_back_loss",
    "outputs",
    "rank_repaired_cuts",
    "reference_outputs",
]
