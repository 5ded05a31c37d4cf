"""`prune-llm`: the command-line entry point.

`prune-llm MODEL --target ...` prunes; the other forms are subcommands (`squeeze`, `search`, `analyze`, `eval`, `export`, `run`,
`recipes`, `models`, `assets`). Each command lives in its own module with a `register(subparsers)`
function; this module only dispatches. Nothing heavy (torch, transformers) is imported here, so
`--help` is instant: commands import the library inside their `run` function.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand name -> module that registers it
COMMANDS = {
    "analyze": "prune.cli.analyze_cmd",
    "squeeze": "prune.cli.squeeze_cmd",
    "search": "prune.cli.search_cmd",
    "eval": "prune.cli.eval_cmd",
    "export": "prune.cli.export_cmd",
    "run": "prune.cli.run_cmd",
    "recipes": "prune.cli.recipes_cmd",
    "models": "prune.cli.models_cmd",
    "assets": "prune.cli.models_cmd",
}
PRUNE_MODULE = "prune.cli.prune_cmd"

DESCRIPTION = """Layer pruning for pretrained transformers.

  prune-llm MODEL --target 8-layers [--out DIR]   prune MODEL (Hub id, alias, folder or .gguf file)
  prune-llm squeeze MODEL --ffn-keep 0.75         width-prune every FFN (add --ffn-keep to the above for both)
  prune-llm MODEL --budget params:100M --out DIR  depth and width chosen together under a budget
  prune-llm search MODEL --budget params:100M     the budget search's frontier only (saves nothing)
  prune-llm analyze MODEL                         redundancy analysis only: scores, MSRS, heatmaps
  prune-llm eval MODEL_OR_DIR [--reference M]     evaluate a model (side by side with a reference)
  prune-llm export DIR --gguf FILE [--outtype T]  convert a saved model folder to GGUF (llama.cpp)
  prune-llm run RECIPE [flags]                    prune as a recipe says
  prune-llm recipes ls | validate FILE            list or check recipes
  prune-llm models                                list model aliases
  prune-llm assets                                fetch the offline models and text into the cache

Run `prune-llm prune --help` for the pruning flags, `prune-llm COMMAND --help` for the others."""


def build_parser(commands: Sequence[str]) -> argparse.ArgumentParser:
    """The top-level parser with the given subcommands registered."""
    parser = argparse.ArgumentParser(
        prog="prune-llm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"prune-llm {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log what each step does.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered: set[str] = set()
    for name in ["prune", *commands]:
        module = PRUNE_MODULE if name == "prune" else COMMANDS[name]
        if module in registered:
            continue
        registered.add(module)
        importlib.import_module(module).register(subparsers)
    return parser


def _version() -> str:
    from prune import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the command, return the exit status.

    Bad input (a `PruneError`) is printed as one line and gives status 2; anything else is a bug and
    keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # `prune-llm MODEL ...` is the pruning command: insert its name unless a subcommand or a
    # top-level flag comes first.
    first = next((a for a in argv if a not in ("-v", "--verbose")), None)
    if first is not None and first not in COMMANDS and first != "prune" and not first.startswith("-"):
        argv.insert(argv.index(first), "prune")
    parser = build_parser(list(COMMANDS))
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    args.argv = argv  # recorded in reports so a run can be reproduced
    _configure_logging(args.verbose)
    from prune.errors import PruneError

    try:
        return int(args.func(args) or 0)
    except PruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A full disk, a read-only mount, a permission: the user's to fix, so one line, no traceback.
        where = f": {err.filename}" if err.filename else ""
        print(
            f"error: {err.strerror or err}{where}; check the path, its permissions and free space",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _configure_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # transformers and datasets are chatty at INFO; keep their warnings.
        for name in ("transformers", "datasets", "accelerate"):
            logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
