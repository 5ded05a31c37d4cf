"""Peak memory of the FFN squeeze's statistics against the block group: is it bounded as documented?

The squeeze holds one float64 d_ff x d_ff Gram per block of the group being collected (two with the auto
ridge: the fitted-on and the held-back sums, `prune.width.ridge.collect_split_stats`), one calibration
pass per group (`prune.width.stats.block_groups`, `--ffn-block-group`). For each group size and stage,
in a fresh process (so that no heap of an earlier measurement is reused), this measures the peak RSS
above the process's resident set before the stage (model and data loaded; `stage_costs.peak_above`),
the wall time and the passes:

- ``analyze``: `prune.width.energy.neurons_needed` (what `prune-llm analyze` runs): one Gram per block;
- ``squeeze``: the whole `prune.width.squeeze_model` step, in place (the CLI's way: no copy of the
  model) at each ``--keeps`` (a fraction collects and folds group by group; ``auto:E`` first collects
  every group for the energy curves, then again for the folds).

It also writes, computed and not measured, what the default bound (`DEFAULT_MAX_BYTES`) gives for a
7B model (d_ff 11008, 32 blocks).

    PYTHONPATH=. OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 python benchmarks/ffn_memory.py smollm2-135m \\
        --groups 1,5,10,30 --keeps 0.75,auto:0.99 --tokens 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROW = "ROW "
PROJECTED = {"model": "7B (Llama-2-7B shape)", "blocks": 32, "d_ff": 11008}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--groups", default="1,5,10,30", help="blocks per calibration pass, one run each")
    parser.add_argument("--keeps", default="0.75,auto:0.99", help="--ffn-keep values of the squeeze runs")
    parser.add_argument(
        "--stages", default="analyze,squeeze", help="comma-separated subset of analyze,squeeze"
    )
    parser.add_argument("--method", default="squeeze", help="--ffn-method of the squeeze runs")
    parser.add_argument("--tokens", type=int, default=4096, help="calibration tokens of every run")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--label", default="", help="what code was measured (kept in each row)")
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/ffn_memory_MODEL.json)"
    )
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: STAGE|KEEP|GROUP
    args = parser.parse_args()
    if args.one:
        print(ROW + json.dumps(_measure_one(args, *args.one.split("|"))), flush=True)
        return

    from benchmarks._common import Results
    from prune.width.stats import DEFAULT_MAX_BYTES

    out = Path(args.out or f"benchmarks/results/ffn_memory_{args.model}.json")
    header = {
        "benchmark": "ffn_memory",
        "model": args.model,
        "tokens": args.tokens,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "method": args.method,
        "default_max_bytes": DEFAULT_MAX_BYTES,
        "projection": projection(),
    }
    results = Results(out, header, resume=args.resume)
    jobs = [("analyze", "-")] if "analyze" in args.stages.split(",") else []
    if "squeeze" in args.stages.split(","):
        jobs += [("squeeze", keep) for keep in args.keeps.split(",")]
    for stage, keep in jobs:
        for group in args.groups.split(","):
            key = f"{stage}|{keep}|{group}|{args.label}"
            if results.done(key):
                continue
            row = _child(args, f"{stage}|{keep}|{group}")
            results.add(key, {**row, "label": args.label})
            print(row, flush=True)
    results.save()
    print(f"wrote {out}")


def _child(args: argparse.Namespace, one: str) -> dict:
    """One measurement in a fresh interpreter (the same script with ``--one``)."""
    flags = [
        "--tokens",
        str(args.tokens),
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
    ]
    command = [sys.executable, __file__, args.model, "--method", args.method, *flags, "--one", one]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith(ROW))
    return json.loads(line[len(ROW) :])


def _measure_one(args: argparse.Namespace, stage: str, keep: str, group_text: str) -> dict:
    from benchmarks._common import protocol_data
    from benchmarks.stage_costs import peak_above
    from prune.anatomy import get_anatomy
    from prune.evaluation.speed import _release_free_heap
    from prune.loading import load_model
    from prune.width import squeeze_model
    from prune.width.energy import neurons_needed
    from prune.width.stats import block_groups, gram_bytes

    loaded = load_model(args.model, device="cpu", dtype="float32", progress=False)
    model, anatomy = loaded.model, get_anatomy(loaded.model)
    windows = -(-args.tokens // args.seq_len)
    calib, _, _ = protocol_data(
        loaded.tokenizer,
        loaded.kind,
        calib_samples=windows,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=0,
    )
    blocks, d_ff = anatomy.num_blocks, int(model.config.intermediate_size)
    group = min(int(group_text), blocks)
    common = dict(block_group=group, max_tokens=args.tokens, progress=False)
    if stage == "analyze":
        _, seconds, peak = peak_above(lambda: neurons_needed(model, calib, anatomy=anatomy, **common))
        passes, grams = len(block_groups(blocks, d_ff, group)), 1
    else:
        ffn_keep = keep if keep.startswith("auto") else float(keep)
        report, seconds, peak = peak_above(
            lambda: (
                squeeze_model(
                    model, calib, keep=ffn_keep, method=args.method, anatomy=anatomy, inplace=True, **common
                ).report
            )
        )
        passes, grams = report.passes, 2 if report.held_back_tokens else 1
    _release_free_heap()
    import psutil

    return {
        "stage": stage,
        "keep": keep,
        "group": group,
        "passes": passes,
        "grams_per_block": grams,
        "gram_mib_per_group": round(group * gram_bytes(d_ff) / 2**20, 1),
        "peak_mib_above": peak,
        "seconds": round(seconds, 1),
        "rss_mib_after": round(psutil.Process().memory_info().rss / 2**20, 1),
        "d_ff": d_ff,
        "blocks": blocks,
    }


def projection() -> list[dict]:
    """Computed, not measured: the default bound's groups for a 7B model, one and two Grams per block."""
    from prune.width.stats import block_groups, gram_bytes

    rows = []
    for grams in (1, 2):
        groups = block_groups(PROJECTED["blocks"], PROJECTED["d_ff"], None, grams_per_block=grams)
        rows.append(
            {
                **PROJECTED,
                "grams_per_block": grams,
                "group": len(groups[0]),
                "passes": len(groups),
                "gram_mib_held": round(len(groups[0]) * grams * gram_bytes(PROJECTED["d_ff"]) / 2**20, 1),
            }
        )
    return rows


def table(data: dict) -> str:
    """The Markdown of a result file (`benchmarks/render.py`)."""
    lines = [
        f"{data['model']}, {data['tokens']} calibration tokens (batches of {data['batch_size']} x "
        f"{data['seq_len']}), method `{data['method']}`, ridge auto, one fresh process per row. Gram MiB = group x "
        "d_ff^2 x 8 (one Gram per block; the auto ridge holds two: x grams/block):",
        "",
        "| code | stage | keep | group | passes | grams / block | Gram MiB per group | x grams / block | "
        "peak MiB above the process | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"analyze": 0, "squeeze": 1}
    for r in sorted(
        data["rows"], key=lambda r: (order.get(r["stage"], 2), r["keep"], r["group"], r.get("label", ""))
    ):
        lines.append(
            f"| {r.get('label') or '-'} | {r['stage']} | {r['keep']} | {r['group']} | {r['passes']} | "
            f"{r['grams_per_block']} | {r['gram_mib_per_group']:.0f} | "
            f"{r['gram_mib_per_group'] * r['grams_per_block']:.0f} | {r['peak_mib_above']:.0f} | {r['seconds']:.0f} |"
        )
    bound = data["default_max_bytes"] / 2**30
    lines += [
        "",
        f"Computed, not measured: the default bound ({bound:g} GiB, no `--ffn-block-group`) for a 7B model:",
        "",
        "| model | blocks | d_ff | grams / block | blocks per pass | passes | Gram MiB held |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cases = {1: " (analyze, a fixed --ffn-ridge)", 2: " (the auto ridge, the default)"}
    lines += [
        f"| {p['model']} | {p['blocks']} | {p['d_ff']} | {p['grams_per_block']}{cases.get(p['grams_per_block'], '')} | "
        f"{p['group']} | {p['passes']} | {p['gram_mib_held']:.0f} |"
        for p in data["projection"]
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
