"""GGUF export of a pruned model: file size and export time per outtype, and what the file loses.

Prunes MODEL to TARGET (one calibration pass, `prune.run_pruning`), saves the folder, exports it with
`prune.gguf_export.export_gguf` to every outtype, reloads each GGUF with transformers' GGUF loader
(dequantized to float32) and evaluates it against the pruned folder on the same held-out text with the
same protocol (`prune.evaluation.evaluate_model`): perplexity, and KL(folder || GGUF) of the next-token
distributions. Prints a Markdown table (and JSON with --json).

    python benchmarks/gguf_export.py smollm2-135m --target 24-layers
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--target", default="24-layers")
    parser.add_argument("--outtypes", default="f32,f16,bf16,q8_0")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workdir", help="where the folder and the GGUF files go (default: a temp dir)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse WORKDIR/pruned from an earlier run instead of pruning again",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.data import load_texts
    from prune.evaluation import EvalSettings, evaluate_model
    from prune.gguf_export import export_gguf
    from prune.options import PruneOptions
    from prune.pipeline import run_pruning

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="prune-gguf-bench-"))
    folder = workdir / "pruned"
    options = PruneOptions(
        model=args.model,
        target=args.target,
        calib_samples=args.calib_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        eval="none",
        out=str(folder),
        force=True,
    )
    if args.reuse and (folder / "prune_report.json").is_file():
        blocks_report = json.loads((folder / "prune_report.json").read_text())["model"]
    else:
        blocks_report = run_pruning(options, progress=False).report["model"]
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = load_texts("default", purpose="eval")
    settings = EvalSettings(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.eval_samples,
        speed=False,
        generation=False,
    )
    folder_metrics = evaluate_model(reference, tokenizer, kind="causal-lm", texts=texts, settings=settings)
    safetensors = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    rows = [
        {
            "outtype": "folder (safetensors f32)",
            "size_bytes": safetensors,
            "export_s": None,
            "perplexity": folder_metrics["perplexity"],
            "kl": 0.0,
        }
    ]
    for outtype in args.outtypes.split(","):
        exported = export_gguf(folder, outtype=outtype, force=True)
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            workdir, gguf_file=exported.path.name, dtype=torch.float32
        ).eval()
        load_s = time.perf_counter() - start
        metrics = evaluate_model(
            model, tokenizer, kind="causal-lm", texts=texts, reference=reference, settings=settings
        )
        kl = next((v for k, v in metrics.items() if k.startswith("kl")), None)
        rows.append(
            {
                "outtype": outtype,
                "size_bytes": exported.size_bytes,
                "export_s": round(exported.seconds, 1),
                "reload_s": round(load_s, 1),
                "perplexity": metrics["perplexity"],
                "kl": kl,
            }
        )
        del model
        print(
            json.dumps(rows[-1]), file=sys.stderr, flush=True
        )  # a row at a time: long runs keep what they did
    summary = {
        "model": args.model,
        "target": args.target,
        "blocks": [blocks_report["num_blocks_before"], blocks_report["num_blocks_after"]],
        "eval": {"texts": "default", "windows": args.eval_samples, "seq_len": args.seq_len},
        "rows": rows,
        "workdir": str(workdir),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{args.model} pruned {summary['blocks'][0]} -> {summary['blocks'][1]} blocks; held-out perplexity "
        f"over {args.eval_samples} windows of {args.seq_len} tokens"
    )
    print("| file | size MiB | export s | perplexity | KL(folder || file) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        export_s = "-" if row["export_s"] is None else f"{row['export_s']:.1f}"
        kl = "-" if row["kl"] is None else f"{row['kl']:.2e}"
        print(
            f"| {row['outtype']} | {row['size_bytes'] / 2**20:.1f} | {export_s} | {row['perplexity']:.3f} | {kl} |"
        )


if __name__ == "__main__":
    main()
