"""Training-free repair on real models: every repair method and none, at several cut depths, on held-out text.

One model load, one calibration pass for the angular distances; then per target and per span choice
(``span``: closest by angular distance; ``span-repair``: lowest error after linear repair), per repair
method: cut (`prune.surgery.remove_blocks`), repair (`prune.repair.repair_cut`), evaluate on the held-out
split (disjoint from calibration) with the project's harness (`prune.evaluation`). Prints a Markdown
table; --json FILE writes every row.

    python benchmarks/repair.py smollm2-135m --targets 26-layers,24-layers,22-layers
    python benchmarks/repair.py minilm-l6 --targets 5-layers,4-layers

A method entry is NAME[:OPTION...] with options one-pass (all spans fitted on the original in one pass),
relative (token-relative objective), ridge=R (fixed relative ridge instead of the held-out choice),
skip=N (leave the first N tokens of each window out of the fit), refit (then refit the down projections of
the kept blocks from the junction on towards the original's stream, `prune.repair.refit`), refit=N (only
the first N blocks from the junction on), rweight=token / rridge=R / rskip=N (the refit's weighting,
fixed ridge, leading tokens left out), attn / attn=own|next|skip (also refit each block's attention output
projection first, towards the original's mid-state; at the junction block as said, default own).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

METHODS = ("none", "scale", "linear", "linear:relative")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--targets", required=True, help="comma-separated targets, e.g. 26-layers,24-layers")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--choices", default="span,span-repair", help="span strategies to compare")
    parser.add_argument("--choice-objective", default="mse", help="objective of span-repair's choice")
    parser.add_argument("--strategy-methods", default="", help="CHOICE=METHOD,... : only these for a choice")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    from prune.anatomy import get_anatomy
    from prune.collect import collect_stats
    from prune.data import load_texts, make_batches
    from prune.evaluation import EvalSettings, evaluate_model
    from prune.loading import load_model
    from prune.plan import STRATEGIES, SearchContext, plan_pruning

    loaded = load_model(args.model)
    model, tokenizer, kind = loaded.model, loaded.tokenizer, loaded.kind
    anatomy = get_anatomy(model)
    calib = make_batches(
        tokenizer,
        load_texts("default", purpose="calib", seed=args.seed),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.calib_samples,
        packed=kind == "causal-lm",
    )
    eval_texts = load_texts("default", purpose="eval", seed=args.seed)
    # Perplexity only for causal LMs (KL would evaluate the original again for every row); fidelity to
    # the original's embeddings for encoders (cheap).
    settings = EvalSettings(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.eval_samples,
        generation=False,
        speed=False,
    )
    scores = collect_stats(model, calib, anatomy=anatomy, metrics=("angular",), progress=False).scores()
    reference = model if kind == "encoder" else None
    original = evaluate_model(
        model, tokenizer, kind=kind, texts=eval_texts, reference=reference, settings=settings
    )
    print(f"{args.model}: {anatomy.num_blocks} blocks; original {_metrics(original)}", flush=True)

    only: dict[str, list[str]] = {}
    for item in filter(None, args.strategy_methods.split(",")):
        choice, _, method = item.partition("=")
        only.setdefault(choice, []).append(method)
    rows = []
    for target in args.targets.split(","):
        for choice in args.choices.split(","):
            start = time.perf_counter()
            search = None
            if getattr(STRATEGIES.get(choice), "needs_search", False):
                search = SearchContext(model=model, batches=calib, kind=kind, anatomy=anatomy)
            if choice == "span-repair" and args.choice_objective != "mse":
                from dataclasses import replace

                from prune.plan.repaired_span import SPAN_REPAIR

                STRATEGIES._entries["span-repair"] = replace(SPAN_REPAIR, objective=args.choice_objective)
            plan = plan_pruning(scores, anatomy.num_blocks, target, choice, search=search)
            plan_s = time.perf_counter() - start
            for method in only.get(choice, args.methods.split(",")):
                row = _measure(
                    model, tokenizer, kind, anatomy, plan, method, calib, eval_texts, settings, reference
                )
                row.update(target=target, choice=choice, plan_s=round(plan_s, 1))
                rows.append(row)
                print(
                    f"| {target} | {choice} | {list(plan.drop)} | {method} | {_metrics(row['after'])} | "
                    f"{row['repair_s']:.1f} s | {row['residuals']} |",
                    flush=True,
                )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"model": args.model, "original": original, "rows": rows, "peak_rss_mib": peak_mib},
                handle,
                indent=2,
            )
    print(f"peak RSS of the whole run: {peak_mib:.0f} MiB")


def _measure(model, tokenizer, kind, anatomy, plan, method, calib, eval_texts, settings, reference) -> dict:
    from prune.evaluation import evaluate_model
    from prune.repair import repair_cut
    from prune.surgery import remove_blocks

    name, *opts = method.split(":")
    options: dict = {}
    refit = 0
    refit_options: dict = {}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "one-pass":
            options["order"] = "one-pass"
        elif key == "relative":
            options["objective"] = "relative"
        elif key == "ridge":
            options["ridge"] = float(value)
        elif key == "skip":
            options["skip_tokens"] = int(value)
        elif key == "refit":
            refit = int(value) if value else -1
        elif key == "rweight":
            refit_options["weighting"] = value
        elif key == "rridge":
            refit_options["ridge"] = float(value)
        elif key == "rskip":
            refit_options["skip_tokens"] = int(value)
        elif key == "attn":
            refit_options["attention"] = True
            if value:
                refit_options["junction_attention"] = value
        else:
            raise SystemExit(f"unknown method option {opt!r}")
    pruned = remove_blocks(model, plan.drop, anatomy=anatomy, share_weights=True)
    start = time.perf_counter()
    report = repair_cut(
        model, pruned, plan.drop, calib, method=name, anatomy=anatomy, progress=False, **options
    )
    refit_report = None
    if refit:
        from prune.repair.refit import cut_correspondence, refit_model

        correspondence = cut_correspondence(anatomy.num_blocks, plan.drop)
        first = next(k for k, c in enumerate(correspondence) if c != k)
        last = len(correspondence) if refit < 0 else min(len(correspondence), first + refit)
        refit_report = refit_model(
            model,
            pruned,
            calib,
            correspondence=correspondence,
            blocks=range(first, last),
            anatomy=anatomy,
            **refit_options,
        ).to_dict()
    repair_s = time.perf_counter() - start
    after = evaluate_model(
        pruned, tokenizer, kind=kind, texts=eval_texts, reference=reference, settings=settings
    )
    residuals = [
        (span.first, span.last, span.residual_before, span.residual_after, span.ridge)
        for span in report.spans
    ]
    return {
        "drop": list(plan.drop),
        "method": method,
        "after": after,
        "repair_s": repair_s,
        "residuals": residuals,
        "report": report.to_dict(),
        "refit": refit_report,
    }


def _metrics(values: dict) -> str:
    keys = [k for k in ("perplexity", "cosine_mean", "cosine_min") if k in values]
    return ", ".join(f"{k} {values[k]:.4g}" for k in keys)


if __name__ == "__main__":
    main()
