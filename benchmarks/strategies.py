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

    from prune import stages
    from prune.evaluation import EvalSettings, evaluate_model
    from prune.options import PruneOptions
    from prune.vocab import SCORE_METRICS, ModelKind

    # The run's own stages: one load, one calibration pass with every score, then per strategy only
    # plan -> cut -> evaluate on the same context.
    options = PruneOptions(
        model=args.model,
        target=args.target,
        calib_samples=args.calib_samples,
        eval_samples=args.eval_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        skip_tokens=args.skip_tokens,
        repair="none",
    )
    ctx = stages.calibrate(stages.load(stages.check(stages.RunContext(options))))
    model, tokenizer, kind = ctx.original, ctx.tokenizer, ctx.loaded.kind
    start = time.perf_counter()
    ctx = stages.collect(ctx, metrics=SCORE_METRICS)
    collect_s = time.perf_counter() - start

    probe_settings = None
    if args.probe and kind == ModelKind.ENCODER:
        probe_settings = EvalSettings(
            probe=True,
            speed=False,
            num_samples=1,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        probe_before = evaluate_model(
            model, tokenizer, kind=kind, texts=ctx.checked.eval_texts, settings=probe_settings
        )

    rows = []
    measured: dict[tuple[int, ...], dict] = {}  # strategies that pick the same blocks share one evaluation
    for entry in args.strategies.split(","):
        name, _, metric = entry.partition(":")
        start = time.perf_counter()
        plan = stages.plan(ctx, strategy=name, metric=metric or None).plan
        plan_s = time.perf_counter() - start
        if plan.drop not in measured:
            measured[plan.drop] = _measure(ctx, probe_settings)
            if probe_settings is not None:
                measured[plan.drop]["before"].update(probe_before)
        rows.append({"strategy": entry, "drop": list(plan.drop), "plan_s": plan_s, **measured[plan.drop]})
    anatomy = ctx.anatomy

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


def _measure(ctx, probe_settings) -> dict:
    """Cut the context's plan from the model and compare it with the original (and probe it if asked)."""
    from prune import stages
    from prune.evaluation import evaluate_model

    comparison = stages.evaluate(stages.cut(ctx)).comparison
    if probe_settings is not None:
        # The original's probe accuracy is measured once by the caller, not again for every strategy.
        comparison.after.update(
            evaluate_model(
                ctx.pruned,
                ctx.tokenizer,
                kind=ctx.loaded.kind,
                texts=ctx.checked.eval_texts,
                settings=probe_settings,
            )
        )
    return comparison.to_dict()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    main()
