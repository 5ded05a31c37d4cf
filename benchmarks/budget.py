"""Prune to a budget: the search's choice against depth only and width only at the same budget.

One model load, one statistics pass, the budget search (`prune.budget.run.run_budget_search`, scored on
the held-back quarter of the calibration data), then the chosen configuration, the depth-only and the
width-only ends of the same budget frontier built as the search builds them and evaluated on held-out
text (`prune.evaluation.evaluate_model`, disjoint from calibration). Prints a Markdown table, writes JSON.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/budget.py smollm2-135m --budget params:100M
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/budget.py smollm2-135m --budget loss:1.25x
"""

from __future__ import annotations

import argparse
import json
import math
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--budget", required=True)
    parser.add_argument("--strategy", default="span")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json-out", default=None)
    parser.add_argument(
        "--configs",
        default=None,
        help="skip the search: evaluate these 'BLOCKS_CUT:FFN_KEEP' configurations (comma-separated), "
        "e.g. 2:968,0:864,10:1536 (the blocks come from --strategy)",
    )
    args = parser.parse_args()

    from prune.anatomy import get_anatomy
    from prune.budget.build import split_calibration
    from prune.budget.run import run_budget_search
    from prune.collect import collect_stats
    from prune.data import load_texts, make_batches
    from prune.evaluation import EvalSettings, evaluate_model
    from prune.loading import load_model
    from prune.options import PruneOptions

    options = PruneOptions(
        model=args.model,
        budget=args.budget,
        strategy=args.strategy,
        calib_samples=args.calib_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
    )
    loaded = load_model(args.model, device="cpu", dtype="float32", progress=False)
    model, tokenizer, kind = loaded.model, loaded.tokenizer, loaded.kind
    anatomy = get_anatomy(model)
    calib = make_batches(
        tokenizer,
        load_texts("default", purpose="calib"),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.calib_samples,
        packed=kind == "causal-lm",
    )
    start = time.perf_counter()
    fit, _ = split_calibration(calib)
    scores = collect_stats(model, fit, anatomy=anatomy, metrics=("angular", "bi"), progress=False).scores()
    report = {
        "model": args.model,
        "budget": args.budget,
        "calib_samples": args.calib_samples,
        "eval_samples": args.eval_samples,
        "seq_len": args.seq_len,
        "rows": [],
    }
    if args.configs:
        from prune.budget.run import _Search

        state = _Search(options, model, anatomy, kind, *split_calibration(calib), scores, None, False)
        ends = {}
        for item in args.configs.split(","):
            depth, keep = (int(v) for v in item.split(":"))
            ends[f"cut {depth}, FFN {keep}"] = state.candidate(state.plans[depth].drop, keep)
    else:
        result, state = run_budget_search(options, model, anatomy, kind, calib, scores)
        report["search_s"] = time.perf_counter() - start
        report["search"] = result.to_dict(state.d_ff)
        print(
            f"search: {report['search_s']:.0f} s, {state.builder.builds} builds; {result.reason}", flush=True
        )
        for item in result.explored:
            print(
                f"  {item.candidate.label(state.d_ff)}: {item.candidate.params:,} params, "
                f"held-back ppl {item.perplexity:.3f}",
                flush=True,
            )
        chosen = result.chosen.candidate
        ends = {"chosen": chosen}
        frontier = state.frontier(chosen.params if result.budget.kind != "params" else result.budget.value)
        if frontier:
            ends["width only"] = frontier[0]
            ends["depth only"] = frontier[-1]
    print(f"held-back ppl of the original: {math.exp(state.reference_loss):.3f}", flush=True)
    report["reference_held_back_ppl"] = math.exp(state.reference_loss)
    _write(args, report)
    settings = EvalSettings(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.eval_samples,
        generation=False,
        repeats=1,
    )
    texts = load_texts("default", purpose="eval")
    dense = evaluate_model(model, tokenizer, kind=kind, texts=texts, reference=model, settings=settings)
    rows = report["rows"]
    rows.append({"config": "original", "params": state.costs.total_params, **_pick(dense)})
    for name, candidate in ends.items():
        built = state.builder.build(candidate)
        held = state.builder.loss(built.model)
        metrics = evaluate_model(
            built.model, tokenizer, kind=kind, texts=texts, reference=model, settings=settings
        )
        rows.append(
            {
                "config": f"{name}: {candidate.label(state.d_ff)}",
                "params": candidate.params,
                "held_back_ppl": math.exp(held),
                **_pick(metrics),
            }
        )
        print(rows[-1], flush=True)
        _write(args, report)
    print("\n| configuration | params | held-back ppl | eval ppl |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['config']} | {row['params']:,} | {row.get('held_back_ppl', float('nan')):.3f} | "
            f"{row.get('perplexity', float('nan')):.3f} |"
        )


def _write(args, report: dict) -> None:
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(report, handle, indent=2, default=str)


def _pick(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("perplexity", "kl_mean", "cosine_mean") if k in metrics}


if __name__ == "__main__":
    main()
