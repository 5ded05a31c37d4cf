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

**Attention output** (``attention=True``, `RepairOptions.refit_attention`), pre-norm blocks only: before
the down projection, block k's attention output projection (``o_proj``; GPT-2 ``attn.c_proj``, OPT
``out_proj``, NeoX/Falcon ``dense``: the family file's ``attention_out``) is refitted the same way, its
input being the features and the target the original's *mid-state* ``h_in* + A*`` (the stream after the
attention residual, i.e. what the post-attention norm sees; in a parallel block, NeoX and Falcon, it is
the same split of the block output, which the down refit then completes). It is folded before the down
projection's statistics are taken, so the MLP is refitted on the activations the new attention output
gives. A block standing for a cut span tracks the mid-state of its own original block (``own``, the
default), or that of the first cut block (``next``), or keeps its attention (``skip``):
`JunctionAttention`. Post-norm blocks normalise the attention sum before the MLP reads it, so they
keep the down-only refit (``RefitReport.attention_skipped`` says so).

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
from prune.repair.base import RepairError
from prune.repair.refit_report import BlockRefit, RefitReport, refit_lines
from prune.repair.refit_solve import REFIT_RIDGES, RefitSums, fit_and_fold

logger = logging.getLogger(__name__)

Weighting = Literal["mse", "token"]
JunctionAttention = Literal["skip", "own", "next"]


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
    attention: bool = False,
    junction_attention: JunctionAttention = "own",
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
        attention: in pre-norm blocks, first refit each block's attention output projection so that
            the stream after the attention residual (block input + attention output) matches the
            original's at the same point, fold it, then refit the down projection on the updated
            activations. Post-norm blocks keep the down-only refit (the report says why).
        junction_attention: what the attention of a block standing for a cut span (the block before a
            junction) tracks: ``own`` the original's mid-state of the same block (it corrects the error
            reaching it and leaves the span to the down projection), ``next`` the mid-state of the
            first cut block, ``skip`` no attention refit there.
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

    from tqdm.auto import tqdm

    attention_out = mlp.attention_out if attention and not post_norm else None
    if attention and attention_out is None:
        report.attention_skipped = (
            "attention output projections are refitted in pre-norm blocks only (a post-norm block "
            "normalises the attention sum before the MLP sees it)"
            if post_norm
            else "the family file names no attention output projection (add 'attention_out' to its mlp entry)"
        )
    bar = tqdm(total=len(todo), desc="refitting projections", unit="block", disable=not progress)
    cursor = start  # xs enter modified block `cursor`
    origin = corr[start - 1] + 1 if start > 0 else 0  # ys enter original block `origin`
    # the sum the MLP output joins: the block output (pre-norm) or the output norm's input (post-norm)
    sum_site = (mlp.output_norm or "", "input") if post_norm else ("", "output")
    for k in todo:
        # Advance both streams to the input of block k (blocks between refitted ones run unchanged).
        if k > cursor:
            segment = BlockSegment(modified, target_anatomy, cursor, k - 1)
            xs = [segment.run(b, x, {})["out"] for (b, _), x in zip(prepared, xs, strict=True)]
            segment = BlockSegment(original, anatomy, origin, corr[k - 1])
            ys = [segment.run(b, y, {})["out"] for (b, _), y in zip(prepared, ys, strict=True)]
            cursor, origin = k, corr[k - 1] + 1
        parts = mlp.parts(target_anatomy.blocks(modified)[k])
        # which original mid-state (block input + attention output) block k's attention should reproduce
        mid = _attention_target(attention_out, junction_attention, origin, corr[k])
        norm = parts.output_norm if post_norm else None
        mine = BlockSegment(modified, target_anatomy, k, k)
        theirs = BlockSegment(original, anatomy, origin, corr[k])
        # One pass of the original for both refits' targets and its stream at the next block.
        ref_sites = {"s": (corr[k], *sum_site)}
        if mid is not None:
            ref_sites["a"] = (mid, attention_out, "output")
            if mid > origin:
                ref_sites["o"] = (mid - 1, "", "output")
        down_targets, mid_targets, next_ys = [], [], []
        for (batch, mask), y in zip(prepared, ys, strict=True):
            ref = theirs.run(batch, y, ref_sites)
            rows = mask.to(ref["out"].device)
            t = site_rows(ref["s"], rows, "s*")
            if post_norm:
                # (weighing rows by 1/scale, the first-order error of the normalised output, measured
                # worse on MiniLM: cut cosine mean 0.824 -> 0.813, squeeze 0.980 -> 0.967)
                t, _ = _post_norm_target(t, site_rows(ref["out"], rows, "out"), norm)
            down_targets.append(t)
            if mid is not None:
                base = ref.get("o", y)
                mid_targets.append(site_rows(base, rows, "mid*") + site_rows(ref["a"], rows, "a*"))
            next_ys.append(ref["out"])
        ys = next_ys
        if mid is not None:
            sums = RefitSums()
            bias = _has_bias(parts.attention_out)
            for index, ((batch, mask), x, t) in enumerate(zip(prepared, xs, mid_targets, strict=True)):
                got = mine.run(
                    batch, x, {"z": (k, attention_out, "input"), "m": (k, attention_out, "output")}
                )
                rows = mask.to(got["z"].device)
                z, m = site_rows(got["z"], rows, "z"), site_rows(got["m"], rows, "m")
                # pre-norm: the mid-state is the block input plus the attention output
                s = site_rows(x, rows, "x") + m
                _add_rows(sums, index, z, t - s + m, t, bias, weighting, None)
            _record(report, k, mid, "attention", fit_and_fold(parts.attention_out, sums, ridge), progress)
        # post-norm: an error in channel j of the sum reaches the block output times the norm's gain g_j,
        # so channels are weighted by |g_j| (the solution is per channel anyway; this sets the ridge and
        # the reported error to what the output sees)
        gain = getattr(norm, "weight", None)
        columns = gain.detach().abs().double().cpu().clamp_min(1e-6) if isinstance(gain, Tensor) else None
        sums = RefitSums()
        bias = _has_bias(parts.down)
        sites = {"z": (k, mlp.down, "input"), "m": (k, mlp.down, "output"), "s": (k, *sum_site)}
        for index, ((batch, mask), x, t) in enumerate(zip(prepared, xs, down_targets, strict=True)):
            got = mine.run(batch, x, sites)
            rows = mask.to(got["z"].device)
            z, m, s = (site_rows(got[name], rows, name) for name in ("z", "m", "s"))
            _add_rows(sums, index, z, t - s + m, t, bias, weighting, columns)
        _record(report, k, corr[k], "down", fit_and_fold(parts.down, sums, ridge, columns), progress)
        bar.update(1)
        # the refitted block's output is the next block's input
        xs = [mine.run(b, x, {})["out"] for (b, _), x in zip(prepared, xs, strict=True)]
        cursor, origin = k + 1, corr[k] + 1
    bar.close()
    report.seconds = time.perf_counter() - started
    return report


def _attention_target(
    attention_out: str | None, junction: JunctionAttention, origin: int, last: int
) -> int | None:
    """The original block whose mid-state a modified block's attention refit tracks (None: no refit).

    `origin`..`last` are the original blocks the modified block stands for (one, except at a junction).
    """
    if attention_out is None:
        return None
    if origin == last or junction == "own":
        return origin
    return origin + 1 if junction == "next" else None


def _has_bias(module: nn.Module | None) -> bool:
    return isinstance(getattr(module, "bias", None), Tensor)


def _add_rows(
    sums: RefitSums,
    index: int,
    z: Tensor,
    d: Tensor,
    t: Tensor,
    bias: bool,
    weighting: Weighting,
    columns: Tensor | None,
) -> None:
    """Add one batch's features `z`, target `d` and stream target `t` (rows: valid tokens) to `sums`."""
    if bias:
        z = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)], 1)
    if weighting == "token":
        w = t.norm(dim=1, keepdim=True).clamp_min(1e-12).reciprocal()
        z, d, t = z * w, d * w, t * w
    if columns is not None:
        g = columns.to(dtype=d.dtype, device=d.device)
        d, t = d * g, t * g
    sums.add(index, z, d, t)


def _record(
    report: RefitReport, block: int, target: int, projection: str, fit: tuple, progress: bool
) -> None:
    before, after, ridge, features = fit
    report.blocks.append(
        BlockRefit(block, target, features, float(f"{before:.6g}"), float(f"{after:.6g}"), ridge, projection)
    )
    log = logger.info if progress else logger.debug
    log(
        "refit block %d %s (original %d): stream error %.4g -> %.4g (ridge %g)",
        block,
        projection,
        target,
        before,
        after,
        ridge,
    )


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
    "JunctionAttention",
    "RefitReport",
    "Weighting",
    "cut_correspondence",
    "refit_lines",
    "refit_model",
]
