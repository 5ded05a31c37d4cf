"""Scale on paper: time and memory to analyse, prune, repair and squeeze a 7B and a 70B model on 1 and 8 GPUs.

Projected, not measured: from the costs `benchmarks/stage_costs.py` measured on a small model (each
stage's time as a multiple of a bare forward pass over the same tokens) and the shapes of the target
models, under the GPU assumptions below (stated in the output, change them with the flags). Formulas:

    forward(T tokens)        = 2 * P * T / (F * u)                       per model copy
    stage(T)                 = r_stage * forward(T) / c                  c = data-parallel copies
    copies c                 = floor(G / g), g = ceil(weights / (M - reserve)) GPUs per copy (device_map)
    squeeze passes           = L / floor(B / (k 8 d_ff^2))               B = the Gram memory bound (2 GiB)
    squeeze statistics       = passes * r_ffn * forward(T) / c
    selection                = L * s_cpu * (d_ff / d_ff_small)^3 * (F64_cpu / F64_gpu)
    memory per GPU           = weights / g + max(repair 8 (d+1) 2d per span, squeeze Grams per pass)

k Grams per block: 2 with the auto ridge (the default: fitted-on and held-back sums), 1 with a fixed one.

P parameters, T calibration tokens, F the GPU's dense bf16 peak, u the fraction of it a forward pass
reaches, M its memory, L blocks, d hidden size, d_ff FFN size; r_stage measured (stage time / bare
forward time at the same tokens); s_cpu the measured selection time per block of the small model.

    PYTHONPATH=. python benchmarks/scale.py --measured benchmarks/results/stages_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

MODELS = {  # public configs: Llama-2-7B and Llama-2-70B shapes
    "7B": {"params": 6.74e9, "blocks": 32, "d": 4096, "d_ff": 11008},
    "70B": {"params": 69.0e9, "blocks": 80, "d": 8192, "d_ff": 28672},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measured", default="benchmarks/results/stages_smollm2-135m.json")
    parser.add_argument("--tokens", type=float, default=256 * 2048, help="calibration tokens (256 x 2048)")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="ASSUMED dense bf16 peak (H100 SXM)")
    parser.add_argument(
        "--utilisation", type=float, default=0.4, help="ASSUMED fraction of peak a forward reaches"
    )
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="ASSUMED GPU memory")
    parser.add_argument(
        "--reserve-gb", type=float, default=12.0, help="ASSUMED activations + workspace per GPU"
    )
    parser.add_argument(
        "--fp64-gflops-cpu", type=float, default=20.0, help="ASSUMED fp64 rate of the measuring CPU core"
    )
    parser.add_argument(
        "--fp64-tflops-gpu", type=float, default=60.0, help="ASSUMED fp64 (tensor core) rate of the GPU"
    )
    parser.add_argument("--gram-bound-gib", type=float, default=2.0, help="the squeeze's Gram memory bound")
    parser.add_argument(
        "--grams-per-block",
        type=int,
        default=2,
        help="2 with the auto ridge (the default), 1 with a fixed one",
    )
    parser.add_argument(
        "--selection-s-per-block", type=float, default=None, help="measured small-model selection s/block"
    )
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    args = parser.parse_args()

    measured = json.loads(Path(args.measured).read_text())
    ratios, small = _ratios(measured)
    selection, source = args.selection_s_per_block, "--selection-s-per-block"
    if selection is None:
        selection, source = _selection_per_block()
    rows = []
    for name, shape in MODELS.items():
        for gpus in (1, 8):
            rows.append(_project(name, shape, gpus, ratios, small, selection, args))
    assumptions = {k: getattr(args, k) for k in ("tokens", "gpu_tflops", "utilisation", "gpu_memory_gb",
                   "reserve_gb", "fp64_gflops_cpu", "fp64_tflops_gpu", "gram_bound_gib", "grams_per_block")}  # fmt: skip
    report = {"benchmark": "scale", "measured_from": args.measured, "ratios": ratios, "small": small,
              "selection_s_per_block_small": selection, "selection_from": source, "assumptions": assumptions, "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(report))


def _ratios(measured: dict) -> tuple[dict, dict]:
    """Each stage's time over the bare forward pass at the largest token budget measured."""
    rows = [r for r in measured["rows"] if r.get("tokens")]
    stages = {r["stage"] for r in rows}
    # the largest budget at which every stage was measured (a stopped run may lack the last ones)
    budget = max(
        b for b in {r["tokens"] for r in rows} if {r["stage"] for r in rows if r["tokens"] == b} == stages
    )
    at = {r["stage"].split(" (")[0].split(",")[0]: r for r in rows if r["tokens"] == budget}
    bare = at["forward"]["seconds"]
    ratios = {name: round(r["seconds"] / bare, 3) for name, r in at.items() if name != "forward"}
    small = {"model": measured["model"], "tokens": budget, "forward_s": bare, "d": measured["hidden_size"],
             "d_ff": measured["intermediate_size"], "blocks": measured["num_blocks"]}  # fmt: skip
    return ratios, small


def _selection_per_block() -> tuple[float, str]:
    """The squeeze selection time per block measured by width_quality.py at keep 0.75 (d_ff 1536 in both
    SmolLM2-135M and MiniLM-L6, so either serves), and where it comes from."""
    names = ("width_smollm2-135m.json", "width_smollm2-135m_quick.json", "width_minilm-l6_quick.json")
    for name in names:
        path = Path("benchmarks/results") / name
        if path.exists():
            data = json.loads(path.read_text())
            for row in data["rows"]:
                if row["method"] == "squeeze" and row.get("keep") == 0.75 and row.get("squeeze_s"):
                    return row["squeeze_s"] / data["num_blocks"], f"{name}: squeeze at keep 0.75"
    return float("nan"), "not measured"


def _project(name: str, shape: dict, gpus: int, ratios: dict, small: dict, selection: float, args) -> dict:
    weights_gb = 2 * shape["params"] / 1e9  # bf16
    per_copy = math.ceil(weights_gb / (args.gpu_memory_gb - args.reserve_gb))
    copies = max(1, gpus // per_copy) if per_copy <= gpus else 0
    forward = 2 * shape["params"] * args.tokens / (args.gpu_tflops * 1e12 * args.utilisation)
    row = {"model": name, "gpus": gpus, "gpus_per_copy": per_copy, "copies": copies, "weights_gb": weights_gb}
    if copies == 0:
        return {**row, "fits": False}
    d, d_ff, blocks = shape["d"], shape["d_ff"], shape["blocks"]
    from prune.width.stats import block_groups

    gram = 8 * d_ff * d_ff
    groups = block_groups(
        blocks, d_ff, None, max_bytes=int(args.gram_bound_gib * 2**30), grams_per_block=args.grams_per_block
    )
    per_pass, passes = len(groups[0]), len(groups)
    scale = (d_ff / small["d_ff"]) ** 3 * (args.fp64_gflops_cpu / (args.fp64_tflops_gpu * 1e3))
    row.update(
        fits=True,
        forward_min=forward / copies / 60,
        analyse_min=ratios.get("collect", 0.9) * forward / copies / 60,
        repair_min_per_span=ratios.get("repair linear", 1.0) * forward / copies / 60,
        squeeze_passes=passes,
        squeeze_stats_min=passes * ratios.get("FFN statistics", 1.0) * forward / copies / 60,
        selection_min=blocks * selection * scale / 60,
        repair_stats_gb=8 * (d + 1) * 2 * d / 1e9,
        gram_gb_per_block=gram / 1e9,
        # a Gram larger than the bound still needs one block's worth: the bound cannot go below it
        memory_per_gpu_gb=weights_gb / per_copy
        + max(8 * (d + 1) * 2 * d, gram * per_pass * args.grams_per_block) / 1e9,
    )  # fmt: skip
    return row


def table(report: dict) -> str:
    a = report["assumptions"]
    lines = [
        f"Assumed: {a['gpu_tflops']:.0f} TFLOP/s bf16 peak at {a['utilisation']:.0%} for a forward pass, "
        f"{a['gpu_memory_gb']:.0f} GB per GPU ({a['reserve_gb']:.0f} GB reserved), fp64 {a['fp64_tflops_gpu']:.0f} "
        f"TFLOP/s on the GPU vs {a['fp64_gflops_cpu']:.0f} GFLOP/s on the measuring CPU core; "
        f"{a['tokens']:.0f} calibration tokens; Gram bound {a['gram_bound_gib']} GiB, "
        f"{a.get('grams_per_block', 1)} Gram(s) per block. Measured stage / forward "
        f"ratios ({report['small']['model']}, {report['small']['tokens']} tokens): {report['ratios']}; analyse = "
        "0.9 x forward (collector_overhead.py: 0.80-1.00x); selection "
        f"{report['selection_s_per_block_small']:.2f} s per block ({report.get('selection_from')}, d_ff 1536).",
        "",
        "| model | GPUs | GPUs per copy | copies | forward min | analyse min | repair min / span | squeeze passes | "
        "squeeze stats min | selection min | repair stats GB / span | Gram GB / block | memory / GPU GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if not r["fits"]:
            lines.append(
                f"| {r['model']} | {r['gpus']} | {r['gpus_per_copy']} | 0 | weights do not fit in one GPU: device_map with CPU offload | | | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['gpus']} | {r['gpus_per_copy']} | {r['copies']} | {r['forward_min']:.2f} | "
            f"{r['analyse_min']:.2f} | {r['repair_min_per_span']:.2f} | {r['squeeze_passes']} | "
            f"{r['squeeze_stats_min']:.1f} | {r['selection_min']:.1f} | {r['repair_stats_gb']:.2f} | "
            f"{r['gram_gb_per_block']:.2f} | {r['memory_per_gpu_gb']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
