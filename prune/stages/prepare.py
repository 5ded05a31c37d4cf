"""The stages before any statistic: `check` (everything cheap), `load` (model, anatomy, tokenizer) and
`calibrate` (the calibration batches)."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from prune.stages.context import RunContext
from prune.vocab import ModelKind

logger = logging.getLogger(__name__)


def check(ctx: RunContext) -> RunContext:
    """Check everything that can fail before the expensive work: repair method, GGUF export, target,
    output folder, Hub repo and token, the model's config and all the data (loaded here, into
    ``ctx.checked``), so a bad flag never costs a model load or a calibration pass.

    Example:
        >>> ctx = check(RunContext(PruneOptions(model="minilm-l6", target="4-layers")))  # doctest: +SKIP
        >>> len(ctx.checked.calib_texts)  # doctest: +SKIP
        240
    """
    from prune.preflight import preflight, resolve_out
    from prune.repair import get_repair

    options = ctx.options
    get_repair(options.repair)  # a misspelt repair method
    check_gguf(options, resolve_out(options.out, options.push_to_hub))
    ctx.checked = preflight(options, model_given=ctx.model_given)
    return ctx


def load(ctx: RunContext, *, device: str | None = None) -> RunContext:
    """Load the model (or wrap the one given), find its blocks, check the target and the width option
    against it, and settle the tokenizer. `device` overrides the options' (a data-parallel process's own).

    Example:
        >>> ctx = load(check(RunContext(PruneOptions(model="minilm-l6", target="4-layers"))))  # doctest: +SKIP
        >>> ctx.anatomy.num_blocks  # doctest: +SKIP
        6
    """
    from prune.anatomy import get_anatomy
    from prune.loading import load_model
    from prune.plan import parse_target

    options = ctx.options
    if ctx.model_given:
        ctx.loaded = wrap_model(ctx.model, ctx.tokenizer, options.model)
    else:
        ctx.loaded = load_model(
            ctx.checked.source,
            device=device or options.device,
            dtype=options.dtype,
            trust_remote_code=options.trust_remote_code,
            device_map=options.device_map,
            progress=ctx.progress,
        )
    ctx.anatomy = get_anatomy(ctx.original, options.block_path)
    # an analysis has no target, width or GGUF options
    if getattr(options, "target", None) is not None:
        parse_target(options.target, ctx.anatomy.num_blocks)
    if getattr(options, "ffn_keep", None) is not None:
        ctx.anatomy.require_mlp("--ffn-keep (width squeezing)")
    check_gguf(options, ctx.checked.out, architecture=type(ctx.original).__name__)
    if ctx.model_given:
        from prune.finite import check_finite_weights

        check_finite_weights(ctx.original, block_path=ctx.anatomy.block_path, name=options.model)
    ctx.tokenizer = _checked_tokenizer(ctx.loaded, ctx.model_given)
    return ctx


def calibrate(ctx: RunContext) -> RunContext:
    """Tokenize the calibration texts into batches (packed for causal LMs, one text per row otherwise).

    A run whose repair is guarded (`RepairOptions.repair_guard`) also gets ``ctx.guard_batches``: a
    quarter as many further sequences of the same calibration text (`GUARD_FRACTION`), which nothing is
    fitted on; the calibration batches themselves are the same with or without them.

    Example:
        >>> len(calibrate(ctx).calib_batches)  # doctest: +SKIP
        16
    """
    from prune.data import make_batch_split

    options = ctx.options
    ctx.calib_batches, ctx.guard_batches = make_batch_split(
        ctx.tokenizer,
        ctx.checked.calib_texts,
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        num_samples=options.calib_samples,
        packed=ctx.loaded.kind == ModelKind.CAUSAL_LM,
        held_back=guard_samples(options),
    )
    return ctx


# The repair guard's held-back sequences, as a share of the calibration sequences (the budget search
# holds back the same share, `prune.budget.build.HELD_BACK_FRACTION`).
GUARD_FRACTION = 0.25


def guard_samples(options: Any) -> int:
    """How many held-back sequences the run needs (0: none): for the repair guard, and for strategy
    ``auto`` with several ``auto_candidates`` (it compares their repaired cuts on them).

    Example:
        >>> from prune.options import PruneOptions
        >>> guard_samples(PruneOptions(model="m", target="drop-1", calib_samples=128))
        32
        >>> guard_samples(PruneOptions(model="m", target="drop-1", repair="none"))
        0
    """
    guarded = (
        (
            getattr(options, "repair_guard", False)
            or (
                getattr(options, "strategy", None) == "auto"
                and "," in getattr(options, "auto_candidates", "")
            )
        )
        and getattr(options, "target", None) is not None
        and getattr(options, "repair", "none") != "none"
        and getattr(options, "budget", None) is None  # the budget search holds back its own quarter
    )
    return max(1, round(GUARD_FRACTION * options.calib_samples)) if guarded else 0


def wrap_model(model: nn.Module, tokenizer: Any, name: str):
    """A `LoadedModel` for a model the user already holds."""
    from prune.loading import LoadedModel, ModelSource, model_kind

    hub_id = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    source = ModelSource(spec=name, kind="local", location=name, gguf_file=None, alias=None, hub_id=hub_id)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, kind=model_kind(model))


def check_gguf(options: Any, out: Any, architecture: str | None = None) -> None:
    """With --gguf, fail before the expensive work: no --out, converter missing, family unsupported, file there."""
    if not getattr(options, "gguf", None):
        return
    from prune.errors import PruneError
    from prune.gguf_export import check_gguf_export, default_gguf_path

    if not out:
        raise PruneError(
            "--gguf writes the GGUF beside the saved folder: pass --out DIR too (nothing was done)"
        )
    check_gguf_export(architecture, options.gguf, default_gguf_path(out, options.gguf), force=options.force)


def _checked_tokenizer(loaded, given: bool):
    """The run's tokenizer: one that can represent real text (an empty one would turn every word into
    [UNK], and be saved with the model), or an error that says why there is none."""
    from prune.checkpoint import tokenizer_problem
    from prune.errors import DataError

    if given:
        problem = tokenizer_problem(loaded.tokenizer)
        if problem is not None:
            raise DataError(
                f"the tokenizer passed in cannot be used: {problem}; pass tokenizer= with the model's real "
                "tokenizer, or build batches yourself and call prune.collect_stats / prune.plan_pruning / "
                "prune.remove_blocks"
            )
        return loaded.tokenizer
    return loaded.require_tokenizer()
