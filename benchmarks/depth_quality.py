"""Depth pruning, quality: every published block-selection method through one harness, with and without repair.

Per model: one load, one calibration pass for every score (block influence, angular distance, CKA;
one more in last-token mode for PruneMe's variant), one calibration-loss search context for the
greedy method. Then per depth x method x repair: plan (`prune.plan.plan_pruning`), cut
(`prune.surgery.remove_blocks`), repair (`prune.repair.repair_cut`), and evaluate on held-out text
disjoint from the calibration text (`prune.evaluation.evaluate_model`): perplexity for causal LMs,
cosine fidelity of the embeddings to the original's for encoders. Random is 5 seeds (mean and spread
in the tables). The rows are written to JSON after each measurement (--resume continues a stopped
run) and a PNG curve of quality against blocks removed is drawn from them.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/depth_quality.py smollm2-135m --drops 3,6,9 --quick
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/depth_quality.py minilm-l6 --drops 1,2
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/depth_quality.py mpnet-base --drops 2,4

The ``default`` method is what `prune-llm MODEL --target N-layers` does with its default options
(`prune.options.PruneOptions`, read from there, not restated here): the library's own `plan`, `cut`
and `repair` stages (`prune.stages`) on this harness's calibration batches and scores, so the refit,
the repair guard and any later change of the defaults are measured as the CLI runs them. A plan
already made for the same method, depth and seed (here or in the file resumed) is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

# label -> (strategy, metric, token mode of the scores, the method it stands for)
METHODS: dict[str, tuple[str, str | None, str, str]] = {
    "span": ("span", "angular", "tokens", "Gromov et al. 2024: angular distance, contiguous span"),
    "span-last": ("span", "angular", "last", "PruneMe: angular distance of the last token, contiguous span"),
    "topk": ("topk", "bi", "tokens", "ShortGPT: block influence, independent top-k"),
    "cka": ("cka", "cka", "tokens", "RedTest: CKA of block input and output"),
    "iterative": ("iterative", None, "tokens", "SLEB-like: greedy removal on calibration loss"),
    "last": ("last", None, "tokens", "reverse order: the last blocks before the final one"),
    "random": ("random", None, "tokens", "random blocks (seeds 0-4)"),
    "span-repair": (
        "span-repair",
        None,
        "tokens",
        "ours: the closest spans, refitted, lowest repaired error",
    ),
    # not one strategy: the library's plan, cut and repair stages with `PruneOptions` defaults
    "default": (
        "default",
        None,
        "tokens",
        "`prune-llm MODEL --target N-layers`: the library's stages, defaults",
    ),
}
REPAIRS = ("none", "scale", "linear")
QUICK = {"calib_samples": 16, "eval_samples": 8, "search_batches": 2}
FULL = {"calib_samples": 64, "eval_samples": 32, "search_batches": 4}


def main() -> None:
    from benchmarks._common import add_protocol_flags, fill_protocol_sizes

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--drops", help="blocks removed, comma-separated, e.g. 3,6,9 (needed to measure)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repairs", default=",".join(REPAIRS))
    parser.add_argument("--seeds", type=int, default=5, help="random: this many seeds")
    parser.add_argument(
        "--random-repairs", default=None, help="repairs of the random rows (default: --repairs)"
    )
    parser.add_argument(
        "--merge", nargs="*", default=None, help="add the rows of these result files to --out"
    )
    parser.add_argument(
        "--one-pass",
        default="topk,cka",
        help="methods whose multi-span cuts are also repaired (linear) with repair_order one-pass",
    )
    add_protocol_flags(parser, QUICK)
    parser.add_argument("--search-batches", type=int, default=None, help="iterative: batches per candidate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/depth_MODEL[_quick].json)"
    )
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    parser.add_argument("--plot-only", action="store_true", help="draw the PNG from --out and stop")
    args = parser.parse_args()
    fill_protocol_sizes(args, QUICK, FULL)
    out = Path(args.out or f"benchmarks/results/depth_{args.model}{'_quick' if args.quick else ''}.json")
    if args.merge:
        _merge(out, args.merge)
    if args.plot_only or args.merge:
        import json

        print(f"wrote {plot_depth(json.loads(out.read_text()), out.with_suffix('.png'))}")
        return
    if not args.drops:
        parser.error("--drops is needed to measure (only --plot-only and --merge work without it)")
    run(args, out)


def run(args, out: Path) -> None:
    from benchmarks._common import Results, load_protocol, result_line
    from prune.collect import collect_stats
    from prune.evaluation import evaluate_model
    from prune.options import PruneOptions
    from prune.plan import SearchContext, required_metrics

    defaults = PruneOptions(model=args.model, target="drop-1")  # the options of a plain `--target` run
    setup = load_protocol(
        args.model,
        calib_samples=args.calib_samples,
        eval_samples=args.eval_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    model, tokenizer, kind, anatomy = setup.model, setup.tokenizer, setup.kind, setup.anatomy
    calib, eval_texts, protocol, settings = setup.calib, setup.eval_texts, setup.protocol, setup.settings
    # Encoders are scored against the original's embeddings; causal LMs by their own perplexity (a KL to
    # the original would run it again for every row).
    reference = model if kind == "encoder" else None

    def evaluate(candidate) -> dict:
        return evaluate_model(
            candidate, tokenizer, kind=kind, texts=eval_texts, reference=reference, settings=settings
        )

    methods = args.methods.split(",")
    protocol.update(
        eval_samples=args.eval_samples,
        eval_tokens_per_window=args.seq_len,
        search="iterative: SearchContext defaults (objective loss for causal LMs, cosine for encoders), "
        f"{args.search_batches} calibration batches per candidate",
        default={
            "strategy": defaults.strategy,
            "repair": defaults.repair,
            "repair_order": defaults.repair_order,
        },
        methods={label: METHODS[label][3] for label in methods},
        quick=args.quick,
    )
    results = Results(
        out,
        {
            "benchmark": "depth_quality",
            "model": args.model,
            "kind": kind,
            "num_blocks": anatomy.num_blocks,
            "protocol": protocol,
        },
        resume=args.resume,
    )
    if not results.done("dense"):
        start = time.perf_counter()
        results.add(
            "dense", {"method": "dense", "drop": 0, "blocks": [], **evaluate(model), "eval_s": _since(start)}
        )
    print(
        f"{args.model}: {anatomy.num_blocks} blocks, {protocol['calib_tokens']} calibration tokens",
        flush=True,
    )

    needed = {
        m
        for label in methods
        if METHODS[label][2] == "tokens" and label != "default"
        for m in required_metrics(METHODS[label][0], METHODS[label][1])
    }
    if "default" in methods:  # what the run's plan reads (its `collect` also gathers the report's scores)
        strategy = defaults.strategy
        with contextlib.suppress(ImportError):
            from prune.stages.depth import run_strategy  # `auto` resolved as the run resolves it

            strategy = run_strategy(defaults, anatomy)
        needed |= set(required_metrics(strategy, defaults.metric))
    needed |= {"angular"} if "span-repair" in methods else set()
    start = time.perf_counter()
    scores: dict[str, dict] = {"tokens": {}}  # random, last and iterative alone read no score
    if needed:
        stats = collect_stats(model, calib, anatomy=anatomy, metrics=sorted(needed), progress=False)
        scores["tokens"] = stats.scores()
    collect_s = {"tokens": _since(start)}
    if any(METHODS[label][2] == "last" for label in methods):
        start = time.perf_counter()
        stats = collect_stats(
            model, calib, anatomy=anatomy, metrics=("angular",), token_mode="last", progress=False
        )
        scores["last"], collect_s["last"] = stats.scores(), _since(start)
    search = SearchContext(
        model=model, batches=calib, kind=kind, anatomy=anatomy, max_batches=args.search_batches
    )
    results.save(collect_s=collect_s, metrics=sorted(needed))

    repairs = args.repairs.split(",")
    one_pass = set(filter(None, args.one_pass.split(",")))
    # repair-major in the order given, then the one-pass refits, random last: a run stopped early
    # has every depth of the scored methods with the first repair
    drops = [int(d) for d in args.drops.split(",")]
    scored = [label for label in methods if label not in ("random", "default")]
    # the default pipeline first: it is the row every other is compared with
    cases = [
        ("default", drop, defaults.repair, "default", args.seed) for drop in drops if "default" in methods
    ]
    cases += [
        (label, drop, repair, "sequential", args.seed)
        for repair in repairs
        for label in scored
        for drop in drops
    ]
    cases += [
        (label, drop, "linear", "one-pass", args.seed)
        for label in scored
        if label in one_pass
        for drop in drops
    ]
    if "random" in methods:
        chosen = (args.random_repairs or args.repairs).split(",")
        cases += [("random", d, r, "sequential", s) for s in range(args.seeds) for r in chosen for d in drops]
    for label, drop, repair, how, seed in cases:
        key = f"{drop}|{label}|{repair}|{how}|{seed}"
        if results.done(key):
            continue
        if how == "one-pass":
            sequential = [
                r for r in results.data["rows"] if r["key"] == f"{drop}|{label}|linear|sequential|{seed}"
            ]
            if sequential and len(_spans(sequential[0]["blocks"])) < 2:
                continue  # one span: both orders are the same fit
        if label == "default":
            row = _measure_default(setup, scores, args, drop, args.seed, evaluate)
            results.add(key, row)
            print(result_line(row), flush=True)
            continue
        row = _measure(
            model,
            anatomy,
            kind,
            calib,
            scores,
            search,
            label,
            drop,
            repair,
            how,
            seed,
            evaluate,
            results.data["rows"],
        )
        results.add(key, row)
        print(result_line(row), flush=True)
    results.save()
    print(f"wrote {out} and {plot_depth(results.data, out.with_suffix('.png'))}")


def _measure(
    model, anatomy, kind, calib, scores, search, label, drop, repair, order, seed, evaluate, done
) -> dict:
    """One row; a cut already measured (same blocks, repair and order, e.g. two methods that agree)
    is not measured again: its numbers are copied and the row says from where."""
    from prune.options import PruneOptions
    from prune.plan import plan_pruning
    from prune.repair import RepairError, repair_from_options
    from prune.surgery import remove_blocks

    strategy, metric, mode, _ = METHODS[label]
    # Every strategy is deterministic for one protocol and seed, so a plan already made for this method,
    # depth and seed (another repair's row, here or in the file resumed) is reused, not searched again.
    planned = next(
        (
            r
            for r in done
            if (r.get("method"), r.get("drop"), r.get("seed")) == (label, drop, seed) and "blocks" in r
        ),
        None,
    )
    start = time.perf_counter()
    if planned is not None:
        blocks, plan_from = tuple(planned["blocks"]), planned.get("plan_from", planned["key"])
    else:
        blocks = plan_pruning(
            scores[mode],
            anatomy.num_blocks,
            f"drop-{drop}",
            strategy,
            metric=metric,
            seed=seed,
            search=search if getattr(_strategy(strategy), "needs_search", False) else None,
        ).drop
        plan_from = None
    plan_s = _since(start)
    start = time.perf_counter()
    pruned = remove_blocks(model, blocks, anatomy=anatomy, share_weights=True)
    surgery_s = _since(start)
    row = {
        "method": label,
        "strategy": strategy,
        "metric": metric,
        "token_mode": mode,
        "drop": drop,
        "repair": repair,
        "order": order,
        "seed": seed,
        "blocks": list(blocks),
        **({"plan_from": plan_from} if plan_from else {}),
    }
    for old in done:
        same = (old.get("blocks"), old.get("repair"), old.get("order"), old.get("drop")) == (
            row["blocks"],
            repair,
            order,
            drop,
        )
        if same and "same_as" not in old:
            copied = {k: v for k, v in old.items() if k not in row and k != "key"}
            return {**row, **copied, "same_as": old["key"], "plan_s": plan_s}
    start = time.perf_counter()
    # the row's repair and order as a run's options; the rest at their defaults, refit off (the baseline
    # rows are the map alone; the `default` rows run the library's stages with every default)
    options = PruneOptions(model="-", target=f"drop-{drop}", repair=repair, repair_order=order, refit="off")
    try:
        report = repair_from_options(model, pruned, blocks, calib, options, anatomy=anatomy, progress=False)
    except RepairError as err:  # recorded, not hidden: the table shows the method cannot repair this cut
        return {**row, "error": str(err), "plan_s": plan_s, "repair_s": _since(start), "eval_s": 0.0}
    repair_s = _since(start)
    start = time.perf_counter()
    quality = evaluate(pruned)
    return {
        **row,
        **quality,
        "residuals": [(s.first, s.last, s.residual_before, s.residual_after) for s in report.spans],
        "warnings": list(report.warnings),
        "plan_s": plan_s,
        "surgery_s": surgery_s,
        "repair_s": repair_s,
        "eval_s": _since(start),
    }


def _measure_default(setup, scores, args, drop: int, seed: int, evaluate) -> dict:
    """What `prune-llm MODEL --target N-layers` does: the library's `plan`, `cut` and `repair` stages on
    the harness's calibration batches and scores, every option at its `PruneOptions` default (so a
    changed default is measured as it is, refit and repair guard included). The run's sizes are the
    protocol's (``--calib-samples``, ``--seq-len``, ``--batch-size``), so where the defaults hold
    calibration sequences back (the repair guard's), they are the ones `calibrate` would hold back:
    the sequences after the calibration ones, nothing fitted on them."""
    from prune import stages
    from prune.options import PruneOptions

    options = PruneOptions(
        model=args.model,
        target=f"drop-{drop}",
        seed=seed,
        calib_samples=args.calib_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
    )
    ctx = stages.RunContext(
        options,
        loaded=setup.loaded,
        anatomy=setup.anatomy,
        calib_batches=setup.calib,
        scores=scores["tokens"],
        progress=False,
    )
    held = _held_back(setup, options, args.seed)
    if held is not None:
        ctx.guard_batches = held
    times = {}
    for name in ("plan", "cut", "repair"):
        start = time.perf_counter()
        ctx = getattr(stages, name)(ctx)
        times[f"{'surgery' if name == 'cut' else name}_s"] = _since(start)
    start = time.perf_counter()
    quality = evaluate(ctx.pruned)
    report = ctx.repair
    fields = (
        "strategy",
        "metric",
        "repair",
        "repair_order",
        "refit",
        "refit_blocks",
        "repair_guard",
        "search_objective",
    )
    asked = PruneOptions(model=args.model, target=f"drop-{drop}")  # before `plan` resolves `auto`
    return {
        "method": "default",
        "strategy": ctx.plan.strategy,
        "drop": drop,
        "repair": options.repair,
        "order": "default",
        "seed": seed,
        "blocks": list(ctx.plan.drop),
        "options": {name: getattr(asked, name) for name in fields if hasattr(asked, name)},
        "plan_reason": ctx.plan.reason,
        "auto_candidates": ctx.plan.details.get("auto_candidates"),
        "guard": getattr(report, "guard", None),
        "guard_sequences": sum(len(b["input_ids"]) for b in held) if held else 0,
        "repair_applied": report.method,
        "refit": report.refit,
        **quality,
        "residuals": [(s.first, s.last, s.residual_before, s.residual_after) for s in report.spans],
        "warnings": list(report.warnings),
        **times,
        "eval_s": _since(start),
    }


def _held_back(setup, options, seed: int) -> list | None:
    """The held-back calibration batches the run's `calibrate` stage would make (None: the library
    holds none back, or this version has no such stage)."""
    try:
        from prune.data import load_texts, make_batch_split
        from prune.stages.prepare import guard_samples
    except ImportError:
        return None
    count = guard_samples(options)
    if not count:
        return None
    fit, held = make_batch_split(
        setup.tokenizer,
        load_texts("default", purpose="calib", seed=seed),
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        num_samples=options.calib_samples,
        packed=setup.kind == "causal-lm",
        held_back=count,
    )
    if [b["input_ids"].tolist() for b in fit] != [b["input_ids"].tolist() for b in setup.calib]:
        raise SystemExit("the held-back split changed the calibration batches; fix benchmarks/_common first")
    return held


def _merge(out: Path, others: list[str]) -> None:
    """Rows of runs of the same protocol split over processes (e.g. one depth each), into one file."""
    import json

    data = json.loads(out.read_text())
    keys = {row["key"] for row in data["rows"]}
    for other in others:
        extra = json.loads(Path(other).read_text())
        # the methods may differ, and so may the recorded defaults: the pipeline's rows carry their options
        mine = {k: v for k, v in data["protocol"].items() if k not in ("methods", "default")}
        if {k: v for k, v in extra["protocol"].items() if k not in ("methods", "default")} != mine:
            raise SystemExit(f"{other} was measured with another protocol than {out}; not merged")
        data["rows"] += [row for row in extra["rows"] if row["key"] not in keys]
        data.setdefault("merged_commands", []).extend(extra.get("commands") or [extra["command"]])
    out.write_text(json.dumps(data, indent=1))


def _strategy(name: str):
    from prune.plan import STRATEGIES

    return STRATEGIES.get(name)


def _spans(blocks: list[int]) -> list[tuple[int, int]]:
    from prune.repair.base import contiguous_spans

    return contiguous_spans(blocks)


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def plot_depth(data: dict, path: Path) -> Path:
    """Quality against blocks removed: one panel per repair, one line per method (random: mean +- std)."""
    import statistics

    from benchmarks._common import figure, quality_keys

    key = quality_keys(data["kind"])[0]
    rows = [
        r
        for r in data["rows"]
        if r["method"] != "dense" and r.get("order", "sequential") in ("sequential", "default")
    ]
    dense = next(r[key] for r in data["rows"] if r["method"] == "dense")
    repairs = list(dict.fromkeys(r["repair"] for r in rows))
    fig, axes = figure(5.0 * len(repairs), 4.0, ncols=len(repairs))
    for axis, repair in zip(axes, repairs, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            points: dict[int, list[float]] = {}
            for r in rows:
                if r["method"] == method and r["repair"] == repair and key in r:
                    points.setdefault(r["drop"], []).append(r[key])
            drops = sorted(points)
            means = [statistics.fmean(points[d]) for d in drops]
            spread = [statistics.pstdev(points[d]) if len(points[d]) > 1 else 0.0 for d in drops]
            axis.errorbar(
                [0, *drops], [dense, *means], yerr=[0.0, *spread], marker="o", capsize=3, label=method
            )
        axis.set_title(f"{data['model']}: repair {repair}")
        axis.set_xlabel("blocks removed")
        axis.set_ylabel(f"held-out {key}")
        if key == "perplexity":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


if __name__ == "__main__":
    main()
