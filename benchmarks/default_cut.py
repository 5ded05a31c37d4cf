"""Our default run against the repaired baselines at several depths, through the run's own stages.

One model load, one calibration pass for every score; then per depth and per configuration the run's
own stages (`prune.stages.plan`, `cut`, `repair`: the strategy, the repair, the refit and the repair
guard exactly as ``prune-llm MODEL --target ...`` runs them), evaluated on the held-out split of the
default corpus (disjoint from calibration) with `prune.evaluation`. A configuration is
LABEL=KEY:VALUE/KEY:VALUE... of `PruneOptions` fields; ``default`` is the options' defaults.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/default_cut.py smollm2-135m --drops 3,6,9 --quick
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/default_cut.py mpnet-base --drops 4 --quick \
        --configs default,plain=strategy:span/repair:none
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIGS = (
    "default",
    "topk+linear=strategy:topk/repair_guard:false",
    "cka+linear=strategy:cka/repair_guard:false",
    "span+linear=strategy:span/repair_guard:false",
    "plain=strategy:span/repair:none",
)
QUICK = {"calib_samples": 16, "eval_samples": 8}
FULL = {"calib_samples": 128, "eval_samples": 32}


def _config(text: str) -> tuple[str, dict]:
    label, _, body = text.partition("=")
    values: dict = {}
    for item in filter(None, body.split("/")):
        key, _, value = item.partition(":")
        values[key] = {"true": True, "false": False}.get(value.lower(), value)
    return label, values


def main() -> None:
    from benchmarks._common import add_protocol_flags, fill_protocol_sizes

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--drops", required=True, help="blocks to remove, comma-separated (e.g. 3,6,9)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    add_protocol_flags(parser, QUICK)
    parser.add_argument(
        "--json", help="write the rows here (default benchmarks/results/default_cut_MODEL.json)"
    )
    args = parser.parse_args()
    fill_protocol_sizes(args, QUICK, FULL)
    run(args)


def run(args) -> None:
    from benchmarks._common import command_line, machine, quality_keys
    from prune import stages
    from prune.anatomy import get_anatomy
    from prune.collect import collect_stats
    from prune.data import load_texts, make_batch_split
    from prune.evaluation import EvalSettings, evaluate_model
    from prune.loading import load_model
    from prune.options import PruneOptions
    from prune.stages.prepare import guard_samples

    loaded = load_model(args.model, device="cpu", dtype="float32", progress=False)
    model, kind = loaded.model, loaded.kind
    anatomy = get_anatomy(model)
    sizes = {"calib_samples": args.calib_samples, "seq_len": args.seq_len, "batch_size": args.batch_size}
    base = PruneOptions(model=args.model, target="drop-1", **sizes)
    calib_texts, eval_texts = load_texts("default", purpose="calib"), load_texts("default", purpose="eval")
    assert not set(calib_texts) & set(eval_texts)
    calib, held = make_batch_split(
        loaded.tokenizer,
        calib_texts,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.calib_samples,
        packed=kind == "causal-lm",
        held_back=guard_samples(base),
    )
    settings = EvalSettings(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.eval_samples,
        generation=False,
        speed=False,
    )
    reference = model if kind == "encoder" else None

    def evaluate(candidate) -> dict:
        return evaluate_model(
            candidate, loaded.tokenizer, kind=kind, texts=eval_texts, reference=reference, settings=settings
        )

    start = time.perf_counter()
    scores = collect_stats(
        model, calib, anatomy=anatomy, metrics=("angular", "bi", "cka_io"), progress=False
    ).scores()
    collect_s = time.perf_counter() - start
    keys = quality_keys(kind)
    rows = [{"config": "dense", "drop": 0, **{k: evaluate(model)[k] for k in keys}}]
    print(f"{args.model}: dense {rows[0]}; collect {collect_s:.1f} s", flush=True)
    out = Path(
        args.json or f"benchmarks/results/default_cut_{args.model}{'_quick' if args.quick else ''}.json"
    )
    protocol = {
        **sizes,
        "eval_samples": args.eval_samples,
        "guard_samples": guard_samples(base),
        "data": "default corpus: calibration split (the guard's held-back sequences follow the calibration "
        "ones), eval split for quality, disjoint",
    }
    payload = {
        "benchmark": "default_cut",
        "model": args.model,
        "command": command_line(),
        "machine": machine(),
    }

    def save() -> None:
        out.write_text(
            json.dumps(
                {
                    **payload,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "protocol": protocol,
                    "collect_s": collect_s,
                    "rows": rows,
                },
                indent=1,
            )
        )

    for drop in [int(d) for d in args.drops.split(",")]:
        for label, values in map(_config, args.configs.split(",")):
            options = PruneOptions(model=args.model, target=f"drop-{drop}", **sizes, **values)
            ctx = stages.RunContext(options, progress=False)
            ctx.loaded, ctx.anatomy, ctx.calib_batches, ctx.scores = loaded, anatomy, calib, scores
            ctx.guard_batches = held if guard_samples(options) else []
            start = time.perf_counter()
            ctx = stages.plan(ctx)
            plan_s = time.perf_counter() - start
            ctx = stages.repair(stages.cut(ctx))
            repair_s = time.perf_counter() - start - plan_s
            quality = evaluate(ctx.pruned)
            row = {
                "config": label,
                "options": values,
                "drop": drop,
                "strategy": ctx.plan.strategy,
                "blocks": list(ctx.plan.drop),
                **{k: quality[k] for k in keys},
                "guard": ctx.repair.guard,
                "auto_candidates": ctx.plan.details.get("auto_candidates"),
                "refit": ctx.repair.refit is not None,
                "plan_s": round(plan_s, 1),
                "repair_s": round(repair_s, 1),
            }
            rows.append(row)
            guard = row["guard"] or {}
            print(
                f"drop {drop} {label:12s} {row['strategy']:12s} blocks {row['blocks']} "
                + " ".join(f"{k} {row[k]:.4f}" for k in keys)
                + (
                    f" guard kept {guard['kept']} ({guard['loss_plain']:.4f} plain / {guard['loss_repaired']:.4f},"
                    f" {guard['seconds']:.1f} s)"
                    if guard
                    else ""
                )
                + f" plan {plan_s:.1f} s repair {repair_s:.1f} s",
                flush=True,
            )
            del ctx
            save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
