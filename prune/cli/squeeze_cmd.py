"""`prune-llm squeeze MODEL --ffn-keep 0.75`: width-prune every FFN (no depth cut) and save a stock checkpoint."""

from __future__ import annotations

import argparse

from prune.cli.flags import add_option_flags

# Depth-only options: `squeeze` cuts no block (use `prune-llm MODEL --target ... --ffn-keep ...` for both).
DEPTH_FIELDS = ("target", "strategy", "metric", "allow_last")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `squeeze` subcommand."""
    parser = subparsers.add_parser(
        "squeeze",
        help="Width-prune every FFN: keep the neurons that carry the layer's output, fold the rest away.",
        description="Squeeze correlated neurons (Ozen & Orailoglu 2020): in every block keep --ffn-keep of the "
        "FFN's intermediate neurons, chosen on calibration data, express the removed ones as a least-squares "
        "combination of the kept ones and fold it into the down projection (no fine-tuning). Evaluates "
        "before/after and saves a stock checkpoint with intermediate_size updated.",
    )
    add_option_flags(parser, overrides_only=False, skip=DEPTH_FIELDS, require=("ffn_keep",))
    parser.add_argument("--json", action="store_true", help="Print the report as JSON instead of a summary.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the pipeline with no depth cut and the FFN squeeze; prints a summary (or the JSON report)."""
    from prune.cli import prune_cmd

    # the same run as the prune command: its flags simply lack the depth options
    return prune_cmd.run(args)
