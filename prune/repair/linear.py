"""``linear``: the most expressive map each architecture lets us fold exactly, fitted by least squares.

For a cut span l+1..e (l the last kept block), with ``h_l`` the output of block l and ``h_e`` the output
of block e (both before any final norm: a block's output never includes it), the map is fitted so that
block l's repaired output matches ``h_e`` on the calibration tokens. What can be folded exactly depends
on how the MLP meets the residual stream (`prune.anatomy.mlp`):

- **pre-norm** (Llama, Mistral, Qwen, Phi3, GPT-2, GPT-NeoX, OPT, Falcon): ``h_l = r + M`` with ``M`` the
  down projection's output, linear in its weights. A full ``d x d`` map ``T`` (ReplaceMe) with
  ``M T ~ h_e - h_l + M``, and an offset where the projection has a bias, folds into it exactly. It is
  fitted as ``T = I + Delta`` with the ridge pulling ``Delta`` to 0 (towards the plain cut), so the fit
  can never do worse on the calibration tokens than no repair.
- **post-norm encoders** (BERT, RoBERTa, ELECTRA, MPNet, DistilBERT): ``h_l = LayerNorm(r + M)``; a map
  of ``M`` would be normalised away and the residual ``r`` is shared with the next block's attention,
  so the most that folds exactly is a per-channel affine map of the LayerNorm's output, ``a * h_l + c``,
  into that LayerNorm's weight and bias.
- **sandwich** (Gemma2/3): ``h_l = r + N(M)`` with ``N`` the post-feedforward RMSNorm, which normalises
  whatever ``M`` becomes; a per-channel scale of ``P = N(M)`` (``h_l - P + P * s ~ h_e``) folds into its
  weight (``x * (1 + w)`` convention handled).

A cut at block 0 has no kept block before it. In a pre-norm model the full map is then fitted on block
0's input and folded into the input embedding matrix, where that is exact: embeddings not tied to the
head, block 0's input a multiple of the token embeddings (`embedding_fold_blocker` checks both on the
model; the stage keeps the span a plain cut, with the reason in the report, otherwise).

Every fit reads only float64 sums (O(d^2) for the full map, O(d) for the others), never the tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prune.anatomy.mlp import MlpAnatomy
from prune.collect.capture import CaptureSite, SiteSum
from prune.fold import fold_norm_affine, fold_output_map, weight_matrix
from prune.repair.base import Fit, RepairError, RepairMethod, register, rows_weight, solve_ridge


def _weighted(weighted: bool, target: Tensor) -> Tensor:
    return rows_weight(target) if weighted else torch.ones(target.shape[0], 1, device=target.device)


def _scalar(x: Tensor) -> Tensor:
    return x.reshape(1)


def _full_sums(weighted: bool) -> list[SiteSum]:
    """Sums of the full map: Gram of M, cross with D = h_e - h_l, and the intercept's column sums."""

    def stats(m: Tensor, hl: Tensor, he: Tensor) -> Tensor:
        w = _weighted(weighted, he)
        d = he - hl
        mw, dw = m * w, d * w
        w2 = w * w
        # One [d + 2, 2d + 1] block so that the big products run as two GEMMs:
        # rows: M^T (weighted), then sum(w^2 M), then the extra scalars in the last column.
        gram = torch.cat([mw.T @ mw, mw.T @ dw], dim=1)
        ones = torch.cat([(w2 * m).sum(0), (w2 * d).sum(0)]).unsqueeze(0)
        scalars = torch.stack([w2.sum(), (dw * dw).sum(), ((he * w) ** 2).sum()])
        return torch.cat([torch.cat([gram, ones]).flatten(), scalars])

    return [SiteSum("full", ("m", "hl", "he"), stats)]


def _unpack_full(sums: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
    flat = sums["full"]
    d = int(round((-1 + (1 + 2 * (flat.numel() - 3)) ** 0.5) / 2))  # (d + 1) * 2d = numel - 3
    block = flat[:-3].view(d + 1, 2 * d)
    gram, cross = block[:d, :d], block[:d, d:]
    m_sum, d_sum = block[d, :d], block[d, d:]
    n, dd, hh = flat[-3], flat[-2], flat[-1]
    return gram, cross, m_sum, d_sum, n, dd, hh


@dataclass(frozen=True)
class _FullMap:
    """pre_norm: T = I + Delta (and an offset c with a biased down projection) on the MLP output."""

    description = "full d x d map folded into the down projection"

    def sites(self, mlp: MlpAnatomy, kept: int | None, end: int) -> dict[str, CaptureSite]:
        if kept is None:  # a cut at block 0: the map acts on the embeddings, block 0's input
            return {"m": CaptureSite(0, io="input"), "hl": CaptureSite(0, io="input"), "he": CaptureSite(end)}
        return {"m": CaptureSite(kept, mlp.down), "hl": CaptureSite(kept), "he": CaptureSite(end)}

    def sums(self, weighted: bool) -> list[SiteSum]:
        return _full_sums(weighted)

    def system(self, sums: Mapping[str, Tensor], intercept: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        gram, cross, m_sum, d_sum, n, dd, hh = _unpack_full(sums)
        if intercept:
            gram = torch.cat([torch.cat([gram, m_sum[:, None]], 1), torch.cat([m_sum, n.reshape(1)])[None]])
            cross = torch.cat([cross, d_sum[None]])
        return gram, cross, dd, hh

    def fit(self, sums: Mapping[str, Tensor], ridge: float, intercept: bool) -> Fit:
        gram, cross, dd, hh = self.system(sums, intercept)
        width = cross.shape[1]
        x = solve_ridge(gram, cross, ridge, penalised=width)
        tensors = {"delta": x[:width]}
        if intercept:
            tensors["offset"] = x[width]
        fit = Fit("full", tensors, float(dd / hh), 0.0, ridge)
        fit.residual_after = self.error(fit, sums)
        return fit

    def error(self, fit: Fit, sums: Mapping[str, Tensor]) -> float:
        intercept = "offset" in fit.tensors
        gram, cross, dd, hh = self.system(sums, intercept)
        x = fit.tensors["delta"]
        if intercept:
            x = torch.cat([x, fit.tensors["offset"][None]])
        return float(((x * (gram @ x)).sum() - 2 * (x * cross).sum() + dd) / hh)

    def fold(self, blocks: nn.ModuleList, kept: int, fit: Fit, mlp: MlpAnatomy) -> str:
        down = mlp.parts(blocks[kept]).down
        delta = fit.tensors["delta"]
        fold_output_map(
            down, torch.eye(delta.shape[0], dtype=torch.float64) + delta, fit.tensors.get("offset")
        )
        return f"{mlp.down} of the kept block"

    def identity(self, width: int) -> Fit:
        return Fit("identity", {"delta": torch.zeros(width, width, dtype=torch.float64)}, 0.0, 0.0)


def _channel_sums(weighted: bool, source: str) -> list[SiteSum]:
    """Per-channel sums of x (the site the map scales) and D = h_e - h_l: the 2 x 2 systems' entries."""

    def stats(x: Tensor, hl: Tensor, he: Tensor) -> Tensor:
        w = _weighted(weighted, he)
        w2 = w * w
        d = he - hl
        columns = [w2 * x * x, w2 * x, w2 * d, w2 * x * d, w2 * d * d, w2 * he * he]
        per_channel = torch.stack([c.sum(0) for c in columns])
        return torch.cat([per_channel.flatten(), w2.sum().reshape(1)])

    return [SiteSum("channel", (source, "hl", "he"), stats)]


@dataclass(frozen=True)
class _ChannelMap:
    """post_norm: a * h_l + c into the output LayerNorm; sandwich: h_l + (s - 1) * P into the post-MLP norm."""

    shift: bool  # fit an offset c too (LayerNorm has a bias; RMSNorm has none)

    @property
    def description(self) -> str:
        return (
            "per-channel affine map folded into the output LayerNorm"
            if self.shift
            else "per-channel scale folded into the post-feedforward norm"
        )

    def sites(self, mlp: MlpAnatomy, kept: int, end: int) -> dict[str, CaptureSite]:
        sites = {"hl": CaptureSite(kept), "he": CaptureSite(end)}
        if not self.shift:
            sites["x"] = CaptureSite(kept, mlp.post_mlp_norm or "")
        return sites

    def sums(self, weighted: bool) -> list[SiteSum]:
        return _channel_sums(weighted, "x" if not self.shift else "hl")

    @staticmethod
    def _unpack(sums: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        flat = sums["channel"]
        xx, x, d, xd, dd, hh = flat[:-1].view(6, -1)
        return xx, x, d, xd, dd, hh, flat[-1]

    def fit(self, sums: Mapping[str, Tensor], ridge: float, intercept: bool) -> Fit:
        xx, x, d, xd, dd, hh, n = self._unpack(sums)
        lam = ridge * float(xx.mean().clamp_min(1e-30))
        if self.shift:
            # per channel: [[xx + lam, x], [x, n]] [delta, c] = [xd, d]
            det = (xx + lam) * n - x * x
            safe = det.abs() > 1e-12 * (xx + lam) * n.clamp_min(1)
            delta = torch.where(safe, (xd * n - x * d) / det, torch.zeros_like(det))
            shift = torch.where(safe, ((xx + lam) * d - x * xd) / det, torch.zeros_like(det))
            tensors = {"delta": delta, "shift": shift}
        else:
            tensors = {"delta": xd / (xx + lam).clamp_min(1e-30)}
        fit = Fit(
            "affine" if self.shift else "channel-scale", tensors, float(dd.sum() / hh.sum()), 0.0, ridge
        )
        fit.residual_after = self.error(fit, sums)
        return fit

    def error(self, fit: Fit, sums: Mapping[str, Tensor]) -> float:
        xx, x, d, xd, dd, hh, n = self._unpack(sums)
        delta = fit.tensors["delta"]
        c = fit.tensors.get("shift", torch.zeros_like(delta))
        err = delta**2 * xx + 2 * delta * c * x + c**2 * n - 2 * delta * xd - 2 * c * d + dd
        return float(err.sum() / hh.sum())

    def fold(self, blocks: nn.ModuleList, kept: int, fit: Fit, mlp: MlpAnatomy) -> str:
        parts = mlp.parts(blocks[kept])
        norm = parts.output_norm if self.shift else parts.post_mlp_norm
        path = mlp.output_norm if self.shift else mlp.post_mlp_norm
        if norm is None:
            raise RepairError(f"the kept block has no {path!r} to fold the map into; fix the family file")
        scale = 1.0 + fit.tensors["delta"]
        fold_norm_affine(norm, scale, fit.tensors.get("shift"), weight_offset=mlp.norm_weight_offset)
        return f"{path} of the kept block"

    def identity(self, width: int) -> Fit:
        tensors = {"delta": torch.zeros(width, dtype=torch.float64)}
        if self.shift:
            tensors["shift"] = torch.zeros(width, dtype=torch.float64)
        return Fit("identity", tensors, 0.0, 0.0)


# Which exact map each residual placement admits (see the module docstring for why).
MAPS: dict[str, Any] = {
    "pre_norm": _FullMap(),
    "post_norm": _ChannelMap(shift=True),
    "sandwich": _ChannelMap(shift=False),
}


@dataclass(frozen=True)
class LinearRepair(RepairMethod):
    """Least-squares repair with the most expressive exactly-foldable map of the family (`MAPS`)."""

    least_squares: ClassVar[bool] = True

    def _map(self, mlp: MlpAnatomy):
        return MAPS[self.check(mlp).residual]  # type: ignore[index]

    def describe(self, mlp: MlpAnatomy) -> str:
        return self._map(mlp).description

    def sites(self, mlp: MlpAnatomy, kept: int | None, end: int) -> dict[str, CaptureSite]:
        if kept is None and self.check(mlp).residual != "pre_norm":
            raise RepairError(
                "only a pre-norm model's linear map can act on the embeddings (a cut at block 0)"
            )
        return self._map(mlp).sites(mlp, kept, end)  # type: ignore[arg-type]

    def sums(self, mlp: MlpAnatomy, weighted: bool) -> list[SiteSum]:
        return self._map(mlp).sums(weighted)

    def fit(self, sums: Mapping[str, Tensor], mlp: MlpAnatomy, ridge: float | None, **kw: Any) -> Fit:
        return self._map(mlp).fit(sums, 1e-4 if ridge is None else ridge, bool(kw.get("intercept")))

    def error(self, fit: Fit, sums: Mapping[str, Tensor], mlp: MlpAnatomy) -> float:
        return self._map(mlp).error(fit, sums)

    def fold(self, blocks: nn.ModuleList, kept: int | None, after: range, fit: Fit, mlp: MlpAnatomy) -> str:
        assert kept is not None
        return self._map(mlp).fold(blocks, kept, fit, mlp)

    def identity(self, mlp: MlpAnatomy, width: int) -> Fit:
        return self._map(mlp).identity(width)

    def has_intercept(self, block: nn.Module, mlp: MlpAnatomy) -> bool:
        """Whether the full map also fits an offset: only where the down projection has a bias to hold it."""
        down = mlp.parts(block).down
        weight_matrix(down)  # a clear FoldError for a module that is no projection
        return isinstance(getattr(down, "bias", None), Tensor)


def embedding_fold_blocker(model: nn.Module, anatomy: Any, mlp: MlpAnatomy, batch: dict) -> str | None:
    """Why a cut at block 0 cannot take the full map into the input embeddings (None: it can).

    With ``x0 = c * E[ids]`` (block 0's input a scaled copy of the token embeddings, as in Llama, Mistral,
    Qwen, Phi3 and Gemma), ``x0 T = c * (E T)[ids]``: the map folds exactly into ``E``. Checked on the
    model itself: untied embeddings (folding into a tied matrix would change the output head too), and
    block 0's input equal to a multiple of the embedding output on `batch` (position embeddings, an
    embedding norm or a projection, as in GPT-2, OPT, BERT, break it).
    """
    if mlp.residual != "pre_norm":
        return "a post-norm or sandwich block leaves nothing linear before block 0 to fold the map into"
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embed, nn.Embedding):
        return "the model has no plain input embedding matrix"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is embed.weight:
        return "the input embeddings are tied to the output head, which the fold would change too"
    from prune.collect.segments import block_input

    ids = batch["input_ids"][:1].to(embed.weight.device)
    try:
        x = block_input(model, anatomy, 0, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    except IndexError:  # the forward never reached block 0
        return "block 0's input could not be observed"
    x = x.double().flatten()
    with torch.no_grad():
        e = embed(ids).double().flatten()
    scale = float(x @ e) / max(float(e @ e), 1e-30)
    if float((x - scale * e).norm()) > 1e-3 * float(x.norm()):
        return "block 0's input is not a multiple of the token embeddings (position embeddings or a norm are added)"
    return None


def fold_into_embeddings(model: nn.Module, fit: Fit) -> str:
    """Fold a block-0 span's full map ``T = I + Delta`` into the input embedding matrix (``E T``)."""
    embed = model.get_input_embeddings()
    delta = fit.tensors["delta"]
    weight = embed.weight.detach()
    t = torch.eye(delta.shape[0], dtype=torch.float64, device=weight.device) + delta.to(weight.device)
    embed.weight = nn.Parameter(
        (weight.double() @ t).to(weight.dtype), requires_grad=embed.weight.requires_grad
    )
    return "instead into the input embeddings (a cut at block 0; they are not tied)"


LINEAR = register(
    LinearRepair(
        "linear",
        "least squares (ReplaceMe): a full d x d map into the down projection of pre-norm blocks, a per-channel "
        "affine map into a post-norm encoder's output LayerNorm, a per-channel scale into Gemma's post-MLP norm",
    )
)
