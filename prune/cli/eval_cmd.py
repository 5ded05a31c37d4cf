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

from prune.cli.flags import positive_int
from prune.options import PruneOptions
from prune.vocab import ModelKind


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    fields = PruneOptions.model_fields
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
    parser.add_argument(
        "--data", default="default", metavar="DATA", help=fields["eval"].description.split(", or 'none'")[0]
    )
    parser.add_argument("--text-column", metavar="NAME", help=fields["text_column"].description)
    parser.add_argument(
        "--seq-len",
        type=positive_int,
        default=256,
        metavar="N",
        help="Tokens per window / text (default: 256).",
    )
    parser.add_argument(
        "--stride",
        type=positive_int,
        metavar="N",
        help="Perplexity window stride; below --seq-len only the new tokens of each window count "
        "(default: --seq-len, non-overlapping windows).",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="N", help="Rows per forward pass (default: 8)."
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=64,
        metavar="N",
        help="Windows or texts evaluated (default: 64).",
    )
    parser.add_argument("--json", action="store_true", help="Print the results as JSON instead of a table.")
    parser.add_argument("--no-speed", action="store_true", help="Skip latency, throughput and memory.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        metavar="N",
        help="Timed passes, median reported (default: 5).",
    )
    parser.add_argument(
        "--no-generation", action="store_true", help="Skip greedy-generation agreement (causal LMs)."
    )
    parser.add_argument(
        "--new-tokens",
        type=positive_int,
        default=32,
        metavar="N",
        help="Greedy tokens per prompt (default: 32).",
    )
    parser.add_argument(
        "--prompts",
        type=positive_int,
        default=8,
        metavar="N",
        help="Prompts for greedy agreement (default: 8).",
    )
    parser.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Classification accuracy of encoders: their head, or a logistic probe on frozen embeddings "
        "(default: off; minutes on a CPU).",
    )
    parser.add_argument(
        "--probe-data",
        default="default",
        metavar="DATA",
        help="Labelled data for the probe: 'default' (offline Pang & Lee sentences, else GLUE SST-2 from the "
        "Hub), a .csv/.json/.jsonl file with text and label columns, or a Hub 'name[:config][:split]'.",
    )
    parser.add_argument(
        "--probe-train",
        type=positive_int,
        default=2000,
        metavar="N",
        help="Probe training sentences (default: 2000).",
    )
    parser.add_argument(
        "--probe-test",
        type=positive_int,
        default=1000,
        metavar="N",
        help="Probe test sentences (default: 1000).",
    )
    parser.add_argument(
        "--lm-eval",
        metavar="TASKS",
        help="Also run lm-evaluation-harness tasks, comma-separated (needs `pip install prune-llm[lm-eval]`).",
    )
    parser.add_argument("--lm-eval-limit", type=positive_int, metavar="N", help="Examples per lm-eval task.")
    parser.add_argument("--device", default="auto", help=fields["device"].description + " (default: auto)")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="Model dtype."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the probe split (default: 0).")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help=fields["trust_remote_code"].description
    )
    parser.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Any:
    from prune.evaluation import EvalSettings

    tasks = tuple(t.strip() for t in (args.lm_eval or "").split(",") if t.strip())
    return EvalSettings(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.samples,
        stride=args.stride,
        generation=not args.no_generation,
        num_prompts=args.prompts,
        new_tokens=args.new_tokens,
        speed=not args.no_speed,
        repeats=args.repeats,
        probe=args.probe,
        probe_data=args.probe_data,
        probe_train=args.probe_train,
        probe_test=args.probe_test,
        lm_eval_tasks=tasks,
        lm_eval_limit=args.lm_eval_limit,
        seed=args.seed,
        progress=not args.quiet,
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

    if args.stride is not None and args.stride > args.seq_len:
        raise DataError(f"--stride {args.stride} is larger than --seq-len {args.seq_len}; lower --stride")
    settings = _settings(args)
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
        facts = read_model_facts(source, trust_remote_code=args.trust_remote_code)
        check_sequence_options(args.seq_len, 0, facts.max_positions)
    from prune.data import load_texts

    texts = load_texts(args.data, purpose="eval", text_column=args.text_column, seed=args.seed)
    load = {
        "device": args.device,
        "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
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
    result.protocol["data"] = args.data
    header = {"model": args.model, "reference": args.reference, "kind": loaded.kind}
    if args.json:
        from prune.jsonable import dumps_json

        print(dumps_json({**header, **result.to_dict()}))
        return 0
    title = f"{args.model} vs {args.reference}" if reference is not None else args.model
    print(f"{title} ({loaded.kind}, data: {args.data})\n")
    print(result.to_markdown())
    print("\nProtocol:")
    for key, value in result.protocol.items():
        print(f"- {key}: {value}")
    return 0
