"""`prune-llm recipes ls | validate FILE...`: list the shipped recipes or check recipe files."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `recipes` subcommand with its `ls` and `validate` actions."""
    parser = subparsers.add_parser(
        "recipes",
        help="List the shipped recipes or validate recipe files.",
        description="Recipes are YAML files of pruning options (the keys are the flags of `prune-llm prune`, "
        "without the dashes), reusable with `include:`. Run one with `prune-llm run RECIPE`.",
    )
    actions = parser.add_subparsers(dest="recipes_action", metavar="ACTION", required=True)
    ls = actions.add_parser(
        "ls", help="List the shipped recipes: name, model, target, strategy, description."
    )
    ls.add_argument("--json", action="store_true", help="Print the list as JSON.")
    validate = actions.add_parser(
        "validate", help="Check recipe files (or shipped names); prints OK or the error for each."
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="Recipe files or shipped recipe names.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `recipes ls` or `recipes validate`; returns 1 when any recipe is invalid."""
    if args.recipes_action == "ls":
        return _list(as_json=args.json)
    return _validate(args.files)


def _list(*, as_json: bool) -> int:
    from prune.errors import RecipeError
    from prune.recipes import list_recipes, read_recipe

    rows = []
    status = 0
    for info in list_recipes():
        try:
            options = read_recipe(info.path).options
            rows.append(
                {
                    "name": info.name,
                    "model": options.model,
                    "target": options.target or options.budget or f"ffn {options.ffn_keep}",
                    "strategy": options.strategy,
                    "description": info.description or "",
                    "path": str(info.path),
                }
            )
        except RecipeError as err:
            # a broken shipped recipe is a bug, but the others are still worth listing
            rows.append(
                {
                    "name": info.name,
                    "model": "?",
                    "target": "?",
                    "strategy": "?",
                    "description": f"INVALID: {err}",
                }
            )
            status = 1
    if as_json:
        print(json.dumps(rows, indent=2))
        return status
    columns = ["name", "model", "target", "strategy", "description"]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns[:-1]}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns[:-1]) + "  DESCRIPTION")
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns[:-1]) + "  " + row["description"])
    return status


def _validate(files: list[str]) -> int:
    from prune.errors import RecipeError
    from prune.recipes import read_recipe

    status = 0
    for name in files:
        try:
            recipe = read_recipe(name, check_names=True)
        except RecipeError as err:
            message = str(err).removeprefix(f"{name}: ")  # recipe errors already start with the path
            print(f"{name}: ERROR {message}")
            status = 1
        else:
            opts = recipe.options
            print(f"{name}: OK ({opts.model}, target {opts.target}, strategy {opts.strategy})")
    return status
