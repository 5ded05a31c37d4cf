"""Compare every layer-selection strategy on one model and target, on the same data and protocol.

One model load and one calibration pass (all statistics at once); then, per strategy: plan, cut, and
evaluate the pruned model against the original on held-out text with `prune.evaluation.compare_models`.
Prints a Markdown table (and JSON with --json).

    python benchmarks/strategies.py smollm2-135m --target 24-layers
    python benchmarks/strategies.py minilm-l6 --target 4-layers --probe

An entry of --strategies is a strategy name, or NAME:METRIC for the score it ranks by (the default list
has every strategy with every metric it accepts).
"""

from __future__ import annotations

import argparse
import time

STRATEGY_ORDER = (
    "span",
    "span:cka",
    "topk",
    "topk:angular",
    "topk:cka",
    "cka",
    "iterative",
    "iterative:cka",
    "last",
    "random",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--target", required=True)
    parser.add_argument("--strategies", default=",".join(STRATEGY_ORDER))
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-tokens", type=int, default=0, help="leave each calibration sequence's first N tokens out"
    )
    parser.add_argument("--probe", action="store_true", help="encoders: also probe accuracy (minutes)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from prune.anatomy import get_anatomy
    from prune.collect import collect_stats
    from prune.data import load_texts, make_batches
    from prune.evaluation import EvalSettings, evaluate_model
    from prune.loading import load_model
    from prune.plan import STRATEGIES, plan_pruning
    from prune.plan.search import SearchContext

    loaded = load_model(args.model)
    model, tokenizer, kind = loaded.model, loaded.tokenizer, loaded.kind
    anatomy = get_anatomy(model)
    packed = kind == "causal-lm"
    calib = make_batches(
        tokenizer,
        load_texts("default", purpose="calib", seed=args.seed),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.calib_samples,
        packed=packed,
    )
    eval_texts = load_texts("default", purpose="eval", seed=args.seed)
    start = time.perf_counter()
    stats = collect_stats(
        model,
        calib,
        anatomy=anatomy,
        metrics=("bi", "angular", "cka", "cka_io"),
        skip_tokens=args.skip_tokens,
        seed=args.seed,
    )
    collect_s = time.perf_counter() - start
    scores = stats.scores()

    probe_settings = None
    if args.probe and kind == "encoder":
        probe_settings = EvalSettings(
            probe=True,
            speed=False,
            num_samples=1,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        probe_before = evaluate_model(model, tokenizer, kind=kind, texts=eval_texts, settings=probe_settings)

    rows = []
    measured: dict[tuple[int, ...], dict] = {}  # strategies that pick the same blocks share one evaluation
    for entry in args.strategies.split(","):
        name, _, metric = entry.partition(":")
        start = time.perf_counter()
        search = None
        if getattr(STRATEGIES.get(name), "needs_search", False):
            search = SearchContext(model=model, batches=calib, kind=kind, anatomy=anatomy)
        plan = plan_pruning(
            scores,
            anatomy.num_blocks,
            args.target,
            name,
            metric=metric or None,
            seed=args.seed,
            search=search,
        )
        plan_s = time.perf_counter() - start
        if plan.drop not in measured:
            measured[plan.drop] = _measure(
                model, tokenizer, kind, plan.drop, anatomy, eval_texts, args, probe_settings
            )
            if probe_settings is not None:
                measured[plan.drop]["before"].update(probe_before)
        rows.append({"strategy": entry, "drop": list(plan.drop), "plan_s": plan_s, **measured[plan.drop]})

    if args.json:
        from prune.jsonable import dumps_json

        print(dumps_json({"collect_s": collect_s, "rows": rows}))
        return
    keys = [k for k, v in rows[0]["after"].items() if isinstance(v, (int, float))]
    print(
        f"{args.model} {anatomy.num_blocks} blocks, target {args.target}; statistics in {collect_s:.1f} s "
        f"(first {args.skip_tokens} tokens of each sequence left out)"
    )
    print(f"protocol: {rows[0].get('protocol')}")
    print("| strategy | removed | " + " | ".join(keys) + " | plan s |")
    print("|---|---|" + "---|" * len(keys) + "---|")
    before = rows[0]["before"]
    print("| (original) | - | " + " | ".join(_fmt(before.get(k)) for k in keys) + " | |")
    for row in rows:
        values = " | ".join(_fmt(row["after"].get(k)) for k in keys)
        print(f"| {row['strategy']} | {row['drop']} | {values} | {row['plan_s']:.1f} |")


def _measure(model, tokenizer, kind, drop, anatomy, eval_texts, args, probe_settings) -> dict:
    """Cut `drop` from a copy of `model` and compare it with the original (and probe it if asked)."""
    from prune.evaluation import compare_models, evaluate_model
    from prune.surgery import remove_blocks

    pruned = remove_blocks(model, drop, anatomy=anatomy)
    comparison = compare_models(
        model,
        pruned,
        tokenizer,
        kind=kind,
        eval_texts=eval_texts,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.eval_samples,
        seed=args.seed,
    )
    if probe_settings is not None:
        # The original's probe accuracy is measured once by the caller, not again for every strategy.
        comparison.after.update(
            evaluate_model(pruned, tokenizer, kind=kind, texts=eval_texts, settings=probe_settings)
        )
    return comparison.to_dict()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    main()
