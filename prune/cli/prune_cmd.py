"""`prune-llm MODEL --target ...`: prune a model and save a stock checkpoint."""

from __future__ import annotations

import argparse
import json
import shlex

from prune.cli.flags import add_option_flags, options_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `prune` subcommand (also reached as plain `prune-llm MODEL ...`)."""
    parser = subparsers.add_parser(
        "prune",
        help="Prune a model (the default command: `prune-llm MODEL --target 8-layers`).",
        description="Rank the blocks of MODEL by redundancy over calibration data, remove the most redundant "
        "ones, evaluate before/after on held-out text and save a stock Hugging Face checkpoint.",
    )
    add_option_flags(parser, overrides_only=False)
    parser.add_argument("--json", action="store_true", help="Print the report as JSON instead of a summary.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the pruning pipeline from parsed flags; prints a summary (or the JSON report)."""
    from prune.pipeline import run_pruning

    options = options_from_args(args)
    command = "prune-llm " + shlex.join(getattr(args, "argv", []) or [])
    result = run_pruning(options, command=command, progress=not args.quiet)
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        print_summary(result)
    return 0


def print_summary(result) -> None:
    """A short human summary of a pruning result: what was cut, why, and before/after."""
    report = result.report
    model, plan = report["model"], report["plan"]
    print(f"{model['spec']}: {model['num_blocks_before']} -> {model['num_blocks_after']} blocks")
    if plan["drop"]:
        print(f"removed blocks {list(plan['drop'])} ({plan['strategy']}): {plan['reason']}")
    squeeze = report.get("squeeze")
    if squeeze:
        errors = [b["error"] for b in squeeze["blocks"]]
        print(
            f"FFN width {squeeze['size_before']} -> {squeeze['kept']} in every block ({squeeze['method']}, "
            f"keep {squeeze['keep']}); relative output error mean {sum(errors) / len(errors):.4f}, "
            f"max {max(errors):.4f}"
        )
    print(f"parameters {model['params_before']:,} -> {model['params_after']:,}")
    evaluation = report.get("evaluation")
    if evaluation:
        before, after = evaluation["before"], evaluation["after"]
        for key in before:
            if (
                key in after
                and isinstance(before[key], (int, float))
                and isinstance(after[key], (int, float))
            ):
                print(f"  {key:<28} {before[key]:>14.4f} -> {after[key]:>14.4f}")
    if result.out_dir:
        print(f"saved to {result.out_dir} (prune_report.md explains the choice)")
    if result.hub_url:
        print(f"pushed to {result.hub_url}")
