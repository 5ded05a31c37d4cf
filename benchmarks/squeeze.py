"""Compare every FFN width method at several keep fractions on one model, on the same data and protocol.

One model load and one calibration pass for the FFN statistics of every block (shared by all methods,
`squeeze_model(stats=...)`); then per method and keep: squeeze a copy, evaluate it on held-out text with
`prune.evaluation.evaluate_model` (perplexity and KL for causal LMs; embedding fidelity for encoders,
and probe accuracy with --probe), parameters, latency. With --depth, also one depth + width run against
depth alone at about the same parameter count. Prints a Markdown table and writes JSON (--json-out).

    python benchmarks/squeeze.py smollm2-135m --keeps 0.9,0.75,0.6 --calib-samples 64 --eval-samples 16
    python benchmarks/squeeze.py minilm-l6 --keeps 0.9,0.75,0.6
    python benchmarks/squeeze.py smollm2-135m --keeps 0.75 --methods squeeze --depth 27-layers:0.9:24-layers
    python benchmarks/squeeze.py smollm2-135m --keeps 0.75 --methods squeeze,squeeze:refit,wanda

A method entry METHOD:refit also refits every block's down projection of the squeezed model towards the
dense model's residual stream afterwards (`prune.repair.refit`, on the same calibration batches);
METHOD:refit:attn refits each block's attention output projection first; METHOD:ridge=R squeezes with
relative ridge R instead of --ridge; METHOD:seq takes each block's statistics on the model with the
blocks before it already squeezed (one calibration pass per block) instead of all on the dense model. --calib-loss also reports the
perplexity on the calibration windows themselves (the tokens fitted), so that overfitting shows.
"""

from __future__ import annotations

import argparse
import json
import time

METHODS = ("squeeze", "squeeze-forward", "textbook", "pivot", "flap", "wanda", "magnitude")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--keeps", default="0.9,0.75,0.6")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--ridge", default="auto", help="the squeeze's ridge: a number, or auto (chosen on held-back batches)"
    )
    parser.add_argument("--probe", action="store_true", help="encoders: also probe accuracy (minutes)")
    parser.add_argument(
        "--depth",
        default=None,
        help="TARGET_A:KEEP:TARGET_B: compare 'cut to TARGET_A then squeeze to KEEP' with 'cut to TARGET_B'",
    )
    parser.add_argument("--json-out", default=None, help="write the rows as JSON to this file")
    parser.add_argument(
        "--calib-loss", action="store_true", help="also the perplexity on the calibration windows"
    )
    parser.add_argument(
        "--no-kl", action="store_true", help="no KL to the dense model (halves the evaluation)"
    )
    args = parser.parse_args()

    import torch

    from benchmarks._common import command_line
    from prune.anatomy import get_anatomy
    from prune.data import load_texts, make_batches
    from prune.evaluation import EvalSettings, evaluate_model
    from prune.loading import load_model
    from prune.width import squeeze_model
    from prune.width.ridge import collect_split_stats

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
    texts = load_texts("default", purpose="eval")
    settings = EvalSettings(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        num_samples=args.eval_samples,
        generation=False,
        probe=args.probe and kind == "encoder",
        repeats=3,
    )

    def measure(candidate) -> dict:
        reference = None if args.no_kl and kind == "causal-lm" else model
        values = evaluate_model(
            candidate, tokenizer, kind=kind, texts=texts, reference=reference, settings=settings
        )
        if args.calib_loss and kind == "causal-lm":
            values["calib_perplexity"] = _batch_perplexity(candidate, calib)
        return values

    dense = measure(model)
    start = time.perf_counter()
    # the statistics of the batches a fold is fitted on and of those held back to choose its ridge,
    # apart (as squeeze_model takes them); the fixed-ridge methods use both together
    fit_stats, held_stats = collect_split_stats(
        model, calib, anatomy, list(range(anatomy.num_blocks)), progress=False
    )
    collect_s = time.perf_counter() - start
    rows = [{"method": "(dense)", "keep": 1.0, **dense}]
    held_tokens = held_stats[0].num_tokens if held_stats else 0
    calib_tokens = fit_stats[0].num_tokens + held_tokens

    def save() -> None:
        """Write the rows so far (--json-out), so that a stopped run keeps what it measured."""
        if args.json_out:
            report = {
                "model": args.model,
                "calib_tokens": calib_tokens,
                "held_back_tokens": held_tokens,
                "collect_s": collect_s,
                "command": command_line(),
                "rows": rows,
            }
            with open(args.json_out, "w") as handle:
                json.dump(report, handle, indent=2)

    for keep in [float(k) for k in args.keeps.split(",")]:
        for entry in args.methods.split(","):
            method, *options = entry.split(":")
            start = time.perf_counter()
            ridge = _ridge(next((o[6:] for o in options if o.startswith("ridge=")), args.ridge))
            seq = "seq" in options
            result = squeeze_model(
                model,
                calib,
                keep=keep,
                method=method,
                ridge=ridge,
                # seq: statistics block by block on the model already squeezed before it (one pass each)
                # the held-back statistics choose the ridge, or are pooled where no ridge is chosen
                stats=None if seq else fit_stats,
                held_back_stats=None if seq else held_stats,
                block_group=1 if "seq" in options else None,
                energy_levels=(),
                progress=False,
            )
            seconds = time.perf_counter() - start
            refit_s, refit = None, None
            if "refit" in options:
                from prune.repair.refit import refit_model

                start = time.perf_counter()
                refit = refit_model(
                    model, result.model, calib, anatomy=anatomy, attention="attn" in options
                ).to_dict()
                refit_s = time.perf_counter() - start
            errors = [b.error for b in result.report.blocks]
            held = [b.held_back_error for b in result.report.blocks if b.held_back_error is not None]
            rows.append(
                {
                    "method": entry,
                    "refit_s": refit_s,
                    "refit": refit,
                    "keep": keep,
                    "kept": result.report.kept,
                    "squeeze_s": seconds,
                    "mean_output_error": sum(errors) / len(errors),
                    "mean_held_back_error": sum(held) / len(held) if held else None,
                    "ridges": sorted({b.ridge for b in result.report.blocks}),
                    **measure(result.model),
                }
            )
            del result
            print(_row(rows[-1], rows[0]), flush=True)
            save()
    if args.depth:
        rows += _depth_vs_width(args, model, calib, anatomy, measure)
        save()
    print(
        f"\n{args.model}: FFN statistics of {anatomy.num_blocks} blocks over {calib_tokens} tokens in {collect_s:.0f} s"
    )
    print(_table(rows))
    del torch


def _depth_vs_width(args, model, calib, anatomy, measure) -> list[dict]:
    """Cut to TARGET_A with the span strategy and squeeze to KEEP, against cutting to TARGET_B alone."""
    from prune.collect import collect_stats
    from prune.plan import plan_pruning
    from prune.surgery import remove_blocks
    from prune.width import squeeze_model

    target_a, keep, target_b = args.depth.split(":")
    scores = collect_stats(model, calib, anatomy=anatomy, metrics=("angular",), progress=False).scores()
    rows = []
    for target, width in ((target_a, float(keep)), (target_b, None)):
        plan = plan_pruning(scores, anatomy.num_blocks, target, "span")
        cut = remove_blocks(model, plan.drop, anatomy=anatomy)
        if width is not None:
            cut = squeeze_model(
                cut,
                calib,
                keep=width,
                ridge=_ridge(args.ridge),
                inplace=True,
                energy_levels=(),
                progress=False,
            ).model
        label = f"span {target}" + (f" + squeeze {width}" if width is not None else "")
        rows.append({"method": label, "keep": width or 1.0, **measure(cut)})
        print(_row(rows[-1], None), flush=True)
    return rows


def _ridge(text: str) -> float | str:
    return text if text == "auto" else float(text)


def _batch_perplexity(model, batches) -> float:
    """exp(mean next-token NLL) over the valid tokens of the calibration batches."""
    import math

    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(**batch, use_cache=False).logits[:, :-1].float()
            labels = batch["input_ids"][:, 1:]
            valid = batch["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits[valid], labels[valid], reduction="sum")
            total, count = total + float(nll), count + int(valid.sum())
            del logits
    return math.exp(total / max(count, 1))


COLUMNS = (
    "perplexity",
    "calib_perplexity",
    "kl_mean",
    "cosine_mean",
    "probe_accuracy",
    "params",
    "latency_ms",
)


def _row(row: dict, dense: dict | None) -> str:
    return " ".join(
        f"{k}={row[k]:.4g}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}"
        for k in ("method", "keep", *COLUMNS)
        if k in row
    )


def _table(rows: list[dict]) -> str:
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    extra = ["mean_output_error", "mean_held_back_error"]
    lines = [
        "| method | keep | " + " | ".join(columns + extra) + " |",
        "|---|---|" + "---|" * (len(columns) + len(extra)),
    ]
    for row in rows:
        cells = [_fmt(row.get(c)) for c in columns + extra]
        lines.append(f"| {row['method']} | {row['keep']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


if __name__ == "__main__":
    main()
