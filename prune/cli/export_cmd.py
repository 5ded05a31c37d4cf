"""`prune-llm export FOLDER --gguf FILE --outtype q8_0`: turn a saved model folder into one GGUF file."""

from __future__ import annotations

import argparse
import json

OUTTYPE_CHOICES = ("f32", "f16", "bf16", "q8_0")  # prune.gguf_export.OUTTYPES, without importing it here


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="Export a saved (pruned, repaired, squeezed) model folder to GGUF for llama.cpp / Ollama.",
        description="Convert FOLDER (written by `prune-llm ... --out FOLDER` or save_pretrained) to one GGUF "
        "file with llama.cpp's own converter (pip install 'prune-llm[gguf]'). The file carries the pruned "
        "block count, the original tokenizer and chat template, and a description of what was pruned "
        "(general.description, from prune_report.json). Written atomically; an existing file is kept "
        "unless --force.",
    )
    parser.add_argument("folder", metavar="FOLDER", help="The saved model folder.")
    parser.add_argument(
        "--gguf",
        metavar="FILE",
        help="GGUF file to write (default: FOLDER.OUTTYPE.gguf beside the folder).",
    )
    parser.add_argument(
        "--outtype",
        default="q8_0",
        type=str.lower,
        choices=OUTTYPE_CHOICES,
        help="Tensor type: f32, f16, bf16 or q8_0 (default: q8_0). For k-quants export f16 and run "
        "llama.cpp's llama-quantize on it.",
    )
    parser.add_argument(
        "--description", metavar="TEXT", help="general.description (default: from prune_report.json)."
    )
    parser.add_argument("--force", action="store_true", help="Overwrite the GGUF file if it exists.")
    parser.add_argument("--json", action="store_true", help="Print what was written as JSON.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export the folder; prints where the file went, its size and the time it took."""
    from prune.gguf_export import export_gguf

    result = export_gguf(
        args.folder, args.gguf, outtype=args.outtype, description=args.description, force=args.force
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"wrote {result.path} ({result.outtype}, {result.size_bytes / 2**20:.1f} MiB, "
            f"{result.architecture}) in {result.seconds:.1f} s"
        )
    return 0
