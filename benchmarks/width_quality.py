"""Width pruning, quality: every FFN method at several keeps, and depth vs width vs both at equal parameters.

Per model: one load, one calibration pass for the FFN statistics of every block (shared by every
method: `prune.width.squeeze_model(stats=...)`), those of every 5th batch kept apart
(`prune.width.ridge.collect_split_stats`, passed as ``held_back_stats``) so that each row uses the library's
default ridge, chosen per block on the held-back batches; each row records that held-back output error
next to the calibration one, and the ridges chosen. Per keep x method: squeeze a copy and evaluate it on
held-out text disjoint from the calibration text (`prune.evaluation.evaluate_model`: perplexity for
causal LMs, cosine fidelity to the original's embeddings for encoders), with its parameters and
latency (`prune.evaluation.speed`). Then, at the parameter count of each --pareto keep, three ways to
get there through the library's stages: width alone (squeeze), depth alone (our default cut: span +
linear repair, the block count whose parameters are closest), and both (half that cut, repaired, then
squeezed to the same count with statistics taken on the cut model). Rows go to JSON after each
measurement (--resume continues); PNG: quality against parameters and the Pareto plot against latency.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/width_quality.py minilm-l6
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/width_quality.py smollm2-135m --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

METHODS = {
    "magnitude": "weight norms, no compensation",
    "wanda": "activation-aware magnitude (Wanda-style), no compensation",
    "flap": "FLAP-style fluctuation with bias compensation",
    "pivot": "our selection (pivoted Cholesky), no compensation",
    "textbook": "pivoted Cholesky + least-squares fold (the paper's recipe)",
    "squeeze-forward": "output-aware forward selection + least-squares fold",
    "squeeze": "output-aware backward elimination + least-squares fold (our default)",
}
QUICK = {"calib_samples": 16, "eval_samples": 8}
FULL = {"calib_samples": 64, "eval_samples": 32}


def main() -> None:
    from benchmarks._common import add_protocol_flags, fill_protocol_sizes

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--keeps", default="0.9,0.75,0.6")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--pareto", default="0.75", help="keeps whose parameter count depth/width/both match")
    parser.add_argument("--pareto-method", default="squeeze", help="the width method of the depth+width rows")
    add_protocol_flags(parser, QUICK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/width_MODEL[_quick].json)"
    )
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    parser.add_argument("--plot-only", action="store_true", help="draw the PNG from --out and stop")
    args = parser.parse_args()
    fill_protocol_sizes(args, QUICK, FULL)
    out = Path(args.out or f"benchmarks/results/width_{args.model}{'_quick' if args.quick else ''}.json")
    if args.plot_only:
        import json

        print(f"wrote {plot_width(json.loads(out.read_text()), out.with_suffix('.png'))}")
        return
    run(args, out)


def run(args, out: Path) -> None:
    from dataclasses import replace

    import torch

    from benchmarks._common import Results, load_protocol, result_line
    from prune.budget.cost import ModelCosts
    from prune.evaluation import evaluate_model
    from prune.width import squeeze_model
    from prune.width.ridge import collect_split_stats

    torch.manual_seed(args.seed)
    setup = load_protocol(
        args.model,
        calib_samples=args.calib_samples,
        eval_samples=args.eval_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        speed=True,
        repeats=5,
    )
    model, tokenizer, kind, anatomy = setup.model, setup.tokenizer, setup.kind, setup.anatomy
    calib, eval_texts, protocol, settings = setup.calib, setup.eval_texts, setup.protocol, setup.settings
    costs = ModelCosts.from_model(model, anatomy)
    reference = model if kind == "encoder" else None
    timed: dict[int, dict] = {}  # parameter count -> speed: equal shapes run at the same speed

    def evaluate(candidate) -> dict:
        count = sum(p.numel() for p in candidate.parameters())
        quick = replace(settings, speed=False) if count in timed else settings
        metrics = evaluate_model(
            candidate, tokenizer, kind=kind, texts=eval_texts, reference=reference, settings=quick
        )
        if count in timed:
            return {**metrics, **timed[count], "speed_from": "the first model of these shapes"}
        timed[count] = {
            k: metrics[k] for k in ("latency_ms", "tokens_per_s", "peak_memory_mb") if k in metrics
        }
        return metrics

    protocol.update(
        eval_samples=args.eval_samples,
        latency=f"median of 5 forward passes of {args.batch_size} x {args.seq_len} tokens (prune.evaluation.speed)",
        methods={m: METHODS[m] for m in args.methods.split(",")},
        quick=args.quick,
    )
    results = Results(
        out,
        {
            "benchmark": "width_quality",
            "model": args.model,
            "kind": kind,
            "num_blocks": anatomy.num_blocks,
            "intermediate_size": costs.intermediate_size,
            "protocol": protocol,
        },
        resume=args.resume,
    )
    if not results.done("dense"):
        results.add("dense", {"method": "dense", "keep": 1.0, "drop": 0, **evaluate(model)})
    print(f"{args.model}: {anatomy.num_blocks} blocks, d_ff {costs.intermediate_size}", flush=True)

    stats = held = None
    for keep in (float(k) for k in args.keeps.split(",")):
        for method in args.methods.split(","):
            key = f"width|{method}|{keep}"
            if results.done(key):
                continue
            if stats is None:
                # the batches a fold is fitted on and those held back to choose its ridge, summed apart
                # (one forward pass each) as squeeze_model would split them itself
                start = time.perf_counter()
                stats, held = collect_split_stats(
                    model, calib, anatomy, list(range(anatomy.num_blocks)), progress=False
                )
                results.save(ffn_stats_s=round(time.perf_counter() - start, 2))
            start = time.perf_counter()
            result = squeeze_model(
                model,
                calib,
                keep=keep,
                method=method,
                stats=stats,
                held_back_stats=held,
                energy_levels=(),
                progress=False,
            )
            squeeze_s = time.perf_counter() - start
            row = {
                "method": method,
                "keep": keep,
                "drop": 0,
                "kept": result.report.kept,
                "squeeze_s": round(squeeze_s, 2),
                **squeeze_errors(result.report),
                **evaluate(result.model),
            }
            del result
            results.add(key, row)
            print(result_line(row), flush=True)
    del stats, held

    scores: dict = {}  # the angular scores of the original, collected once for every --pareto keep
    for keep in (float(k) for k in filter(None, args.pareto.split(","))):
        budget = costs.params_after((), round(keep * costs.intermediate_size))
        rows = _equal_params(
            model, anatomy, costs, calib, budget, keep, args.pareto_method, results, evaluate, scores
        )
        for row in rows:
            print(result_line(row), flush=True)
    results.save()
    print(f"wrote {out} and {plot_width(results.data, out.with_suffix('.png'))}")


def squeeze_errors(report) -> dict:
    """A squeeze report's mean relative FFN output errors (calibration, held back) and ridges per block.

    The held-back error is None where no ridge was chosen on held-back batches (methods without a
    least-squares fold): their fold, if any, did not see those batches' tokens differently.
    """
    blocks = report.blocks
    held = [b.held_back_error for b in blocks if b.held_back_error is not None]
    return {
        "mean_output_error": sum(b.error for b in blocks) / len(blocks),
        "mean_held_back_error": sum(held) / len(held) if held else None,
        "ridges": [b.ridge for b in blocks],
        "calib_tokens": report.num_tokens,
        "held_back_tokens": report.held_back_tokens,
        "ridge_note": report.ridge_note,
    }


def _equal_params(
    model, anatomy, costs, calib, budget, keep, method, results, evaluate, scores: dict
) -> list[dict]:
    """Depth alone and depth + width at the parameter count `budget` of width alone at `keep`.

    `scores` holds the original's angular scores: filled on first use (nothing is collected when every
    row of this keep is already in the file), then shared by the other keeps.
    """
    from prune.collect import collect_stats
    from prune.plan import plan_pruning
    from prune.repair import repair_cut
    from prune.surgery import remove_blocks
    from prune.width import squeeze_model

    if all(results.done(f"pareto|{label}|{keep}") for label in ("depth", "depth+width")):
        return []
    if not scores:
        stats = collect_stats(model, calib, anatomy=anatomy, metrics=("angular",), progress=False)
        scores.update(stats.scores())

    def cut(drop: int):
        plan = plan_pruning(scores, anatomy.num_blocks, f"drop-{drop}", "span")
        pruned = remove_blocks(model, plan.drop, anatomy=anatomy)
        repair_cut(model, pruned, plan.drop, calib, method="linear", anatomy=anatomy, progress=False)
        return plan, pruned

    # depth alone: the span cut whose parameter count is closest to the budget (span plans nest poorly,
    # but every n-block cut of equal blocks costs the same here, so any plan's count is the count)
    counts = {n: costs.params_after(range(1, n + 1)) for n in range(1, anatomy.num_blocks - 1)}
    depth = min(counts, key=lambda n: abs(counts[n] - budget))
    rows = []
    plans = [("depth", depth, False)] + ([("depth+width", depth // 2, True)] if depth >= 2 else [])
    for label, drop, width in plans:
        key = f"pareto|{label}|{keep}"
        if results.done(key):
            continue
        start = time.perf_counter()
        plan, pruned = cut(drop)
        kept, errors = None, {}
        if width:
            kept = costs.max_keep_within(plan.drop, budget)
            fraction = kept / costs.intermediate_size
            squeezed = squeeze_model(
                pruned, calib, keep=fraction, method=method, inplace=True, energy_levels=(), progress=False
            )
            pruned, errors = squeezed.model, squeeze_errors(squeezed.report)
        row = {
            "method": label,
            "keep": keep,
            "budget_params": budget,
            "drop": drop,
            "blocks": list(plan.drop),
            "kept": kept,
            "width_method": method if width else None,
            "build_s": round(time.perf_counter() - start, 2),
            **errors,
            **evaluate(pruned),
        }
        results.add(key, row)
        rows.append(row)
    return rows


def plot_width(data: dict, path: Path) -> Path:
    """Quality against parameters (every method) and against latency (the equal-parameter comparison)."""
    from benchmarks._common import figure, quality_keys

    key = quality_keys(data["kind"])[0]
    rows = [r for r in data["rows"] if key in r]
    dense = next(r for r in rows if r["method"] == "dense")
    fig, axes = figure(11.0, 4.2, ncols=2)
    for axis, x in zip(axes, ("parameters", "latency_ms"), strict=True):
        methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
        for method in methods:
            points = sorted((r[x], r[key]) for r in rows if r["method"] == method and x in r)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axis.scatter([dense[x]], [dense[key]], marker="*", s=120, color="black", label="dense", zorder=5)
        axis.set_xlabel("parameters" if x == "parameters" else "latency (ms per batch)")
        axis.set_ylabel(f"held-out {key}")
        if key == "perplexity":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0].set_title(f"{data['model']}: quality against parameters")
    axes[1].set_title("against latency (depth / width / both)")
    axes[1].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


if __name__ == "__main__":
    main()
