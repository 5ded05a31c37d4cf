"""`prune-llm run RECIPE [flags]`: prune as a recipe says, with flags overriding its keys."""

from __future__ import annotations

import argparse
import shlex

from prune.cli.flags import add_option_flags, field_flag, overrides_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` subcommand; its override flags are generated from `PruneOptions`."""
    parser = subparsers.add_parser(
        "run",
        help="Prune as a recipe says (`prune-llm recipes ls` lists the shipped ones).",
        description="Load RECIPE (a YAML file or a shipped recipe name), apply the flags given here on top of "
        "its keys, and run the pruning pipeline. Every recipe key has the flag of the same name.",
    )
    parser.add_argument("recipe", metavar="RECIPE", help="Recipe file (.yaml) or shipped recipe name.")
    parser.add_argument(
        "--show", action="store_true", help="Print the resolved options (recipe + flags) as JSON and exit."
    )
    parser.add_argument("--json", action="store_true", help="Print the report as JSON instead of a summary.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_option_flags(parser, overrides_only=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the recipe with the overrides and run it (or print it with --show)."""
    from prune.jsonable import dumps_json
    from prune.recipes import load_recipe

    overrides = overrides_from_args(args)
    options = load_recipe(args.recipe, overrides, check_names=True)
    if args.show:
        print(dumps_json(options.model_dump()))
        return 0

    from prune.cli.prune_cmd import print_summary, with_default_out
    from prune.pipeline import run_pruning

    options = with_default_out(options)

    command = "prune-llm " + shlex.join(getattr(args, "argv", None) or _argv(args.recipe, overrides))
    result = run_pruning(options, command=command, progress=not args.quiet)
    if args.json:
        print(dumps_json(result.report))
    else:
        print_summary(result)
    return 0


def _argv(recipe: str, overrides: dict) -> list[str]:
    """The arguments that reproduce this run when the typed command line is not known."""
    argv = ["run", recipe]
    for name, value in overrides.items():
        flag = field_flag(name)
        argv += [flag] if value is True else [flag, str(value)]
    return argv
