"""`prune-llm analyze MODEL`: redundancy analysis only (scores, MSRS, heatmap); the model is not changed."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from prune.cli.flags import positive_int, value_parser
from prune.options import PruneOptions
from prune.vocab import ModelKind

PLOTS = ("cka_heatmap.png", "block_scores.png", "ffn_neurons_needed.png")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `analyze` subcommand."""
    parser = subparsers.add_parser(
        "analyze",
        help="Redundancy analysis only: per-block scores, MSRS, CKA heatmap (no pruning).",
        description="Run MODEL over calibration data and report how redundant its blocks are: block "
        "influence, CKA(input, output) and angular distance per block, the layer-by-layer CKA matrix and "
        "its MSRS (RedTest), and the best span of n blocks to cut. Writes analysis.json, analysis.txt, "
        "cka_heatmap.png and block_scores.png into --out. Data parallel: `accelerate launch "
        "--num_processes N -m prune.cli analyze MODEL ...` gives each process its share of the batches "
        "and reduces the sums.",
    )
    fields = PruneOptions.model_fields

    def option(flag: str, name: str, help: str | None = None, **kwargs) -> None:
        # Help text and defaults come from PruneOptions so that these flags and the prune flags agree.
        kwargs.setdefault("default", fields[name].default)
        text = help or fields[name].description
        if kwargs["default"] is not None and kwargs["default"] is not False:
            text += f" (default: {kwargs['default']})"
        parser.add_argument(flag, dest=name, help=text, **kwargs)

    parser.add_argument(
        "model", help="Model to analyse: " + fields["model"].description.split(":", 1)[1].strip()
    )
    option("--calib", "calib", metavar="DATA")
    option("--calib-samples", "calib_samples", type=positive_int, metavar="N")
    option("--seq-len", "seq_len", type=positive_int, metavar="N")
    option("--batch-size", "batch_size", type=positive_int, metavar="N")
    option("--max-tokens", "max_tokens", type=positive_int, metavar="N")
    option(
        "--skip-tokens", "skip_tokens", type=value_parser("skip_tokens", fields["skip_tokens"]), metavar="N"
    )
    for flag, name in (("--cka-minibatch", "cka_minibatch"), ("--cka-window", "cka_window")):
        option(flag, name, type=value_parser(name, fields[name]), metavar="N")
    option("--text-column", "text_column", metavar="NAME")
    option("--block-path", "block_path", metavar="PATH")
    option("--device", "device")
    option("--device-map", "device_map", choices=["auto", "balanced", "sequential"])
    option("--dtype", "dtype", choices=["auto", "float32", "bfloat16", "float16"])
    option("--seed", "seed", type=int, help="Seed for data shuffling.")
    option(
        "--allow-last",
        "allow_last",
        action="store_true",
        help="Let the best spans and rankings include the last block (usually the most important).",
    )
    option("--trust-remote-code", "trust_remote_code", action="store_true")
    parser.add_argument(
        "--token-mode",
        choices=["tokens", "mean", "last"],
        default="tokens",
        help="Compare hidden states of every token (default), their mean over each sequence, or the last token.",
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        help="Save the running sums to FILE as they grow; a rerun with the same FILE and data resumes "
        "where an interrupted run stopped.",
    )
    parser.add_argument("--beta", type=float, default=100.0, help="MSRS sharpness beta (RedTest: 100).")
    parser.add_argument("--eps", type=float, default=0.8, help="MSRS CKA threshold eps (RedTest: 0.8).")
    parser.add_argument(
        "--out", metavar="DIR", help="Folder for the results (default: analysis/<model-name>)."
    )
    parser.add_argument("--force", action="store_true", help="Overwrite --out if it exists.")
    parser.add_argument("--json", action="store_true", help="Print the analysis as JSON instead of a table.")
    parser.add_argument(
        "--no-plots", action="store_true", help="Do not draw the PNG figures (no matplotlib)."
    )
    parser.add_argument(
        "--no-neurons",
        action="store_true",
        help="Skip the FFN neurons-needed table (one more calibration pass, and a d_ff x d_ff Gram per block).",
    )
    option("--ffn-block-group", "ffn_block_group", type=positive_int, metavar="N")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.set_defaults(func=run)


def default_out_dir(model: str) -> Path:
    """analysis/<model-name>: the last part of a Hub id or path, without a .gguf suffix."""
    name = Path(model.rstrip("/\\")).name
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    return Path("analysis") / name


def run(args: argparse.Namespace) -> int:
    """Analyse a model from parsed flags; print the table (or JSON) and write the files."""
    from prune.analysis import AnalysisError, analysis_summary_lines, analyze
    from prune.jsonable import dumps_json
    from prune.output import atomic_output_dir, check_output_dir

    if args.out is not None and not args.out.strip():
        from prune.errors import OutputError

        raise OutputError("--out is empty; pass the folder for the results (--out DIR) or leave it out")
    out = Path(args.out) if args.out else default_out_dir(args.model)
    # Everything that can be checked cheaply fails before the model is loaded: the output folder, the
    # flags, the model's config (block count, positions), and the calibration text.
    check_output_dir(out, force=args.force)
    if not (args.beta > 0) or not (-1.0 <= args.eps <= 1.0):
        raise AnalysisError(f"need --beta > 0 and -1 <= --eps <= 1, got {args.beta} and {args.eps}")

    from prune.anatomy import get_anatomy
    from prune.data import load_texts, make_batches
    from prune.loading import load_model, resolve_model_source
    from prune.model_config import read_model_facts
    from prune.preflight import check_counted_tokens, check_sequence_options

    source = resolve_model_source(args.model)
    if source.kind != "hub":
        from prune.preflight import check_out_apart_from_input

        given = Path(source.location) / source.gguf_file if source.gguf_file else Path(source.location)
        check_out_apart_from_input(out, given)
    facts = read_model_facts(source, trust_remote_code=args.trust_remote_code)
    check_sequence_options(args.seq_len, args.skip_tokens, facts.max_positions)
    texts = load_texts(args.calib, purpose="calib", text_column=args.text_column, seed=args.seed)

    accelerator = _distributed_accelerator(args.device)
    device = str(accelerator.device) if accelerator is not None else args.device
    loaded = load_model(
        source,
        device=device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        device_map=args.device_map,
        progress=not args.quiet,
    )
    anatomy = get_anatomy(loaded.model, args.block_path)
    batches = make_batches(
        loaded.require_tokenizer(),
        texts,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.calib_samples,
        packed=loaded.kind == ModelKind.CAUSAL_LM,
    )
    meta = {
        "model": args.model,
        "model_class": type(loaded.model).__name__,
        "kind": loaded.kind,
        "block_path": anatomy.block_path,
        "calib": args.calib,
        "calib_samples": args.calib_samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "skip_tokens": args.skip_tokens,
        "cka_minibatch": args.cka_minibatch,
        "cka_window": args.cka_window,
        "seed": args.seed,
    }
    if accelerator is not None:
        # Each process takes every N-th batch; the sums are reduced over processes by the collector.
        meta["num_processes"] = accelerator.num_processes
        batches = batches[accelerator.process_index :: accelerator.num_processes]
    analysis = analyze(
        loaded.model,
        batches,
        anatomy=anatomy,
        beta=args.beta,
        eps=args.eps,
        token_mode=args.token_mode,
        skip_tokens=args.skip_tokens,
        cka_minibatch=args.cka_minibatch,
        cka_window=args.cka_window,
        seed=args.seed,
        max_tokens=args.max_tokens,
        accelerator=accelerator,
        state_path=args.state,
        progress=not args.quiet,
        allow_last=args.allow_last,
        meta=meta,
    )
    check_counted_tokens(analysis.num_tokens, args.skip_tokens)
    needed = None
    if not args.no_neurons and anatomy.mlp is not None:
        from prune.width.energy import neurons_needed

        needed = neurons_needed(
            loaded.model,
            batches,
            anatomy=anatomy,
            block_group=args.ffn_block_group,
            max_tokens=args.max_tokens,
            skip_tokens=args.skip_tokens,
            accelerator=accelerator,
            progress=not args.quiet,
        )
    if accelerator is not None and not accelerator.is_main_process:
        return 0  # every process holds the same totals; one writes them
    data = analysis.to_dict()
    text = "\n".join([analysis.to_table(), "", *analysis_summary_lines(analysis)])
    if needed is not None:
        data["ffn_neurons_needed"] = needed.to_dict()
        text += "\n\n" + "\n".join(needed.table_lines())

    with atomic_output_dir(out, force=args.force) as folder:
        folder = Path(folder)
        (folder / "analysis.json").write_text(dumps_json(data) + "\n")
        (folder / "analysis.txt").write_text(text + "\n")
        plots = "" if args.no_plots else _write_plots(analysis, folder, args.model, needed)

    if args.json:
        print(dumps_json(data))
    else:
        mode = {
            "tokens": "",
            "mean": ", compared as per-sequence means",
            "last": ", compared at the last token",
        }
        print(
            f"{args.model}: {analysis.num_blocks} blocks, {analysis.num_tokens} tokens{mode[args.token_mode]}"
        )
        print(text)
    print(f"wrote {out}{plots}", file=sys.stderr)
    return 0


def _distributed_accelerator(device: str):
    """An `accelerate.Accelerator` when started by `accelerate launch` / torchrun with N > 1 processes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu")


def _write_plots(analysis, folder: Path, model: str, needed=None) -> str:
    """Draw the figures; without matplotlib, write nothing and say how to get them (the rest is written)."""
    from prune.errors import PruneError
    from prune.plots import plot_block_scores, plot_cka_heatmap, require_matplotlib

    try:
        require_matplotlib()
    except PruneError as err:
        return f" (no plots: {err})"

    if "cka" in analysis.scores:
        # Row 0 is the embedding output h_0; row l + 1 is the output of block l.
        labels = ["emb", *(str(b) for b in range(analysis.num_blocks))]
        title = f"{model}: CKA of layer outputs"
        if analysis.msrs is not None:
            title += f" (MSRS {analysis.msrs:.2f}, normalised {analysis.msrs_normalised:.3f})"
        plot_cka_heatmap(
            analysis.scores["cka"],
            folder / PLOTS[0],
            title=title,
            labels=labels,
            axis_label="output of block (emb = embeddings)",
        )
    plot_block_scores(analysis.scores, folder / PLOTS[1], title=f"{model}: per-block scores")
    if needed is not None:
        from prune.plots import plot_neurons_needed

        plot_neurons_needed(
            needed.counts, needed.size, folder / PLOTS[2], title=f"{model}: FFN neurons needed"
        )
    return ""
