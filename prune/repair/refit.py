"""Error-correcting refit: after a cut or a squeeze, refit kept down projections so that the *modified*
model's residual stream tracks the *original* model's.

A cut's repair (`prune.repair.linear`) and a squeeze's compensation (`prune.width.compensate`) each fit
one junction or one block in isolation, on the model's own activations: block k is fitted to reproduce
what *it* would have written, not to undo the error that earlier changes left in the stream. Here every
refitted block k of the modified model gets a least-squares target taken from the original model, run
in lockstep on the same calibration tokens:

``W'_k = argmin ||Z_k W' - (S*_k - r_k)||^2 + lambda ||W' - W_k||^2``

with ``Z_k`` the input of block k's down projection (its d_ff features, and a constant 1 where the down
projection has a bias), ``r_k = S_k - M_k`` what block k adds to the stream besides its MLP (``S_k`` the
sum the MLP output joins, ``M_k`` the down projection's output) and ``S*_k`` the same sum in the original
model at the corresponding block (for a cut, the block before the junction corresponds to the last cut
block). Where the sum is taken depends on the residual placement (`prune.anatomy.mlp`):

- **pre-norm** decoders: ``S`` is the block output (``h = r + M``), so the refit makes the block output
  match the original's hidden state; exact, since the output is linear in the down weights.
- **post-norm** encoders: the output LayerNorm normalises ``S = r + M``; the target is the original's
  sum *before* that LayerNorm (its input), so the refit matches what the norm sees.
- **sandwich** (Gemma2/3): the post-MLP norm normalises the down projection's output, so no refit of its
  weights is linear in the target; these families are left as they are (the report says so).

Blocks are refitted in order and each refit is folded before the next block's statistics are taken,
so each one corrects the error that really reaches it. The refit needs one forward of each refitted
block and of the corresponding original blocks per pass, not of the whole model: both models' hidden
states at the current block are kept for the calibration batches (``2 n d`` floats) and each step runs
only the blocks it needs (`prune.surgery` points a model at a block range and back). The ridge pulls
towards the current weights, so a refit never raises the calibration error it minimises; it is chosen
per block from `REFIT_RIDGES` by the error on held-out calibration batches (even/odd halves).

Example:
    >>> pruned = remove_blocks(model, [13, 14, 15])  # doctest: +SKIP
    >>> report = refit_model(model, pruned, batches, correspondence=cut_correspondence(30, [13, 14, 15]))  # doctest: +SKIP
    >>> report.blocks[0].residual_after <= report.blocks[0].residual_before  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prune.collect.batches import check_batch, rows_within_budget, to_device, valid_mask
from prune.collect.capture import site_rows
from prune.collect.collector import _input_device
from prune.collect.segments import BlockSegment, block_input
from prune.fold import _set_bias, _set_weight, weight_matrix
from prune.repair.base import RepairError
from prune.repair.refit_report import BlockRefit, RefitReport, refit_lines

logger = logging.getLogger(__name__)

Weighting = Literal["mse", "token"]

# Relative ridges (to the mean diagonal of the feature Gram), towards the current weights.
REFIT_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def cut_correspondence(num_blocks: int, drop: Iterable[int]) -> list[int]:
    """For each kept block of a cut model, the original block whose output it should reproduce.

    A kept block directly before a cut span stands for the span's last block.

    Example:
        >>> cut_correspondence(6, [2, 3])
        [0, 3, 4, 5]
    """
    dropped = set(int(i) for i in drop)
    result = []
    for block in range(num_blocks):
        if block in dropped:
            continue
        end = block
        while end + 1 in dropped:
            end += 1
        result.append(end)
    return result


def _solve(gram: Tensor, rhs: Tensor, current: Tensor, ridge: float, penalised: int) -> Tensor:
    """``argmin x^T G x - 2 x^T C + lambda ||x - x0||^2`` over the first `penalised` rows (float64)."""
    scale = float(torch.diagonal(gram)[:penalised].mean().clamp_min(1e-30))
    diagonal = torch.zeros(gram.shape[0], dtype=torch.float64)
    diagonal[:penalised] = ridge * scale
    system = gram + torch.diag(diagonal)
    target = rhs + diagonal[:, None] * current
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(target, factor)
    return torch.linalg.lstsq(system, target).solution


def _choose_ridge(halves: list[dict[str, Tensor]], current: Tensor, penalised: int) -> float:
    """The ridge of `REFIT_RIDGES` whose fit on one half of the batches has the lowest error on the other."""
    if len(halves) < 2:
        return 1e-2
    a, b = halves

    def heldout(r: float) -> float:
        return _error(_solve(a["gram"], a["cross"], current, r, penalised), b) + _error(
            _solve(b["gram"], b["cross"], current, r, penalised), a
        )

    return min(REFIT_RIDGES, key=heldout)


def _error(x: Tensor, sums: dict[str, Tensor]) -> float:
    """``||Z x - D||^2 / ||S*||^2`` from the sums (D = S* - r)."""
    g, c = sums["gram"], sums["cross"]
    return float(((x * (g @ x)).sum() - 2 * (x * c).sum() + sums["dd"]) / sums["tt"].clamp_min(1e-300))


def refit_model(
    original: nn.Module,
    modified: nn.Module,
    batches: Sequence[Any],
    *,
    correspondence: Sequence[int] | None = None,
    blocks: Iterable[int] | None = None,
    anatomy: Any = None,
    ridge: float | None = None,
    max_tokens: int | None = None,
    skip_tokens: int = 0,
    weighting: Weighting = "mse",
    progress: bool = False,
) -> RefitReport:
    """Refit the down projections of `modified` (in place) so that its stream tracks `original`'s.

    Args:
        original: the model before the change (only read).
        modified: the cut and/or squeezed model (same tokenizer, same hidden size); its down projections
            are refitted in place (parameters are replaced, never written into shared tensors).
        batches: calibration batches (as for `prune.collect.collect_stats`); held as hidden states of
            both models at the current block (``2 n d`` floats for n tokens).
        correspondence: for each block of `modified`, the original block whose output it stands for
            (`cut_correspondence` for a cut; None: the same index, for a squeeze).
        blocks: the blocks of `modified` to refit, in any order (processed in order); None: every block
            from the first one whose correspondence differs from its own index (all blocks when none
            differs).
        anatomy: the original's anatomy (found if None).
        ridge: relative ridge towards the current weights; None chooses it per block on held-out batches.
        max_tokens: calibration token budget; skip_tokens: leading tokens of each sequence left out.
        weighting: ``mse`` (squared error of the stream) or ``token`` (each token's error relative to its
            ``||S*||^2``: the next pre-norm block sees the direction, and a few massive-activation tokens
            no longer dominate the fit).
        progress: log each block's residual at INFO level.

    Returns:
        The `RefitReport` (per block the relative stream error before and after).

    Raises:
        RepairError: the models' block counts disagree with `correspondence`, or the MLP placement is
            unknown.
    """
    from prune.anatomy import get_anatomy

    started = time.perf_counter()
    anatomy = anatomy if anatomy is not None else get_anatomy(original)
    target_anatomy = get_anatomy(modified, anatomy.block_path)
    mlp = target_anatomy.mlp
    report = RefitReport()
    if mlp is None or mlp.residual not in ("pre_norm", "post_norm"):
        placement = None if mlp is None else mlp.residual
        report.skipped = (
            f"the MLP placement is {placement!r}: no refit of the down projection is linear in the target "
            "(only pre-norm and post-norm blocks are refitted)"
        )
        return report
    count = target_anatomy.num_blocks
    corr = list(range(count)) if correspondence is None else [int(c) for c in correspondence]
    if len(corr) != count or any(b >= anatomy.num_blocks for b in corr) or corr != sorted(set(corr)):
        raise RepairError(
            f"correspondence {corr} does not fit a modified model of {count} blocks and an original of "
            f"{anatomy.num_blocks}; pass one increasing original index per modified block"
        )
    if blocks is None:
        first = next((k for k in range(count) if corr[k] != k), 0)
        todo = list(range(first, count))
    else:
        todo = sorted(set(int(b) for b in blocks))
    if not todo:
        report.seconds = time.perf_counter() - started
        return report
    post_norm = mlp.residual == "post_norm"

    # The batches within budget, and both models' hidden states entering the first refitted block.
    device = _input_device(modified)
    prepared: list[tuple[Any, Tensor]] = []
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    tokens = 0
    start = todo[0]
    for index, batch in enumerate(batches):
        remaining = None if max_tokens is None else max_tokens - tokens
        if remaining is not None and remaining <= 0:
            break
        check_batch(batch, index)
        if remaining is not None:
            batch = rows_within_budget(batch, remaining, skip_tokens)
        batch = to_device(batch, device)
        x = block_input(modified, target_anatomy, start, batch)
        y = block_input(original, anatomy, corr[start - 1] + 1 if start > 0 else 0, batch)
        mask = valid_mask(batch, x, remaining, skip_tokens)
        tokens += int(mask.sum())
        prepared.append((batch, mask))
        xs.append(x)
        ys.append(y)
    report.tokens = tokens

    def site_sum(k: int, corr_k: int) -> tuple[str, str]:
        # the sum the MLP output joins: the block output (pre-norm) or the output norm's input (post-norm)
        return (mlp.output_norm or "", "input") if post_norm else ("", "output")

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="refitting down projections", unit="block", disable=not progress)
    cursor = start  # xs enter modified block `cursor`
    origin = corr[start - 1] + 1 if start > 0 else 0  # ys enter original block `origin`
    for k in todo:
        # Advance both streams to the input of block k (blocks between refitted ones run unchanged).
        if k > cursor:
            segment = BlockSegment(modified, target_anatomy, cursor, k - 1)
            xs = [segment.run(b, x, {})["out"] for (b, _), x in zip(prepared, xs, strict=True)]
            segment = BlockSegment(original, anatomy, origin, corr[k - 1])
            ys = [segment.run(b, y, {})["out"] for (b, _), y in zip(prepared, ys, strict=True)]
            cursor, origin = k, corr[k - 1] + 1
        origin_first = origin
        path, io = site_sum(k, corr[k])
        down = mlp.parts(target_anatomy.blocks(modified)[k]).down
        bias = getattr(down, "bias", None)
        has_bias = isinstance(bias, Tensor)
        weight = weight_matrix(down).detach().to(torch.float64).cpu()
        current = weight.T
        if has_bias:
            current = torch.cat([current, bias.detach().to(torch.float64).cpu()[None]])
        norm = mlp.parts(target_anatomy.blocks(modified)[k]).output_norm if post_norm else None
        # post-norm: an error in channel j of the sum reaches the block output times the norm's gain g_j,
        # so channels are weighted by |g_j| (the solution is per channel anyway; this sets the ridge and
        # the reported error to what the output sees)
        gain = getattr(norm, "weight", None)
        columns = (
            gain.detach().abs().double().cpu().clamp_min(1e-6)
            if isinstance(gain, Tensor)
            else torch.ones(weight.shape[0], dtype=torch.float64)
        )
        mine = BlockSegment(modified, target_anatomy, k, k)
        theirs = BlockSegment(original, anatomy, origin_first, corr[k])
        halves: list[dict[str, Tensor]] = [{}, {}]
        next_ys: list[Tensor] = []
        for index, ((batch, mask), x, y) in enumerate(zip(prepared, xs, ys, strict=True)):
            got = mine.run(
                batch, x, {"z": (k, mlp.down, "input"), "m": (k, mlp.down, "output"), "s": (k, path, io)}
            )
            ref = theirs.run(batch, y, {"s": (corr[k], path, io)})
            next_ys.append(ref["out"])
            rows = mask.to(got["z"].device)
            named = (("z", got["z"]), ("m", got["m"]), ("s", got["s"]), ("s*", ref["s"]))
            z, m, s, t = (site_rows(v, rows, name) for name, v in named)
            if post_norm:
                # (weighing rows by 1/scale, the first-order error of the normalised output, measured
                # worse on MiniLM: cut cosine mean 0.824 -> 0.813, squeeze 0.980 -> 0.967)
                t, _ = _post_norm_target(t, site_rows(ref["out"], rows, "out"), norm)
            if has_bias:
                z = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)], 1)
            d = t - s + m
            if weighting == "token":
                w = t.norm(dim=1, keepdim=True).clamp_min(1e-12).reciprocal()
                z, d, t = z * w, d * w, t * w
            if post_norm:
                g = columns.to(dtype=d.dtype, device=d.device)
                d, t = d * g, t * g
            part = {
                "gram": z.T @ z,
                "cross": z.T @ d,
                "dd": (d * d).sum().reshape(()),
                "tt": (t * t).sum().reshape(()),
            }
            half = halves[index % 2]
            for name, value in part.items():
                value = value.double().cpu()
                half[name] = value if name not in half else half[name] + value
        ys = next_ys
        halves = [h for h in halves if h]
        totals = {name: sum(h[name] for h in halves) for name in halves[0]}
        penalised = weight.shape[1]
        scaled = current * columns  # the weights in the weighted channels' units
        chosen = ridge if ridge is not None else _choose_ridge(halves, scaled, penalised)
        solution = _solve(totals["gram"], totals["cross"], scaled, chosen, penalised)
        before, after = _error(scaled, totals), _error(solution, totals)
        solution = solution / columns
        if not after <= before:  # cannot happen for an exact solve; guards a failed one
            logger.warning("refit of block %d would raise its calibration error; left as it was", k)
            solution, after = current, before
        _set_weight(down, solution[:penalised].T)
        if has_bias:
            _set_bias(down, solution[penalised])
        report.blocks.append(
            BlockRefit(
                k, corr[k], int(solution.shape[0]), float(f"{before:.6g}"), float(f"{after:.6g}"), chosen
            )
        )
        bar.update(1)
        log = logger.info if progress else logger.debug
        log(
            "refit block %d (original %d): stream error %.4g -> %.4g (ridge %g)",
            k,
            corr[k],
            before,
            after,
            chosen,
        )
        # the refitted block's output is the next block's input
        xs = [mine.run(b, x, {})["out"] for (b, _), x in zip(prepared, xs, strict=True)]
        cursor, origin = k + 1, corr[k] + 1
    bar.close()
    report.seconds = time.perf_counter() - started
    return report


def _post_norm_target(pre: Tensor, out: Tensor, norm: nn.Module | None) -> tuple[Tensor, Tensor]:
    """The sum the modified block's own LayerNorm must see to output the original's `out`.

    With the original's pre-norm sum `pre` (per-token mean mu and scale sigma) and the modified norm's
    weight g and bias b (a repair may have folded an affine map into them), it is
    ``mu + sigma * (out - b) / g``; with the original's norm parameters this is `pre` itself. Returns it
    and sigma [n, 1].
    """
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-12)))
    mean = pre.mean(dim=1, keepdim=True)
    scale = (pre.var(dim=1, unbiased=False, keepdim=True) + eps).sqrt()
    if not isinstance(weight, Tensor):
        return pre, scale
    shifted = out - (bias.detach().float() if isinstance(bias, Tensor) else 0.0)
    gain = weight.detach().float()
    gain = torch.where(gain.abs() < 1e-12, torch.full_like(gain, 1e-12), gain)
    return mean + scale * shifted / gain, scale


__all__ = [
    "REFIT_RIDGES",
    "BlockRefit",
    "RefitReport",
    "Weighting",
    "cut_correspondence",
    "refit_lines",
    "refit_model",
]
