"""Where the before/after evaluation of a pruning run spends its time, phase by phase.

The run is `make demo`'s: SmolLM2-135M-Instruct (offline GGUF, float32 on CPU) from 30 to 24 blocks
(blocks 13-18, the span the default strategy picks), evaluated as `prune.evaluation.compare_models`
does with the pipeline's defaults (64 windows of 256 tokens of the offline news corpus's held-out part,
batch 8): the paired perplexity/KL pass over both models, greedy agreement (each model), latency and
memory (each model). Each phase is timed on its own with the same functions `compare_models` calls.

Run:
    python benchmarks/eval_cost.py [--settings new|old] [--json out.json]

`--settings old` times the evaluation as it was before latency reused the perplexity passes (2 warm-up
+ 5 timed + 1 memory pass of 8 x 256 random ids per model); `new` as `compare_models` runs it now (the
perplexity passes timed as they run, 1 memory pass per model). Besides wall time (which depends on what
else the machine runs), each phase reports the tokens it pushed through the models' forward passes,
which does not.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", choices=["new", "old"], default="new")
    parser.add_argument("--json", metavar="FILE", help="Also write the timings as JSON.")
    args = parser.parse_args()

    import torch

    from prune.data import load_texts
    from prune.evaluation import EvalSettings, generation, perplexity, speed
    from prune.loading import load_model
    from prune.surgery import remove_blocks

    torch.manual_seed(0)
    loaded = load_model("smollm2-135m", device="cpu", progress=False)
    original, tokenizer = loaded.model, loaded.tokenizer
    pruned = remove_blocks(original, (13, 14, 15, 16, 17, 18), share_weights=True)
    s = EvalSettings()
    texts = load_texts("default", purpose="eval")
    tokens = {"n": 0}

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens["n"] += int(ids.numel()) if ids is not None else 0

    for model in (original, pruned):
        model.register_forward_pre_hook(count, with_kwargs=True)
    rows: dict[str, dict[str, float]] = {}

    def timed(name, fn):
        tokens["n"] = 0
        start = time.perf_counter()
        value = fn()
        rows[name] = {"seconds": time.perf_counter() - start, "forward_tokens": tokens["n"]}
        print(f"{name:<34} {rows[name]['seconds']:7.1f} s  {tokens['n']:>8} tokens", flush=True)
        return value

    stream = perplexity.encode_stream(tokenizer, texts)
    batches = perplexity.make_windows(
        stream, seq_len=s.seq_len, batch_size=s.batch_size, max_windows=s.num_samples
    )
    scores = timed(
        "perplexity + KL (both, paired)", lambda: perplexity.score_tokens(pruned, batches, reference=original)
    )
    prompts = generation.prompts_from_stream(stream, num_prompts=s.num_prompts, prompt_len=s.prompt_len)
    for name, model in (("original", original), ("pruned", pruned)):
        timed(
            f"greedy agreement ({name})",
            lambda m=model: generation.greedy_continuations(m, prompts, new_tokens=s.new_tokens),
        )
    passes = {"original": scores.reference_seconds, "pruned": scores.seconds}
    for name, model in (("original", original), ("pruned", pruned)):
        if args.settings == "old":
            timed(
                f"latency + memory ({name})",
                lambda m=model: speed.speed_metrics(
                    m, batch_size=s.batch_size, seq_len=s.seq_len, warmup=s.warmup, repeats=s.repeats
                ),
            )
        else:
            timed(
                f"memory ({name})",
                lambda m=model: speed.peak_memory_mb(m, batch_size=s.batch_size, seq_len=s.seq_len),
            )
            reused = speed.latency_from_passes(
                passes[name], batch_size=s.batch_size, seq_len=s.seq_len, warmup=s.warmup, repeats=s.repeats
            )
            print(
                f"  latency from the perplexity passes ({name}): {reused['latency_ms']:.0f} ms over {reused['timed_passes']} passes"
            )
    total = sum(r["seconds"] for r in rows.values())
    total_tokens = sum(r["forward_tokens"] for r in rows.values())
    print(f"{'total':<34} {total:7.1f} s  {total_tokens:>8} tokens")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {"settings": args.settings, "phases": rows, "total_s": total, "total_tokens": total_tokens},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
