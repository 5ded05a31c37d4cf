"""`prune-llm search MODEL --budget params:100M`: the budget frontier and the choice; nothing is saved."""

from __future__ import annotations

import argparse
import json

from prune.cli.flags import add_option_flags, options_from_args

# What a search does not do: plan by hand, evaluate on held-out text, save or push.
SKIPPED = (
    "target",
    "ffn_keep",
    "eval",
    "eval_samples",
    "eval_probe",
    "out",
    "force",
    "gguf",
    "push_to_hub",
    "private",
    "revision",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `search` subcommand."""
    parser = subparsers.add_parser(
        "search",
        help="Search depth x FFN width under a budget and print the frontier (saves nothing).",
        description="Search which blocks to cut (with --strategy and --repair) and how many FFN neurons to keep "
        "so that the model meets --budget with the lowest loss on a held-back quarter of the calibration data; "
        "print the explored configurations and the choice. `prune-llm MODEL --budget ... --out DIR` builds and "
        "saves the same choice.",
    )
    add_option_flags(parser, overrides_only=False, skip=SKIPPED, require=("budget",))
    parser.add_argument("--json", action="store_true", help="Print the search as JSON instead of a table.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the search and print it."""
    from prune.budget.api import search_budget
    from prune.budget.report import budget_section

    options = options_from_args(args)
    result = search_budget(options, progress=not args.quiet)
    summary = result.to_dict(result.info.get("d_ff", 0))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"chosen: {result.reason}")
    print("\n".join(budget_section(summary, heading="##")))
    return 0
