"""Everything a run can check before the expensive work, in one step shared by the commands.

A bad flag must never cost a model load or a calibration pass. `preflight` checks, in order of cost:
the target's form; the output folder (absent, or replaceable with --force, and writable); the Hub token
when pushing; the model's config only (resolved offline-aware; block count -> the target's range,
positions -> --seq-len); then it loads every text the run will use (calibration and evaluation), so a
missing --eval file is found in seconds, not after the calibration pass. Only then do the weights load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune.errors import DataError, OutputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    """What the pre-flight step found: where to save, the resolved model, and the texts already loaded."""

    out: Path | None
    source: Any  # prune.loading.ModelSource, or None for a model the caller passed in
    num_blocks: int | None
    calib_texts: list[str]
    eval_texts: list[str] | None


def check_sequence_options(seq_len: int, skip_tokens: int, max_positions: int | None) -> None:
    """--seq-len within the model's positions, --skip-tokens shorter than a sequence.

    Example:
        >>> check_sequence_options(256, 1, 512)
    """
    if skip_tokens >= seq_len:
        raise DataError(
            f"--skip-tokens {skip_tokens} leaves no token of each --seq-len {seq_len} sequence to measure; "
            f"pass --skip-tokens below {seq_len} (1 leaves out the attention-sink token)"
        )
    if max_positions is not None and seq_len > max_positions:
        raise DataError(
            f"--seq-len {seq_len} is longer than the model's {max_positions} positions; pass --seq-len "
            f"{max_positions} or less"
        )


def check_counted_tokens(num_tokens: int, skip_tokens: int) -> None:
    """After collection: at least one token counted (short texts with a large --skip-tokens count none)."""
    if num_tokens > 0:
        return
    if skip_tokens:
        raise DataError(
            f"no calibration token was counted: --skip-tokens {skip_tokens} leaves out every token of these "
            "sequences (the texts are shorter); lower --skip-tokens or pass longer texts"
        )
    raise DataError("no calibration token was counted; pass calibration data with non-empty texts")


def check_out_apart_from_input(out: Path, model_folder: Path) -> None:
    """Refuse an output folder that is, holds or lies inside the model being read (--force would replace it).

    Example:
        >>> check_out_apart_from_input(Path("/tmp/a"), Path("/tmp/b"))
    """
    out, model_folder = out.expanduser().resolve(), model_folder.expanduser().resolve()
    inside = model_folder.is_dir() and model_folder in out.parents  # a .gguf file has nothing inside
    if out == model_folder or inside or out in model_folder.parents:
        raise OutputError(
            f"--out {out} overlaps the model being pruned ({model_folder}): saving would replace or nest in "
            "the input; choose a folder outside it"
        )


def resolve_out(out: str | None, push_to_hub: str | None) -> str | None:
    """The output folder: `out`, else the repo name when pushing (a push always leaves a local copy)."""
    if out is not None and not str(out).strip():
        raise OutputError("--out is empty; pass the folder to save the pruned model in (--out DIR)")
    if out is None and push_to_hub:
        return push_to_hub.rstrip("/").split("/")[-1]
    return out


def preflight(options: Any, *, model_given: bool) -> Checked:
    """Check a pruning run's options before any weights load; load the texts it will use.

    Args:
        options: the run's `PruneOptions`.
        model_given: the caller passed a model in (nothing to resolve or read from a config).

    Raises:
        PruneError: the first problem found, with the flag to fix.
    """
    from prune.data import load_texts
    from prune.loading import resolve_model_source
    from prune.model_config import read_model_facts
    from prune.output import check_output_dir
    from prune.plan import check_target_form, parse_target

    if options.target is not None:  # width squeezing alone has no depth target
        check_target_form(options.target)
    out = resolve_out(options.out, options.push_to_hub)
    source = None if model_given else resolve_model_source(options.model)
    if out is not None and source is not None and source.kind != "hub":
        given = Path(source.location) / source.gguf_file if source.gguf_file else Path(source.location)
        check_out_apart_from_input(Path(out), given)
    if out is not None:
        check_output_dir(out, force=options.force)
    else:
        logger.warning("no output folder (out) given: the pruned model is returned but not saved")
    if options.push_to_hub:
        _check_repo_id(options.push_to_hub)
        _check_hub_token()
    num_blocks = None
    if source is not None:
        facts = read_model_facts(source, trust_remote_code=options.trust_remote_code)
        # A user-named block list may not be what the config counts; the range is then checked after loading.
        num_blocks = facts.num_blocks if options.block_path is None else None
        if num_blocks is not None and options.target is not None:
            parse_target(options.target, num_blocks)
        check_sequence_options(options.seq_len, options.skip_tokens, facts.max_positions)
    else:
        check_sequence_options(options.seq_len, options.skip_tokens, None)
    texts = {"text_column": options.text_column, "seed": options.seed}
    calib = load_texts(options.calib, purpose="calib", **texts)
    evaluation = load_texts(options.eval, purpose="eval", **texts) if options.eval != "none" else None
    if evaluation is not None and set(evaluation) <= set(calib):
        # Named corpora split calib/eval apart; the same file given twice does not.
        logger.warning(
            "every evaluation text is also a calibration text (--eval %s, --calib %s): the before/after "
            "numbers are not on held-out text; pass held-out data with --eval",
            options.eval,
            options.calib,
        )
    return Checked(
        out=Path(out) if out is not None else None,
        source=source,
        num_blocks=num_blocks,
        calib_texts=calib,
        eval_texts=evaluation,
    )


def _check_repo_id(repo_id: str) -> None:
    """A malformed --push-to-hub would fail only at the upload, after all the work."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from prune.errors import HubError

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise HubError(
            f"--push-to-hub {repo_id!r} is not a Hub repo id ({first}); pass 'user/name'"
        ) from None


def _check_hub_token() -> None:
    """Fail before any work when a push is asked for but no token is there to make it."""
    import huggingface_hub

    from prune.errors import HubError

    if not huggingface_hub.get_token():
        raise HubError(
            "--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (nothing was done)"
        )
