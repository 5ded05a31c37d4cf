"""What the iterative search evaluates candidates with: `SearchContext`, a model and a few batches.

Objectives (`SearchContext.objective`): ``loss`` (causal LMs: next-token cross-entropy), ``kl`` (causal
LMs: KL from the original model's next-token distribution), ``cosine`` (any model: 1 - mean cosine of the
final hidden state to the original's). The original's outputs are computed once and cached. Strategies
that evaluate the model (``iterative``, ``span-repair``) get one through `prune.plan.SelectRequest`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prune.errors import PlanError
from prune.vocab import ModelKind

if TYPE_CHECKING:
    from prune.anatomy import Anatomy

OBJECTIVES = {
    "loss": "calibration loss",
    "kl": "KL divergence from the original model",
    "cosine": "1 - cosine of the final hidden state to the original's",
}
_KINDS_OF = {
    "loss": (ModelKind.CAUSAL_LM,),
    "kl": (ModelKind.CAUSAL_LM,),
    "cosine": (ModelKind.CAUSAL_LM, ModelKind.ENCODER),
}


@dataclass
class SearchContext:
    """What the iterative search evaluates candidates with: a model and a few calibration batches.

    Attributes:
        model: the original model; it is never modified (blocks are skipped temporarily).
        batches: calibration batches (dicts with ``input_ids`` and ``attention_mask``).
        kind: ``"causal-lm"`` or ``"encoder"``.
        objective: ``"loss"``, ``"kl"`` or ``"cosine"``; None picks ``loss`` for causal LMs and
            ``cosine`` for encoders.
        candidates_per_step: how many of the most redundant remaining blocks are evaluated per step (m).
        max_batches: evaluate on the first this many batches only (None: all of them).
        kl_top_k: ``kl`` compares the original's top-k tokens plus one "all others" bucket per position
            (a lower bound of the full KL that keeps the cache small); None compares the whole vocabulary.
        anatomy: where the blocks are (found with `prune.anatomy.get_anatomy` when None).
        progress: show a progress bar.

    Example:
        >>> ctx = SearchContext(model, batches, kind="causal-lm", objective="loss")  # doctest: +SKIP
        >>> ctx.evaluate([2, 3])  # loss without blocks 2 and 3  # doctest: +SKIP
        3.91
    """

    model: nn.Module
    batches: list[dict[str, Tensor]]
    kind: str = ModelKind.CAUSAL_LM
    objective: str | None = None
    candidates_per_step: int = 4
    max_batches: int | None = 4
    kl_top_k: int | None = 256
    anatomy: Anatomy | None = None
    progress: bool = False
    _reference: list[Any] | None = field(default=None, init=False, repr=False)
    _cache: dict[tuple[int, ...], float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in (ModelKind.CAUSAL_LM, ModelKind.ENCODER):
            raise PlanError(
                f"the iterative search cannot score a model of kind {self.kind!r}; use a causal LM or an encoder, "
                "or a score-based strategy (span, topk)"
            )
        if self.objective is None:
            self.objective = "loss" if self.kind == ModelKind.CAUSAL_LM else "cosine"
        if self.objective not in OBJECTIVES:
            raise PlanError(
                f"unknown search objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}"
            )
        if self.kind not in _KINDS_OF[self.objective]:
            raise PlanError(
                f"objective {self.objective!r} needs a causal LM; use objective='cosine' for an {self.kind}"
            )
        if self.candidates_per_step < 1:
            raise PlanError(f"candidates_per_step is {self.candidates_per_step}; pass 1 or more")
        if self.max_batches is not None and self.max_batches < 1:
            raise PlanError(f"max_batches is {self.max_batches}; pass 1 or more, or None for all batches")
        if self.kl_top_k is not None and self.kl_top_k < 1:
            raise PlanError(f"kl_top_k is {self.kl_top_k}; pass 1 or more, or None for the whole vocabulary")
        self.batches = list(self.batches)
        if not self.batches:
            raise PlanError("the iterative search got no calibration batches; pass at least one batch")

    @property
    def used_batches(self) -> list[dict[str, Tensor]]:
        """The batches every candidate is evaluated on."""
        return self.batches if self.max_batches is None else self.batches[: self.max_batches]

    def evaluate(self, drop: Iterable[int] = ()) -> float:
        """The objective of the model without the blocks in `drop` (lower is better).

        Results are cached per set of blocks (the model and batches must not change while the context
        is in use), so plans for several targets on one context share their common search steps.

        Args:
            drop: block indices to skip; empty evaluates the original model.
        """
        from prune.anatomy import get_anatomy
        from prune.surgery import blocks_skipped

        key = tuple(sorted(drop))
        if key in self._cache:
            return self._cache[key]
        if self.anatomy is None:  # found once, not on every one of the many evaluations
            self.anatomy = get_anatomy(self.model)
        reference = self.reference()
        # The outputs are a generator: it must run to the end inside the context, one batch at a time.
        with blocks_skipped(self.model, key, anatomy=self.anatomy):
            value = self._score(self._outputs(), reference)
        self._cache[key] = value
        return value

    def reference(self) -> list[Any]:
        """The original model's outputs the objective compares with, computed once (none for ``loss``)."""
        if self._reference is None:
            if self.objective == "loss":
                self._reference = [None] * len(self.used_batches)
            else:
                self._reference = [self._summarise(out) for out in self._outputs()]
        return self._reference

    def _outputs(self):
        """Yields, per batch, (what the model returned for the objective, the batch mask), lazily."""
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in self.used_batches:
                inputs = {
                    k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor) and k != "labels"
                }
                mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
                with torch.inference_mode():
                    if self.objective == "cosine":
                        out = self.model(**inputs, output_hidden_states=True, return_dict=True)
                        final = getattr(out, "last_hidden_state", None)
                        result = final if final is not None else out.hidden_states[-1]
                    else:
                        result = self.model(**inputs, use_cache=False, return_dict=True).logits
                yield result.float(), inputs["input_ids"], mask
        finally:
            self.model.train(was_training)

    def _summarise(self, out) -> Any:
        """What to keep of the original's output for one batch (small: see `kl_top_k`)."""
        result, _, mask = out
        if self.objective == "cosine":
            return result[mask].cpu()
        logp = torch.log_softmax(result[:, :-1][mask[:, :-1]], dim=-1)
        k = logp.shape[-1] if self.kl_top_k is None else min(self.kl_top_k, logp.shape[-1])
        top, index = logp.topk(k, dim=-1)
        return top.cpu(), index.cpu()

    def _score(self, outputs, reference: list[Any]) -> float:
        total, count = 0.0, 0
        for (result, input_ids, mask), ref in zip(outputs, reference, strict=True):
            if self.objective == "loss":
                valid = mask[:, 1:] & mask[:, :-1]
                logits, targets = result[:, :-1][valid], input_ids[:, 1:][valid]
                total += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
                count += int(valid.sum())
            elif self.objective == "cosine":
                cos = nn.functional.cosine_similarity(result[mask].cpu(), ref, dim=-1)
                total += float((1.0 - cos).sum())
                count += cos.numel()
            else:
                total += float(
                    _bucket_kl(torch.log_softmax(result[:, :-1][mask[:, :-1]], dim=-1).cpu(), *ref).sum()
                )
                count += ref[0].shape[0]
        return total / max(count, 1)


def _bucket_kl(logq: Tensor, ref_top: Tensor, ref_index: Tensor) -> Tensor:
    """Per-position KL(p || q) over the reference's top-k tokens plus one bucket for all other tokens.

    Summed in float64: the divergences of a good candidate are small differences of large log-probs.
    """
    q_top = logq.gather(-1, ref_index).double()
    p_log = ref_top.double()
    kl = (p_log.exp() * (p_log - q_top)).sum(-1)
    if ref_top.shape[-1] == logq.shape[-1]:  # the whole vocabulary: no rest bucket
        return kl
    p_rest = (1.0 - p_log.exp().sum(-1)).clamp_min(0.0)
    q_rest = (1.0 - q_top.exp().sum(-1)).clamp_min(1e-12)
    # 0 * log 0 counts as 0 (the reference put all its mass on its top k).
    rest = torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-300).log() - q_rest.log()), 0.0)
    return kl + rest
