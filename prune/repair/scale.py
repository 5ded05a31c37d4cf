"""``scale`` (Prune&Comp, AAAI 2026): one magnitude-ratio scalar per cut span, folded exactly.

Removing blocks removes what they added to the residual stream, so the stream that reaches the next
kept block is smaller than it was. Prune&Comp measures the ratio ``alpha`` of the mean absolute value of
``h_e`` (the output of the last cut block) to that of ``h_l`` (the input of the first cut block), per
channel, averaged over channels, and multiplies the stream before the cut by it.

Where it is folded:

- **pre-norm and sandwich** (every block reads the stream through a norm, and so does the head): scaling
  everything before the cut by ``alpha`` is the same function as scaling every residual writer of the
  kept blocks *after* the cut by ``1 / alpha`` (the final norm divides the common factor out; exact up
  to the norms' epsilon). We fold it there: the attention output projection and the down projection
  (Gemma: the post-attention and post-feedforward norms). The embeddings are never touched, so tied
  input/output embeddings stay tied, and a cut at block 0 is repaired too.
- **post-norm encoders**: the stream is re-normalised by every block, so ``alpha`` goes into the output
  LayerNorm of the last kept block (weight and bias). A cut at block 0 has no such block: that span
  stays a plain cut, with a warning in the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prune.anatomy.mlp import MlpAnatomy
from prune.collect.capture import CaptureSite, SiteSum
from prune.fold import fold_norm_affine, scale_output
from prune.repair.base import Fit, RepairError, RepairMethod, register, rows_weight


@dataclass(frozen=True)
class ScaleRepair(RepairMethod):
    """Prune&Comp's magnitude compensation: one scalar per span (see the module docstring)."""

    needs_kept_block: ClassVar[bool] = False

    def describe(self, mlp: MlpAnatomy) -> str:
        if self.check(mlp).residual == "post_norm":
            return "one magnitude-ratio scalar folded into the output LayerNorm"
        return "one magnitude-ratio scalar (1/alpha) folded into every residual writer after the cut"

    def needs_kept(self, mlp: MlpAnatomy) -> bool:
        # A post-norm encoder's alpha goes into the output LayerNorm of the block before the cut.
        return mlp.residual == "post_norm"

    def sites(self, mlp: MlpAnatomy, kept: int | None, end: int) -> dict[str, CaptureSite]:
        start = CaptureSite(0, io="input") if kept is None else CaptureSite(kept)
        return {"hl": start, "he": CaptureSite(end)}

    def sums(self, mlp: MlpAnatomy, weighted: bool) -> list[SiteSum]:
        def stats(hl: Tensor, he: Tensor) -> Tensor:
            w = rows_weight(he) if weighted else torch.ones(he.shape[0], 1, device=he.device)
            a, b = hl * w, he * w
            scalars = torch.stack([(a * a).sum(), (a * b).sum(), (b * b).sum()])
            return torch.cat([hl.abs().sum(0), he.abs().sum(0), scalars])

        return [SiteSum("scale", ("hl", "he"), stats)]

    @staticmethod
    def _unpack(sums: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        flat = sums["scale"]
        width = (flat.numel() - 3) // 2
        return flat[:width], flat[width : 2 * width], flat[-3:]

    def fit(self, sums: Mapping[str, Tensor], mlp: MlpAnatomy, ridge: float | None, **kw: Any) -> Fit:
        abs_l, abs_e, (ll, le, ee) = self._unpack(sums)
        live = abs_l > 1e-12 * abs_l.max().clamp_min(1e-30)  # a dead channel has no ratio
        alpha = (abs_e[live] / abs_l[live]).mean()
        fit = Fit("scalar", {"alpha": alpha.reshape(1)}, float((ll - 2 * le + ee) / ee), 0.0, None)
        fit.residual_after = self.error(fit, sums, mlp)
        return fit

    def error(self, fit: Fit, sums: Mapping[str, Tensor], mlp: MlpAnatomy) -> float:
        # The stream's error at the junction, in the equivalent "stream before the cut times alpha" form.
        _, _, (ll, le, ee) = self._unpack(sums)
        alpha = fit.tensors["alpha"][0]
        return float((alpha * alpha * ll - 2 * alpha * le + ee) / ee)

    def fold(self, blocks: nn.ModuleList, kept: int | None, after: range, fit: Fit, mlp: MlpAnatomy) -> str:
        alpha = float(fit.tensors["alpha"][0])
        if self.check(mlp).residual == "post_norm":
            if kept is None:
                raise RepairError("a post-norm encoder cut at block 0 has no LayerNorm before it to scale")
            norm = mlp.parts(blocks[kept]).output_norm
            assert norm is not None
            fold_norm_affine(norm, torch.full((norm.weight.shape[0],), alpha, dtype=torch.float64))
            return f"{mlp.output_norm} of the kept block (x {alpha:.4f})"
        writers = (mlp.attention_out, mlp.post_mlp_norm if mlp.residual == "sandwich" else mlp.down)
        if writers[0] is None:
            raise RepairError(
                'the scale repair needs the attention output of every block: add "attention_out" to the '
                'family file\'s "mlp" entry (see prune/anatomy/families/llama.json)'
            )
        for index in after:
            parts = mlp.parts(blocks[index])
            modules = (parts.attention_out, parts.post_mlp_norm if mlp.residual == "sandwich" else parts.down)
            for module in modules:
                assert module is not None
                scale_output(module, 1.0 / alpha, weight_offset=mlp.norm_weight_offset)
        return f"{' and '.join(w for w in writers if w)} of the {len(after)} blocks after the cut (x 1/{alpha:.4f})"

    def identity(self, mlp: MlpAnatomy, width: int) -> Fit:
        return Fit("identity", {"alpha": torch.ones(1, dtype=torch.float64)}, 0.0, 0.0)


SCALE = register(
    ScaleRepair(
        "scale",
        "Prune&Comp: one magnitude-ratio scalar per span, folded into the residual writers after the cut "
        "(post-norm encoders: into the output LayerNorm)",
    )
)
