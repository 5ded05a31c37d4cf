"""Peer tools side by side: short-transformers and mergekit, each in its own venv, on the same model, data and cut.

Each peer is installed from PyPI into its own virtual environment under
``~/.cache/prune-llm/peer-venvs/NAME`` (torch pinned to this machine's CPU build), and runs there as a
subprocess on the same checkpoint (the model saved once as safetensors), the same calibration texts and
the same number of blocks removed; its wall time and peak memory (the child's max RSS) are recorded,
its output checkpoint is evaluated by our harness on the same held-out text as our own runs:

- short-transformers (angular distance of the last token over every span, Gromov et al. / PruneMe):
  chooses its own blocks, then cuts them (`ShortTransformer.remove_layers`);
- mergekit (passthrough merge with layer slices): it has no selection of its own, so it is given our
  plan's blocks; it measures what a YAML-config cut costs and that it gives the same model;
- ours: `prune.collect_stats` + `prune.plan_pruning` (span, and span on last-token angles) + the cut,
  and our default (span + linear repair).

A peer that does not install or run is recorded with the exact error, never dropped silently.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/peers.py smollm2-135m --drop 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CACHE = Path(os.environ.get("PRUNE_LLM_CACHE", Path.home() / ".cache" / "prune-llm"))
PEERS = {
    # short-transformers declares no transformers dependency; its layer hook reads a tuple output (result[0]),
    # which decoder layers stopped returning in later 4.x releases (4.57 fails), so the 4.46 it was written against
    "short-transformers": ["short-transformers==1.0.0", "transformers==4.46.3"],
    "mergekit": ["mergekit==0.1.5"],
}
TORCH = "torch==2.13.0"

SHORT_DRIVER = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from transformers import AutoTokenizer
    from short_transformers import ShortTransformer
    from short_transformers.utils import get_best_pruning_start
    src, out, texts_path, n, max_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    start = time.perf_counter()
    model = ShortTransformer.from_pretrained(src, torch_dtype=torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except ValueError:  # a tokenizer_config written by transformers 5 names a class 4.x lacks
        from transformers import PreTrainedTokenizerFast
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{src}/tokenizer.json")
    texts = json.load(open(texts_path))
    dataset = [{"content": text} for text in texts]  # what analyse_layers iterates (batch size 1)
    result = model.analyse_layers(dataset=dataset, tokenizer=tokenizer, key="content", limit=len(texts),
                                  max_length=max_length)
    first = int(get_best_pruning_start(result, block_size=n))
    model.prune(start_layer=first, block_size=n)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(json.dumps({"blocks": list(range(first, first + n)), "seconds": time.perf_counter() - start,
                      "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--drop", type=int, default=6)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows already measured (not the errors)"
    )
    args = parser.parse_args()
    out = Path(args.out or f"benchmarks/results/peers_{args.model}.json")

    from benchmarks._common import Results, load_protocol
    from prune.evaluation import evaluate_model
    from prune.loading import load_model
    from prune.output import save_model

    setup = load_protocol(
        args.model, calib_samples=args.calib_samples, eval_samples=args.eval_samples, seq_len=args.seq_len
    )
    model, tokenizer, kind, anatomy = setup.model, setup.tokenizer, setup.kind, setup.anatomy
    calib, eval_texts, protocol, settings = setup.calib, setup.eval_texts, setup.protocol, setup.settings
    work = CACHE / "peer-work" / args.model
    source = work / "original"
    if not (source / "config.json").exists():
        save_model(model, tokenizer, source)
    # the same calibration tokens for the peers, as text (one window per text)
    texts = [
        tokenizer.decode(row[mask.bool()])
        for b in calib
        for row, mask in zip(b["input_ids"], b["attention_mask"], strict=True)
    ]
    texts_path = work / "calib.json"
    texts_path.write_text(json.dumps(texts))
    protocol.update(eval_samples=args.eval_samples, drop=args.drop)
    results = Results(
        out,
        {"benchmark": "peers", "model": args.model, "kind": kind, "protocol": protocol},
        resume=args.resume,
    )
    results.data["rows"] = [row for row in results.data["rows"] if "error" not in row]
    results._done = {row["key"] for row in results.data["rows"]}

    def evaluate(candidate) -> dict:
        return evaluate_model(candidate, tokenizer, kind=kind, texts=eval_texts, settings=settings)

    if not results.done("dense"):
        results.add("dense", {"tool": "dense", **evaluate(model)})
    if not any(row["key"].startswith("ours|") for row in results.data["rows"]):
        for row in _ours(model, anatomy, calib, args.drop, evaluate):
            results.add(f"ours|{row['tool']}", row)
            print(row, flush=True)
    span_blocks = next(row["blocks"] for row in results.data["rows"] if row["key"].startswith("ours|"))
    for peer in args.peers.split(","):
        if results.done(f"peer|{peer}"):
            continue
        row = {"tool": peer}
        try:
            python = _venv(peer)
            if peer == "short-transformers":
                target = work / "short-transformers"
                run = _run(python, ["-c", SHORT_DRIVER, str(source), str(target), str(texts_path), str(args.drop),
                                    str(args.seq_len)])  # fmt: skip
            else:
                target = work / "mergekit"
                run = _mergekit(python, source, target, span_blocks, anatomy.num_blocks)
            row.update(run)
            pruned = load_model(str(target), device="cpu", dtype="float32", progress=False).model
            row.update(evaluate(pruned))
        except Exception as err:  # recorded with its reason: the table says why a peer has no number
            row["error"] = f"{type(err).__name__}: {err}"[-2000:]
        results.add(f"peer|{peer}", row)
        print(row, flush=True)
    results.save()
    print(f"wrote {out}")


def _ours(model, anatomy, calib, drop: int, evaluate) -> list[dict]:
    import resource

    from prune.collect import collect_stats
    from prune.plan import plan_pruning
    from prune.repair import repair_cut
    from prune.surgery import remove_blocks

    rows = []
    for tool, mode, repair in (
        ("ours span (angular, all tokens)", "tokens", "none"),
        ("ours span (angular, last token)", "last", "none"),
        ("ours default (span + linear repair)", "tokens", "linear"),
    ):
        start = time.perf_counter()
        stats = collect_stats(
            model, calib, anatomy=anatomy, metrics=("angular",), token_mode=mode, progress=False
        )
        plan = plan_pruning(stats.scores(), anatomy.num_blocks, f"drop-{drop}", "span")
        pruned = remove_blocks(model, plan.drop, anatomy=anatomy, share_weights=True)
        repair_cut(model, pruned, plan.drop, calib, method=repair, anatomy=anatomy, progress=False)
        seconds = time.perf_counter() - start
        rows.append(
            {"tool": tool, "blocks": list(plan.drop), "seconds": round(seconds, 2),
             "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **evaluate(pruned)}
        )  # fmt: skip
    return rows


def _venv(peer: str) -> Path:
    """The peer's venv, created and installed on first use (a failure raises with pip's own message)."""
    root = CACHE / "peer-venvs" / peer
    python = root / "bin" / "python"
    marker = root / ".installed"
    if marker.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True)
    for packages in ([TORCH], PEERS[peer]):
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(packages)} failed: {done.stderr.strip()[-1500:]}")
    marker.write_text("ok")
    return python


def _run(python: Path, argv: list[str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [str(python), *argv], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-1500:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": round(wall, 2)}


def _mergekit(python: Path, source: Path, target: Path, drop: list[int], num_blocks: int) -> dict:
    """A passthrough merge that keeps every block but `drop` (slices of the kept runs)."""
    import shutil

    keep = [i for i in range(num_blocks) if i not in set(drop)]
    runs, start = [], keep[0]
    for prev, cur in zip(keep, [*keep[1:], None], strict=True):
        if cur != prev + 1:
            runs.append((start, prev + 1))
            start = cur
    slices = "\n".join(
        f"  - sources:\n      - model: {source}\n        layer_range: [{a}, {b}]" for a, b in runs
    )
    config = target.parent / "mergekit.yaml"
    config.write_text(f"slices:\n{slices}\nmerge_method: passthrough\ndtype: float32\n")
    if target.exists():
        shutil.rmtree(target)
    script = (
        "import json, resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        f"subprocess.run([{str(python.parent / 'mergekit-yaml')!r}, {str(config)!r}, {str(target)!r}, '--copy-tokenizer'],"
        " check=True)\n"
        "print(json.dumps({'seconds': time.perf_counter() - start, "
        "'max_rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    return {**_run(python, ["-c", script]), "blocks": drop, "blocks_from": "ours (mergekit does not select)"}


if __name__ == "__main__":
    main()
