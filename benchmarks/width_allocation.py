"""What per-layer FFN widths would buy over one width for every block, at the same number of neurons.

A question for issue #11's target, not a feature: stock Llama configs hold one ``intermediate_size``, so
`prune.width.squeeze_model` keeps the same count in every block. Here the model is squeezed in memory
with a count per block (the modules take any shape; such a model would not reload as a stock
checkpoint). Per block and per count on a grid (multiples of d_ff / 8), the squeeze's selection and
fold give a held-back output error (`prune.width.ridge.choose_ridge`: fitted on 4 batches in 5, measured
on the 5th). A dynamic programme then picks the counts with the least sum of those errors for the same
total as the uniform keep. Both models are squeezed the same way (the squeeze's selection, fold and
chosen ridge, on all the calibration batches) and evaluated on the held-out text.

    PYTHONPATH=. python benchmarks/width_allocation.py smollm2-135m --keep 0.75 --calib-samples 128 --eval-samples 32

The objective is a proxy for the loss: with ``--weight stream`` (default) each block's relative FFN output
error is scaled by its FFN output energy over the residual stream's energy after the block
(``E||W a||^2 / E||h||^2``), i.e. the error relative to the stream it is added to; ``--weight none`` weighs
every block's relative error alike.
"""

from __future__ import annotations

import argparse
import time

from benchmarks._common import Results, held_out_quality, load_protocol


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--keep", type=float, default=0.75)
    parser.add_argument("--levels", type=int, default=8, help="counts on the grid d_ff * i / LEVELS")
    parser.add_argument("--min-keep", type=float, default=0.5, help="the smallest count allowed per block")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--weight", choices=("stream", "none"), default="stream")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    import copy

    from prune.width.budget import parse_ffn_keep
    from prune.width.compensate import apply_to_block, block_problem, interpolation
    from prune.width.methods import FFN_METHODS
    from prune.width.ridge import choose_ridge, collect_split_stats
    from prune.width.selection import SELECTORS
    from prune.width.squeeze import DEFAULT_RIDGE

    setup = load_protocol(args.model, calib_samples=args.calib_samples, eval_samples=args.eval_samples)
    model, anatomy = setup.model, setup.anatomy
    mlp, blocks = anatomy.require_mlp("the allocation"), anatomy.blocks(model)
    size = mlp.intermediate_size(blocks[0])
    step = size // args.levels
    uniform = parse_ffn_keep(args.keep).count(size)
    if uniform % step:
        raise SystemExit(
            f"keep {args.keep} gives {uniform} neurons, not a multiple of {step}; pick another keep"
        )
    counts = [c for c in range(step, size + 1, step) if c >= args.min_keep * size]
    selector = SELECTORS[FFN_METHODS.get("squeeze").selection]
    out = args.json_out or f"benchmarks/results/width_allocation_{args.model.replace('/', '_')}.json"
    results = Results(out, {"model": args.model, "protocol": setup.protocol, "settings": vars(args)})

    start = time.perf_counter()
    fit, held = collect_split_stats(model, setup.calib, anatomy, list(range(len(blocks))), progress=False)
    stream = _stream_energy(model, setup.calib[:4], len(blocks))
    errors: dict[int, dict[int, tuple[float, float]]] = {}
    weights: dict[int, float] = {}
    for b, block in enumerate(blocks):
        parts = mlp.parts(block)
        fit_problem, held_problem = block_problem(parts, fit[b]), block_problem(parts, held[b])
        energy = float((held_problem.down_moment * held_problem.down).sum())
        weights[b] = energy / stream[b] if args.weight == "stream" else 1.0
        errors[b] = {size: (0.0, DEFAULT_RIDGE)}
        for count in counts:
            if count < size:
                choice = choose_ridge(
                    fit_problem, held_problem, count, selector, "ls", selection_ridge=DEFAULT_RIDGE
                )
                errors[b][count] = (choice.held_back_error, choice.ridge)
        print(
            f"block {b}: " + ", ".join(f"{c} {e:.4f}" for c, (e, _) in sorted(errors[b].items())), flush=True
        )
    curves_s = time.perf_counter() - start
    weighted = {b: {c: e * weights[b] for c, (e, _) in row.items()} for b, row in errors.items()}
    allocation = _allocate(weighted, total=uniform * len(blocks))

    def squeezed(per_block: dict[int, int]):
        target = copy.deepcopy(model)
        for b, block in enumerate(anatomy.blocks(target)):
            if per_block[b] < size:
                parts = mlp.parts(block)
                problem = block_problem(parts, fit[b] + held[b])
                kept = selector(problem, per_block[b], DEFAULT_RIDGE)
                transform, offset = interpolation(problem, kept, "ls", errors[b][per_block[b]][1])
                apply_to_block(parts, kept, transform, offset)
        return target

    results.add("dense", {"method": "(dense)", **held_out_quality(setup, model)})
    for name, per_block in (
        ("uniform", dict.fromkeys(range(len(blocks)), uniform)),
        ("per-layer", allocation),
    ):
        row = {
            "method": name,
            "counts": [per_block[b] for b in range(len(blocks))],
            "sum_held_back_error": sum(errors[b][per_block[b]][0] for b in per_block),
            "objective": sum(weighted[b][per_block[b]] for b in per_block),
            "curves_s": curves_s,
        }
        results.add(name, {**row, **held_out_quality(setup, squeezed(per_block))})
        print(name, {k: v for k, v in results.data["rows"][-1].items() if k != "key"}, flush=True)
    results.save(
        errors={b: {c: e for c, (e, _) in row.items()} for b, row in errors.items()}, weights=weights
    )


def _stream_energy(model, batches, num_blocks: int) -> list[float]:
    """Mean ``||h||^2`` of the residual stream after each block, over the valid tokens of `batches`."""
    import torch

    sums, tokens = [0.0] * num_blocks, 0
    with torch.no_grad():
        for batch in batches:
            states = model(**batch, output_hidden_states=True, use_cache=False).hidden_states
            valid = batch["attention_mask"].bool()
            tokens += int(valid.sum())
            for b in range(num_blocks):
                sums[b] += float((states[b + 1][valid].double() ** 2).sum())
    return [s / max(tokens, 1) for s in sums]


def _allocate(errors: dict[int, dict[int, float]], total: int) -> dict[int, int]:
    """The count per block, from each block's grid, with the least error sum and counts adding to `total`.

    Example:
        >>> _allocate({0: {1: 0.5, 2: 0.0}, 1: {1: 0.1, 2: 0.0}}, total=3)
        {0: 2, 1: 1}
    """
    best: dict[int, tuple[float, dict[int, int]]] = {0: (0.0, {})}
    for b, row in errors.items():
        nxt: dict[int, tuple[float, dict[int, int]]] = {}
        for used, (cost, chosen) in best.items():
            for count, error in row.items():
                key = used + count
                if key <= total and (key not in nxt or cost + error < nxt[key][0]):
                    nxt[key] = (cost + error, {**chosen, b: count})
        best = nxt
    if total not in best:
        raise SystemExit(f"no allocation of the grid's counts adds up to {total} neurons")
    return best[total][1]


if __name__ == "__main__":
    main()
