"""`prune-llm eval MODEL_OR_DIR [--reference MODEL]`: evaluate a model, or compare it with its original.

Causal LMs get perplexity on held-out text (and KL divergence and greedy agreement with --reference);
encoders get a classification probe (and embedding fidelity with --reference); every model gets size,
latency, throughput and peak memory. Both models see the same data with the same protocol.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from prune.cli.flags import add_option_flags, options_from_args
from prune.command_options import EvalCommandOptions
from prune.vocab import ModelKind


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a model; with --reference, side by side with the original.",
        description="Evaluate MODEL_OR_DIR on held-out data: perplexity (causal LMs), a classification "
        "probe (encoders), size, latency, throughput and peak memory. With --reference MODEL (the "
        "original), both are measured with the same data and protocol and shown side by side, with "
        "KL(original || model) and greedy agreement (causal LMs) or embedding fidelity (encoders).",
    )
    parser.add_argument(
        "model", metavar="MODEL_OR_DIR", help="Model to evaluate: Hub id, alias, folder or .gguf."
    )
    parser.add_argument("--reference", metavar="MODEL", help="The original model to compare with.")
    # The flags are generated from the option groups, as the prune command's are (prune.options).
    add_option_flags(
        parser,
        EvalCommandOptions,
        overrides_only=False,
        with_defaults=True,
        skip=_NOT_EVAL_FLAGS,
        title="evaluation options",
    )
    parser.add_argument("--json", action="store_true", help="Print the results as JSON instead of a table.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.set_defaults(func=run)


# Fields of the composed groups the eval command does not take (the model is its positional argument).
_NOT_EVAL_FLAGS = ("model", "block_path", "device_map", "calib", "calib_samples")


def _settings(options: Any, quiet: bool) -> Any:
    from prune.evaluation import EvalSettings

    tasks = tuple(t.strip() for t in (options.lm_eval or "").split(",") if t.strip())
    return EvalSettings(
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        num_samples=options.samples,
        stride=options.stride,
        generation=options.generation,
        num_prompts=options.prompts,
        new_tokens=options.new_tokens,
        speed=options.speed,
        repeats=options.repeats,
        probe=options.probe,
        probe_data=options.probe_data,
        probe_train=options.probe_train,
        probe_test=options.probe_test,
        lm_eval_tasks=tasks,
        lm_eval_limit=options.lm_eval_limit,
        seed=options.seed,
        progress=not quiet,
    )


def _phases(s: Any, kind: str, relative: bool) -> list[str]:
    """What an evaluation will run, in words (printed first: some phases take minutes on a CPU)."""
    phases = []
    if kind == ModelKind.CAUSAL_LM:
        phases.append("perplexity" + (" and KL" if relative else ""))
        if relative and s.generation:
            phases.append(f"greedy agreement ({s.num_prompts} prompts x {s.new_tokens} tokens)")
    elif kind == ModelKind.ENCODER:
        if relative:
            phases.append("embedding fidelity")
        phases.append(
            f"classification probe ({s.probe_train} train / {s.probe_test} test sentences)"
            if s.probe
            else "no classification probe (--probe adds it)"
        )
    phases.append("size" + (", latency and peak memory" if s.speed else ""))
    return phases


def run(args: argparse.Namespace) -> int:
    """Load the model (and the reference), evaluate, print a table or JSON."""
    from prune.errors import DataError
    from prune.loading import load_model

    options = options_from_args(args, EvalCommandOptions, extra={"model": args.model})
    if options.stride is not None and options.stride > options.seq_len:
        raise DataError(
            f"--stride {options.stride} is larger than --seq-len {options.seq_len}; lower --stride"
        )
    settings = _settings(options, args.quiet)
    if settings.lm_eval_tasks:
        # Fail before loading any model when the extra is missing.
        from prune.evaluation.lm_eval_bridge import require_lm_eval

        require_lm_eval()
    # Resolve both models, read their configs and load the text before any weights load: a typo or a
    # missing file costs seconds, not a model load.
    from prune.loading import resolve_model_source
    from prune.model_config import read_model_facts
    from prune.preflight import check_sequence_options

    sources = [resolve_model_source(args.model)]
    if args.reference:
        sources.append(resolve_model_source(args.reference))
    for source in sources:
        facts = read_model_facts(source, trust_remote_code=options.trust_remote_code)
        check_sequence_options(options.seq_len, 0, facts.max_positions)
    from prune.data import load_texts

    texts = load_texts(options.data, purpose="eval", text_column=options.text_column, seed=options.seed)
    load = {
        "device": options.device,
        "dtype": options.dtype,
        "trust_remote_code": options.trust_remote_code,
        "progress": not args.quiet,
    }
    loaded = load_model(sources[0], **load)
    reference = load_model(sources[1], **load) if args.reference else None
    if reference is not None and reference.kind != loaded.kind:
        raise DataError(
            f"{args.model} is a {loaded.kind} but the reference {args.reference} is a {reference.kind}; "
            "compare a pruned model with its own original"
        )
    tokenizer = loaded.tokenizer or (reference.tokenizer if reference else None)
    if loaded.kind == ModelKind.OTHER:
        texts = None
    elif tokenizer is None:
        loaded.require_tokenizer()  # the error says why there is none
    settings = replace(settings, probe=settings.probe and loaded.kind == ModelKind.ENCODER)
    if not args.quiet:
        print(
            f"measuring: {', '.join(_phases(settings, loaded.kind, reference is not None))}", file=sys.stderr
        )

    from prune.evaluation import compare_models, evaluate_report

    if reference is not None:
        result = compare_models(
            reference.model,
            loaded.model,
            tokenizer,
            kind=loaded.kind,
            eval_texts=texts,
            seq_len=settings.seq_len,
            batch_size=settings.batch_size,
            settings=settings,
        )
    else:
        result = evaluate_report(loaded.model, tokenizer, kind=loaded.kind, texts=texts, settings=settings)
    result.protocol["data"] = options.data
    header = {"model": args.model, "reference": args.reference, "kind": loaded.kind}
    if args.json:
        from prune.jsonable import dumps_json

        print(dumps_json({**header, **result.to_dict()}))
        return 0
    title = f"{args.model} vs {args.reference}" if reference is not None else args.model
    print(f"{title} ({loaded.kind}, data: {options.data})\n")
    print(result.to_markdown())
    print("\nProtocol:")
    for key, value in result.protocol.items():
        print(f"- {key}: {value}")
    return 0
