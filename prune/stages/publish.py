"""The stages that write the result: `save` (a stock checkpoint with its report, recipe, model card
and plots), `export_gguf` and `push`.

A saved folder is publishable as it is (``hf upload`` needs nothing else) and reproducible:
``prune_recipe.yaml`` holds every resolved option, so ``prune-llm run OUT/prune_recipe.yaml --out OTHER``
makes the same plan.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from prune.stages.context import RunContext

logger = logging.getLogger(__name__)

RECIPE_FILE = "prune_recipe.yaml"
CARD_FILE = "README.md"
# Where a run writes is not part of what it does: a reproduced run writes elsewhere.
_NOT_IN_RECIPE = ("out", "force", "push_to_hub", "private", "revision")


def recipe_values(options: Any) -> dict[str, Any]:
    """The resolved options as recipe keys (defaults included), without where the run wrote.

    Example:
        >>> from prune.options import PruneOptions
        >>> values = recipe_values(PruneOptions(model="minilm-l6", target="4-layers", out="x"))
        >>> values["target"], values["strategy"], "out" in values
        ('4-layers', 'auto', False)
    """
    from prune.jsonable import to_jsonable

    values = {k: v for k, v in options.model_dump().items() if k not in _NOT_IN_RECIPE}
    if "repair" not in options.model_fields_set:
        # the default repair falls back to the plain cut where it cannot fit; one named in a recipe
        # fails there instead, so the recipe names it only when the run did
        values.pop("repair", None)
    return to_jsonable(values)


def recipe_text(options: Any, command: str | None = None) -> str:
    """``prune_recipe.yaml``: the resolved options, with how they were given in a comment.

    Example:
        >>> from prune.options import PruneOptions
        >>> print(recipe_text(PruneOptions(model="m", target="drop-1")).splitlines()[2])
        model: m
    """
    import yaml

    header = [
        "# The resolved options of a prune-llm run; reproduce it with: prune-llm run prune_recipe.yaml --out DIR",
        f"# started as: {command}" if command else "# started from Python",
    ]
    body = yaml.safe_dump(recipe_values(options), sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body


def command_for(options: Any) -> str:
    """A command line that gives `options`: the options that differ from their defaults as flags.

    Runs started from Python record this, so their report and card say how to make them again.

    Example:
        >>> from prune.options import PruneOptions
        >>> command_for(PruneOptions(model="minilm-l6", target="4-layers", seq_len=128))
        'prune-llm minilm-l6 --target 4-layers --seq-len 128'
    """
    words = [options.model]
    for name, field in type(options).model_fields.items():
        value = getattr(options, name)
        if name == "model" or value == field.get_default():
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is False:
            words.append("--no-" + name.replace("_", "-"))  # a default-on switch turned off
        elif value is not None:
            words += [flag, str(value)]
    return "prune-llm " + shlex.join(words)


def save(ctx: RunContext, out: str | Path | None = None) -> RunContext:
    """Write the pruned model into ``out`` (default: the run's), atomically: weights, tokenizer,
    ``prune_report.json``/``.md``, ``prune_recipe.yaml``, the model card ``README.md`` and the plots.

    The folder appears complete or not at all; an existing folder is replaced only with ``force``.
    """
    from prune.card import build_model_card
    from prune.output import atomic_output_dir, save_model
    from prune.report import folder_bytes, write_report

    out = out if out is not None else ctx.checked.out
    options = ctx.options
    ctx.report["recipe"] = RECIPE_FILE
    with atomic_output_dir(out, force=options.force) as tmp:
        save_model(ctx.pruned, ctx.tokenizer, tmp)
        ctx.report["model"]["size_on_disk_after"] = folder_bytes(tmp)
        write_report(ctx.report, tmp)
        (Path(tmp) / RECIPE_FILE).write_text(recipe_text(options, ctx.command), encoding="utf-8")
        card = build_model_card(ctx.report, repo_id=options.push_to_hub, **_card_source(ctx))
        (Path(tmp) / CARD_FILE).write_text(str(card), encoding="utf-8")
        write_plots(ctx, Path(tmp))
    ctx.out_dir = Path(out)
    return ctx


def export_gguf(ctx: RunContext) -> RunContext:
    """Convert the saved folder to GGUF beside it when ``gguf`` asks for it (``ctx.gguf``)."""
    if not ctx.options.gguf or ctx.out_dir is None:
        return ctx
    from prune.gguf_export import export_gguf as convert

    ctx.gguf = convert(ctx.out_dir, outtype=ctx.options.gguf, force=ctx.options.force)
    ctx.report["gguf"] = ctx.gguf.to_dict()
    return ctx


def push(ctx: RunContext) -> RunContext:
    """Upload the saved folder to ``push_to_hub`` with its model card (``ctx.hub_url``); the card the
    folder holds is rewritten for the repo, so there is one ``README.md``."""
    options = ctx.options
    if not options.push_to_hub:
        return ctx
    from prune.card import build_model_card
    from prune.hub import push_to_hub

    if ctx.out_dir is None:
        raise ValueError("push_to_hub needs the model saved first: set out")
    card = build_model_card(ctx.report, repo_id=options.push_to_hub, **_card_source(ctx))
    ctx.hub_url = push_to_hub(
        ctx.out_dir, options.push_to_hub, private=options.private, revision=options.revision, card=card
    )
    return ctx


def _card_source(ctx: RunContext) -> dict[str, Any]:
    from prune.card import read_license

    source = ctx.loaded.source
    license_id = read_license(source.location) or (read_license(source.hub_id) if source.hub_id else None)
    return {"base_model": source.hub_id, "license": license_id, "command": ctx.report.get("command") or ""}


def write_plots(ctx: RunContext, folder: Path) -> None:
    """Per-block scores with the removed blocks marked, the FFN neurons needed and the before/after
    metrics (skipped, with a warning, without matplotlib)."""
    from prune.errors import PruneError
    from prune.plots import plot_before_after, plot_block_scores

    report = ctx.report
    try:
        name = report["model"]["spec"]
        if ctx.scores:
            plot_block_scores(
                ctx.scores,
                folder / "block_scores.png",
                removed=list(ctx.plan.drop),
                title=f"{name}: per-block scores (removed blocks marked)",
            )
        if report.get("budget"):
            from prune.budget.report import plot_budget_frontier

            plot_budget_frontier(report["budget"], folder / "budget_frontier.png")
        squeeze = report.get("squeeze")
        if squeeze and squeeze["blocks"] and squeeze["blocks"][0]["neurons_for_energy"]:
            from prune.plots import plot_neurons_needed

            plot_neurons_needed(
                [b["neurons_for_energy"] for b in squeeze["blocks"]],
                squeeze["size_before"],
                folder / "ffn_neurons_needed.png",
                kept=squeeze["kept"],
            )
        if ctx.comparison is not None:
            plot_before_after(
                ctx.comparison.before,
                ctx.comparison.after,
                folder / "before_after.png",
                title=f"{name}: before and after pruning",
                labels=("original", "pruned"),
            )
    except PruneError as err:  # matplotlib missing: the model and report still count
        logger.warning("plots skipped: %s", err)
