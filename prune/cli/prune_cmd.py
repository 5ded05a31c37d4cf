"""`prune-llm MODEL --target ...`: prune a model and save a stock checkpoint."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

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

    options = with_default_out(options_from_args(args))
    command = "prune-llm " + shlex.join(getattr(args, "argv", []) or [])
    result = run_pruning(options, command=command, progress=not args.quiet)
    if args.json:
        from prune.jsonable import dumps_json

        print(dumps_json(result.report))
    else:
        print_summary(result)
    return 0


def default_out_dir(model: str, target: str | None, ffn_keep: float | str | None = None) -> str:
    """pruned/<model-name>-<target>[-ffn<keep>]: where a run without --out saves (never an existing
    folder's parent).

    Example:
        >>> default_out_dir("HuggingFaceTB/SmolLM2-135M", "24-layers")
        'pruned/SmolLM2-135M-24-layers'
        >>> default_out_dir("minilm-l6", None, 0.75)
        'pruned/minilm-l6-ffn0.75'
    """
    name = Path(model.rstrip("/\\")).name
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    parts = [
        name,
        *([target.strip()] if target else []),
        *([f"ffn{ffn_keep}"] if ffn_keep is not None else []),
    ]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.") or "model"
    return f"pruned/{slug.replace('%', 'pct')}"


def with_default_out(options):
    """The options with a default --out when none was given (a whole run must not end unsaved), said on
    stderr before the run starts."""
    if options.out is not None or options.push_to_hub:
        return options
    out = default_out_dir(options.model, options.target or options.budget, options.ffn_keep)
    print(f"no --out given: the pruned model will be saved to {out}", file=sys.stderr)
    return options.model_copy(update={"out": out})


def _number(key: str, value: float) -> str:
    # Counts read as counts (134,515,008 parameters, 15,045 tokens), measurements with 4 decimals.
    if isinstance(value, int) or (key in _COUNTS and float(value).is_integer()):
        return f"{int(value):,}"
    return f"{value:.4f}"


_COUNTS = frozenset({"parameters", "num_tokens"})


def print_summary(result) -> None:
    """A short human summary of a pruning result: what was cut, why, and before/after."""
    report = result.report
    model, plan = report["model"], report["plan"]
    print(f"{model['spec']}: {model['num_blocks_before']} -> {model['num_blocks_after']} blocks")
    if plan["drop"]:
        print(f"removed blocks {list(plan['drop'])} ({plan['strategy']}): {plan['reason']}")
    repair = report.get("repair") or {}
    requested = repair.get("method_requested") or repair.get("method")
    if plan["drop"] and requested not in (None, "none"):
        applied = repair.get("method")
        print(
            f"repair: {applied}"
            + (f" ({requested} was asked for; the model is the plain cut)" if applied != requested else "")
        )
    guard = repair.get("guard")
    if guard:
        print(
            f"repair guard ({guard['measure']} on {guard['sequences']} held-back sequences): plain cut "
            f"{guard['loss_plain']:.4f}, repaired {guard['loss_repaired']:.4f}: kept the {guard['kept']} model"
        )
    squeeze = report.get("squeeze")
    if squeeze:
        errors = [b["error"] for b in squeeze["blocks"]]
        print(
            f"FFN width {squeeze['size_before']} -> {squeeze['kept']} in every block ({squeeze['method']}, "
            f"keep {squeeze['keep']}); relative output error mean {sum(errors) / len(errors):.4f}, "
            f"max {max(errors):.4f} on calibration data"
        )
        held = [b["held_back_error"] for b in squeeze["blocks"] if b.get("held_back_error") is not None]
        if held:
            print(
                f"  on {squeeze['held_back_tokens']:,} held-back tokens (the fold fitted without them, ridge chosen "
                f"per block): mean {sum(held) / len(held):.4f}, max {max(held):.4f}"
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
                print(f"  {key:<28} {_number(key, before[key]):>14} -> {_number(key, after[key]):>14}")
    if result.out_dir:
        print(f"saved to {result.out_dir} (prune_report.md explains the choice)")
    gguf = getattr(result, "gguf", None)  # summaries of stand-in results without the field still print
    if gguf is not None:
        print(f"GGUF for llama.cpp: {gguf.path} ({gguf.outtype}, {gguf.size_bytes / 2**20:.1f} MiB)")
    if result.hub_url:
        print(f"pushed to {result.hub_url}")
