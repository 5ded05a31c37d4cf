"""Time and memory of each stage after the statistics: repair and squeeze statistics, surgery, save, speed.

On one model, with the library's stages:
- per token budget N: a bare forward pass over the same N calibration tokens (reference), the repair
  statistics and fit (`prune.repair.repair_cut`, linear and scale, one span) and the FFN statistics of
  every block (`prune.width.stats.collect_ffn_stats`): wall time and peak RSS above the process's
  resident set before the stage (sampled every millisecond; freed heap returned first). The sums are
  float64 matrices whose size depends on the width, not on N, so the memory should stay flat as N grows;
- surgery (`prune.surgery.remove_blocks`, with and without weight sharing) and save
  (`prune.output.save_model`: safetensors and tokenizer) times;
- latency and throughput (`prune.evaluation.speed.speed_metrics`) of the original, the depth-cut model,
  the width-squeezed model (magnitude selection: the same shapes as any selection) and both.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/stage_costs.py smollm2-135m --budgets 2048,4096,8192
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--budgets", default="2048,4096,8192", help="calibration tokens per measurement")
    parser.add_argument("--span", default="13-18", help="FIRST-LAST: the blocks cut for repair and surgery")
    parser.add_argument("--keep", type=float, default=0.75, help="FFN keep of the squeezed model")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/stages_MODEL.json)"
    )
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per speed figure")
    parser.add_argument(
        "--stages",
        default="forward,repair,ffn,surgery,speed",
        help="comma-separated subset of forward,repair,ffn,surgery,speed to measure",
    )
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    out = Path(args.out or f"benchmarks/results/stages_{args.model}.json")

    import torch

    from benchmarks._common import Results, protocol_data
    from prune.anatomy import get_anatomy
    from prune.evaluation.speed import speed_metrics
    from prune.loading import load_model
    from prune.output import save_model
    from prune.repair import repair_cut
    from prune.surgery import remove_blocks
    from prune.width import squeeze_model
    from prune.width.stats import collect_ffn_stats

    loaded = load_model(args.model, device="cpu", dtype="float32", progress=False)
    model, tokenizer, kind = loaded.model, loaded.tokenizer, loaded.kind
    anatomy = get_anatomy(model)
    budgets = [int(b) for b in args.budgets.split(",")]
    windows = -(-max(budgets) // args.seq_len)
    calib, _, protocol = protocol_data(
        tokenizer, kind, calib_samples=windows, seq_len=args.seq_len, batch_size=args.batch_size, seed=0
    )
    first, last = (int(b) for b in args.span.split("-"))
    drop = list(range(first, last + 1))
    config = model.config
    d, d_ff = config.hidden_size, config.intermediate_size
    results = Results(
        out,
        {
            "benchmark": "stage_costs",
            "model": args.model,
            "kind": kind,
            "num_blocks": anatomy.num_blocks,
            "hidden_size": d,
            "intermediate_size": d_ff,
            "span": [first, last],
            "protocol": protocol,
            "theory_bytes": {
                "repair_linear_per_span": (d + 1) * 2 * d * 8,
                "ffn_gram_per_block": d_ff * d_ff * 8,
            },
        },
        resume=args.resume,
    )

    def measure(name: str, budget, work):
        if results.done(f"{name}|{budget}") and budget is not None:
            return None
        value, seconds, peak_mib = peak_above(work)
        row = {"stage": name, "tokens": budget, "seconds": round(seconds, 2), "peak_mib_above": peak_mib}
        results.add(f"{name}|{budget}", row)
        print(row, flush=True)
        return value

    def bare(budget: int):
        with torch.no_grad():
            for batch in _take(calib, budget):
                model(**batch, use_cache=False)

    for budget in budgets:
        if "forward" in stages:
            measure("forward (bare, LM head included)", budget, lambda b=budget: bare(b))
        for method in ("linear", "scale") if "repair" in stages else ():
            pruned = remove_blocks(model, drop, anatomy=anatomy, share_weights=True)
            measure(
                f"repair {method} (statistics + fit, blocks {first}-{last})",
                budget,
                lambda p=pruned, m=method, b=budget: repair_cut(
                    model, p, drop, calib, method=m, anatomy=anatomy, max_tokens=b, progress=False
                ),
            )
            del pruned
        if "ffn" in stages:
            measure(
                f"FFN statistics, all {anatomy.num_blocks} blocks",
                budget,
                lambda b=budget: collect_ffn_stats(
                    model, calib, anatomy, list(range(anatomy.num_blocks)), max_tokens=b, progress=False
                ),
            )
    if not stages & {"surgery", "speed"}:
        results.save()
        print(f"wrote {out}")
        return

    cut = measure(
        "surgery (remove_blocks, shared weights)",
        None,
        lambda: remove_blocks(model, drop, anatomy=anatomy, share_weights=True),
    )
    measure("surgery (remove_blocks, copy)", None, lambda: remove_blocks(model, drop, anatomy=anatomy))
    with tempfile.TemporaryDirectory() as tmp:
        measure(
            "save (safetensors + tokenizer, pruned)",
            None,
            lambda: save_model(cut, tokenizer, Path(tmp) / "m"),
        )
    small = calib[:2]
    squeezed = squeeze_model(
        model, small, keep=args.keep, method="magnitude", energy_levels=(), progress=False
    ).model
    both = squeeze_model(
        cut, small, keep=args.keep, method="magnitude", energy_levels=(), progress=False
    ).model
    for name, candidate in (
        ("original", model),
        (f"cut {first}-{last}", cut),
        (f"FFN keep {args.keep}", squeezed),
        ("cut + FFN keep", both),
    ):
        for batch_size, seq_len in ((args.batch_size, args.seq_len), (1, 32)):
            speed = speed_metrics(candidate, batch_size=batch_size, seq_len=seq_len, repeats=args.repeats)
            row = {
                "stage": "speed",
                "model": name,
                "batch": f"{batch_size}x{seq_len}",
                "parameters": sum(p.numel() for p in candidate.parameters()),
                **speed,
            }
            results.add(f"speed|{name}|{batch_size}x{seq_len}", row)
            print(row, flush=True)
    results.save()
    print(f"wrote {out}")


def _take(batches, budget: int):
    """The leading batches holding `budget` tokens (the last one cut to fit), as the collector counts them."""
    left = budget
    for batch in batches:
        if left <= 0:
            return
        rows = batch["input_ids"].shape[0]
        per_row = batch["input_ids"].shape[1]
        need = -(-left // per_row)
        yield {k: v[: min(rows, need)] for k, v in batch.items()}
        left -= min(rows, need) * per_row


def peak_above(work):
    """Run `work()`: ``(its value, wall seconds, peak RSS MiB above the process's resident set before it)``.

    Garbage is collected and freed heap returned to the OS first, so that the rise is the work's own; the
    RSS is sampled every millisecond (`prune.evaluation.speed`).
    """
    gc.collect()
    sampler = _sampler()
    with sampler:
        before = sampler.peak
        start = time.perf_counter()
        value = work()
        seconds = time.perf_counter() - start
    return value, seconds, round(max(0, sampler.peak - before) / 2**20, 1)


def _sampler():
    from prune.evaluation.speed import _release_free_heap, _RssSampler

    _release_free_heap()
    return _RssSampler()


if __name__ == "__main__":
    main()
