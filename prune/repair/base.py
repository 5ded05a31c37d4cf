"""What every repair method shares: the fitted map, the per-span record, the report, the registry.

A repair method knows, for a cut span after kept block ``l`` ending at block ``e``, which activations to
capture (`RepairMethod.sites`), which float64 sums to build from them (`RepairMethod.sums`), how to fit
its map from those sums alone (`RepairMethod.fit`: closed form, no tokens kept) and how to fold the map
into the pruned model's weights (`RepairMethod.fold`). Methods register themselves in `REPAIRS` from
their own module; ``none`` is the plain cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from prune.errors import RepairError
from prune.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from prune.anatomy.mlp import MlpAnatomy
    from prune.collect.capture import CaptureSite, SiteSum


# Ridge grid, relative to the mean diagonal of the Gram matrix; chosen per span on held-out calibration
# tokens (two halves of the batches, each fitted on one and scored on the other).
RIDGE_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class Fit:
    """A fitted map and its calibration errors (relative: squared error / ``||h_e||^2``).

    Attributes:
        kind: "full" (d x d into a down projection), "affine" (per-channel a, c into a LayerNorm),
            "channel-scale" (per-channel s into a norm), "scalar" (one factor), "identity".
        tensors: the map's parameters (float64), e.g. ``{"delta": T - I, "offset": c}``.
        residual_before: relative error of the plain cut at the junction.
        residual_after: relative error after the map (never above `residual_before` for least squares).
        ridge: the relative ridge used (None when the method has none).
    """

    kind: str
    tensors: dict[str, Tensor]
    residual_before: float
    residual_after: float
    ridge: float | None = None


@dataclass(frozen=True)
class SpanRepair:
    """What was done to one cut span (original block indices).

    Attributes:
        first, last: the cut span, inclusive.
        kept_block: the last kept block before it (None for a span starting at block 0).
        method: the repair method's name.
        map: what was fitted and where it was folded, in words.
        residual_before, residual_after: relative calibration error at the junction, before and after.
        ridge: relative ridge of the fit (None: no ridge).
        tokens: calibration tokens the fit used.
        seconds: time to capture, fit and fold this span.
        skipped: why the span was not repaired (None when it was).
    """

    first: int
    last: int
    kept_block: int | None
    method: str
    map: str
    residual_before: float | None
    residual_after: float | None
    ridge: float | None
    tokens: int
    seconds: float
    skipped: str | None = None


@dataclass
class RepairReport:
    """The repair of a whole cut: one `SpanRepair` per contiguous span, and the warnings.

    Attributes:
        method: the repair method applied to the model: "none" when it is the plain cut, also where
            another method was asked for and fitted nothing, could not be used, or was fitted and then
            discarded by the repair guard (`method_requested` says which).
        order: "sequential" (each span fitted on the model with the earlier spans cut and repaired)
            or "one-pass" (every span fitted on the original model in one pass).
        objective: "mse" or "relative" (see `prune.repair.stage.repair_cut`).
        spans: per-span records, in block order.
        seconds: total time.
        warnings: spans left unrepaired and why.
        refit: the error-correcting refit after the maps (`prune.repair.refit.RefitReport.to_dict`), or
            None when it was not asked for.
        guard: the repair guard's verdict (`prune.repair.guard.GuardResult.to_dict`; ``kept: plain`` when
            the repair raised the held-back loss and the plain cut was kept), or None when not guarded.
        method_requested: the repair method the run asked for (defaults to `method`). The spans and the
            refit record what that method fitted, applied or not.
    """

    method: str
    order: str
    objective: str
    spans: list[SpanRepair] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    refit: dict[str, Any] | None = None
    guard: dict[str, Any] | None = None
    method_requested: str = ""

    def __post_init__(self) -> None:
        if not self.method_requested:
            self.method_requested = self.method

    @property
    def applied(self) -> bool:
        """Whether the repaired model was kept (False: no map fitted, or the guard kept the plain cut)."""
        fitted = any(span.skipped is None for span in self.spans) or self.refit is not None
        return self.method != "none" and fitted and (self.guard or {}).get("kept") != "plain"

    def keep_plain_cut(self) -> None:
        """Record that the model is the plain cut after all: `method` becomes ``none``, while
        `method_requested`, the spans and the refit still say what was asked for and fitted."""
        self.method = "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict for the pruning report and model card (``method`` is what was applied,
        ``method_requested`` what was asked for; reports written before it have ``method`` only)."""
        return {
            "method": self.method,
            "method_requested": self.method_requested,
            "order": self.order,
            "objective": self.objective,
            "seconds": round(self.seconds, 3),
            "spans": [asdict(span) for span in self.spans],
            "warnings": list(self.warnings),
            "refit": self.refit,
            "guard": self.guard,
        }


@dataclass(frozen=True)
class RepairMethod:
    """Base of the repair methods (an instance per registered name).

    Attributes:
        name: registered name (``--repair NAME``).
        description: one line for help texts.
        needs_kept_block: whether a span needs a kept block before it (False: it can repair a cut at 0).
        least_squares: whether the fit minimises the reported error (then it never exceeds the plain cut's).
    """

    name: str
    description: str
    needs_kept_block: ClassVar[bool] = True
    least_squares: ClassVar[bool] = False

    def check(self, mlp: MlpAnatomy | None) -> MlpAnatomy:
        """The MLP anatomy this method needs, or a RepairError naming what is missing."""
        if mlp is None or mlp.residual is None:
            raise RepairError(
                f"repair {self.name!r} needs to know how each block's MLP meets the residual stream, and this "
                'model\'s anatomy does not say; add an "mlp" entry with "residual" to its family file, or '
                "use --repair none"
            )
        return mlp

    def needs_kept(self, mlp: MlpAnatomy) -> bool:
        """Whether a span of this model needs a kept block before it (a cut at block 0 is skipped)."""
        return self.needs_kept_block

    def sites(self, mlp: MlpAnatomy, kept: int | None, end: int) -> dict[str, CaptureSite]:
        """Capture sites for a span after block `kept` (None: the model input) ending at block `end`."""
        raise NotImplementedError

    def sums(self, mlp: MlpAnatomy, weighted: bool) -> list[SiteSum]:
        """The float64 sums the fit reads; `weighted` weights each token by ``1 / ||h_e||^2``."""
        raise NotImplementedError

    def fit(self, sums: Mapping[str, Tensor], mlp: MlpAnatomy, ridge: float | None, **kw: Any) -> Fit:
        """The map from the sums (`ridge`: relative ridge; None: the method's default)."""
        raise NotImplementedError

    def error(self, fit: Fit, sums: Mapping[str, Tensor], mlp: MlpAnatomy) -> float:
        """Relative error of `fit` on other sums of the same kind (held-out tokens)."""
        raise NotImplementedError

    def fold(self, blocks: nn.ModuleList, kept: int | None, after: range, fit: Fit, mlp: MlpAnatomy) -> str:
        """Fold `fit` into a model's blocks, in place; returns where, in words.

        Args:
            blocks: the model's block list.
            kept: index (in `blocks`) of the last kept block before the span; None for a cut at block 0.
            after: indices (in `blocks`) of the kept blocks after the span.
            fit: what `fit` returned.
            mlp: the MLP anatomy.
        """
        raise NotImplementedError

    def identity(self, mlp: MlpAnatomy, width: int) -> Fit:
        """The fit that changes nothing (for the identity tests)."""
        raise NotImplementedError

    def describe(self, mlp: MlpAnatomy) -> str:
        """What this method fits for this MLP anatomy, in words."""
        return self.description

    def has_intercept(self, block: nn.Module, mlp: MlpAnatomy) -> bool:
        """Whether the fit may include an offset (only where a bias can hold it)."""
        return False


REPAIRS: Registry[RepairMethod] = Registry("repair method")


def register(method: RepairMethod) -> RepairMethod:
    """Add `method` to `REPAIRS` under its own name."""
    return REPAIRS.register(method.name, method)


def get_repair(name: str) -> RepairMethod:
    """The registered repair method `name`, or a RepairError listing the valid names."""
    try:
        return REPAIRS.get(name)
    except KeyError as err:
        raise RepairError(f"{err.args[0]} (--repair)") from None


def contiguous_spans(drop: Iterable[int]) -> list[tuple[int, int]]:
    """The maximal runs of consecutive indices, as (first, last) pairs.

    Example:
        >>> contiguous_spans([7, 2, 3, 4, 9])
        [(2, 4), (7, 7), (9, 9)]
    """
    spans: list[tuple[int, int]] = []
    for index in sorted(set(drop)):
        if spans and index == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], index)
        else:
            spans.append((index, index))
    return spans


def solve_ridge(gram: Tensor, rhs: Tensor, ridge: float, penalised: int | None = None) -> Tensor:
    """``(G + lambda I)^-1 rhs`` with ``lambda = ridge * mean(diag G)``, by Cholesky (float64).

    Args:
        gram: [k, k] symmetric positive semi-definite.
        rhs: [k, m].
        ridge: relative ridge.
        penalised: only the first this many unknowns get the ridge (an intercept row does not).

    Falls back to least squares when G is singular and the ridge too small to make it definite.
    """
    gram = gram.to(torch.float64)
    k = gram.shape[0] if penalised is None else penalised
    scale = float(torch.diagonal(gram)[:k].mean().clamp_min(1e-30))
    diagonal = torch.zeros(gram.shape[0], dtype=torch.float64)
    diagonal[:k] = ridge * scale
    system = gram + torch.diag(diagonal)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(rhs.to(torch.float64), factor)
    return torch.linalg.lstsq(system, rhs.to(torch.float64)).solution


def rows_weight(target: Tensor) -> Tensor:
    """Per-token weight ``1 / ||h_e||`` (rows scaled by it give the token-relative objective)."""
    return target.norm(dim=1, keepdim=True).clamp_min(1e-12).reciprocal()


__all__ = [
    "REPAIRS",
    "RIDGE_GRID",
    "Fit",
    "RepairError",
    "RepairMethod",
    "RepairReport",
    "SpanRepair",
    "contiguous_spans",
    "get_repair",
    "register",
    "solve_ridge",
]
