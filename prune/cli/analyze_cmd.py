"""`prune-llm analyze MODEL`: redundancy analysis only (scores, MSRS, heatmap); the model is not changed."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from prune.cli.flags import add_option_flags, options_from_args
from prune.command_options import AnalyzeOptions

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
    # The analysis options are groups of prune.options (model, data, collection, scores): the flags,
    # their help and their defaults are the prune command's, generated the same way.
    add_option_flags(
        parser, AnalyzeOptions, overrides_only=False, with_defaults=True, title="analysis options"
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        help="Save the running sums to FILE as they grow; a rerun with the same FILE and data resumes "
        "where an interrupted run stopped.",
    )
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
    from prune.analysis import analysis_summary_lines, analyze
    from prune.jsonable import dumps_json
    from prune.output import atomic_output_dir, check_output_dir

    options = options_from_args(args, AnalyzeOptions)
    if args.out is not None and not args.out.strip():
        from prune.errors import OutputError

        raise OutputError("--out is empty; pass the folder for the results (--out DIR) or leave it out")
    out = Path(args.out) if args.out else default_out_dir(options.model)
    # Everything that can be checked cheaply fails before the model is loaded: the output folder, the
    # flags, the model's config (block count, positions), and the calibration text.
    check_output_dir(out, force=args.force)

    from prune import stages
    from prune.data import load_texts
    from prune.loading import resolve_model_source
    from prune.model_config import read_model_facts
    from prune.preflight import Checked, check_counted_tokens, check_sequence_options

    source = resolve_model_source(options.model)
    if source.kind != "hub":
        from prune.preflight import check_out_apart_from_input

        given = Path(source.location) / source.gguf_file if source.gguf_file else Path(source.location)
        check_out_apart_from_input(out, given)
    facts = read_model_facts(source, trust_remote_code=options.trust_remote_code)
    check_sequence_options(options.seq_len, options.skip_tokens, facts.max_positions)
    texts = load_texts(options.calib, purpose="calib", text_column=options.text_column, seed=options.seed)

    accelerator = _distributed_accelerator(options.device)
    ctx = stages.RunContext(options, progress=not args.quiet)
    ctx.checked = Checked(out=out, source=source, num_blocks=None, calib_texts=texts, eval_texts=None)
    ctx = stages.calibrate(
        stages.load(ctx, device=str(accelerator.device) if accelerator is not None else None)
    )
    loaded, anatomy, batches = ctx.loaded, ctx.anatomy, ctx.calib_batches
    meta = {
        "model": options.model,
        "model_class": type(loaded.model).__name__,
        "kind": loaded.kind,
        "block_path": anatomy.block_path,
        "calib": options.calib,
        "calib_samples": options.calib_samples,
        "seq_len": options.seq_len,
        "batch_size": options.batch_size,
        "max_tokens": options.max_tokens,
        "skip_tokens": options.skip_tokens,
        "cka_minibatch": options.cka_minibatch,
        "cka_window": options.cka_window,
        "seed": options.seed,
    }
    if accelerator is not None:
        # Each process takes every N-th batch; the sums are reduced over processes by the collector.
        meta["num_processes"] = accelerator.num_processes
        batches = batches[accelerator.process_index :: accelerator.num_processes]
    analysis = analyze(
        loaded.model,
        batches,
        anatomy=anatomy,
        beta=options.beta,
        eps=options.eps,
        token_mode=options.token_mode,
        skip_tokens=options.skip_tokens,
        cka_minibatch=options.cka_minibatch,
        cka_window=options.cka_window,
        seed=options.seed,
        max_tokens=options.max_tokens,
        accelerator=accelerator,
        state_path=args.state,
        progress=not args.quiet,
        allow_last=options.allow_last,
        meta=meta,
    )
    check_counted_tokens(analysis.num_tokens, options.skip_tokens)
    needed = None
    if not args.no_neurons and anatomy.mlp is not None:
        from prune.width.energy import neurons_needed

        needed = neurons_needed(
            loaded.model,
            batches,
            anatomy=anatomy,
            block_group=options.ffn_block_group,
            max_tokens=options.max_tokens,
            skip_tokens=options.skip_tokens,
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
        plots = "" if args.no_plots else _write_plots(analysis, folder, options.model, needed)

    if args.json:
        print(dumps_json(data))
    else:
        mode = {
            "tokens": "",
            "mean": ", compared as per-sequence means",
            "last": ", compared at the last token",
        }
        print(
            f"{options.model}: {analysis.num_blocks} blocks, {analysis.num_tokens} tokens{mode[options.token_mode]}"
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
