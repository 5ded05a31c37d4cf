"""Where the before/after evaluation of a pruning run spends its time, phase by phase.

The run is `make demo`'s: SmolLM2-135M-Instruct (offline GGUF, float32 on CPU) from 30 to 24 blocks
(blocks 13-18, the span the default strategy picks), evaluated as `prune.evaluation.compare_models`
does with the pipeline's defaults (64 windows of 256 tokens of the offline news corpus's held-out part,
batch 8): the paired perplexity/KL pass over both models, greedy agreement (each model), latency and
memory (each model). Each phase is timed on its own with the same functions `compare_models` calls.

Run:
    python benchmarks/eval_cost.py [--settings default|old] [--json out.json]

`--settings old` times the defaults before they were made proportionate (5 timed + 2 warm-up latency
passes at batch 8 x 256 per model; 8 prompts x 32 new tokens). Prints one line per phase and the total.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", choices=["default", "old"], default="default")
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
    if args.settings == "old":
        s = replace(s, warmup=2, repeats=5, num_prompts=8, new_tokens=32)
    texts = load_texts("default", purpose="eval")
    timings: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        print(f"{name:<34} {timings[name]:7.1f} s", flush=True)
        return value

    stream = timed("encode eval text", lambda: perplexity.encode_stream(tokenizer, texts))
    batches = perplexity.make_windows(
        stream, seq_len=s.seq_len, batch_size=s.batch_size, max_windows=s.num_samples
    )
    timed(
        "perplexity + KL (both, paired)", lambda: perplexity.score_tokens(pruned, batches, reference=original)
    )
    if s.generation:
        prompts = generation.prompts_from_stream(stream, num_prompts=s.num_prompts, prompt_len=s.prompt_len)
        for name, model in (("original", original), ("pruned", pruned)):
            timed(
                f"greedy agreement ({name})",
                lambda m=model: generation.greedy_continuations(m, prompts, new_tokens=s.new_tokens),
            )
    if s.speed:
        batch = s.batch_size
        for name, model in (("original", original), ("pruned", pruned)):
            timed(
                f"latency + memory ({name})",
                lambda m=model: speed.speed_metrics(
                    m, batch_size=batch, seq_len=s.seq_len, warmup=s.warmup, repeats=s.repeats
                ),
            )
    total = sum(timings.values())
    print(f"{'total':<34} {total:7.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"settings": args.settings, "timings_s": timings, "total_s": total}, fh, indent=2)


if __name__ == "__main__":
    main()
