"""Latency of the width (and depth) grid's shapes, timed interleaved so that the figures compare.

A forward pass's time depends on the shapes, not on the weights, so every shape is a model of the
model's own class built from a copy of its config with random weights (``torch.manual_seed(0)``): the
dense shape, each ``--keeps`` fraction (config ``intermediate_size`` = max(1, round(keep * d_ff)), the
count `prune.width.squeeze_model` keeps), each ``--depth`` layer count (a depth cut: every block has the
same shape, so which blocks are cut does not matter) and each explicit ``--shape`` such as
``layers=27,ffn=1336`` (depth + width). ``--pretrained-dense`` also times the loaded checkpoint itself, to
show that random weights time the same.

The shapes are timed INTERLEAVED, on one fixed batch of random ids from the upper half of the
vocabulary (as `prune.evaluation.speed` does): ``--warmup`` untimed rounds, then ``--rounds`` rounds,
each one forward pass per shape (no gradient, no KV cache), the order rotated by one shape per round so
that no shape always runs first. Per shape: the median time (`prune.evaluation.speed.latency_from_passes`)
and the median of its per-round ratios to the dense pass of the same round: a change of machine load
between rounds scales both, so the ratio keeps most of its meaning on a shared machine where the
milliseconds do not. Each pass's CPU time (`time.process_time`) is summarised the same way: it leaves out
the time the process waited for a core, not what sharing caches, memory bandwidth and a hyperthread's
sibling with other processes costs (on the 2-core machine of the README its per-round ratios spread
about as much as the wall ones). The 1-minute load average is recorded before, at each round and after.

    PYTHONPATH=. OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 python benchmarks/width_latency.py smollm2-135m \\
        --depth 24 --shape layers=27,ffn=1336 --rounds 9
    PYTHONPATH=. OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 python benchmarks/width_latency.py minilm-l6 \\
        --depth 5,4 --shape layers=5,ffn=1260 --pretrained-dense --rounds 21
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

DENSE = "dense"


@dataclass(frozen=True)
class Shape:
    """One model shape: a name, its block count and FFN width."""

    name: str
    layers: int
    ffn: int


def parse_shapes(keeps: str, depths: str, specs: list[str], *, layers: int, d_ff: int) -> list[Shape]:
    """The dense shape, then one per keep, per depth and per ``key=value,...`` spec (keys layers, ffn, keep).

    Shapes equal to an earlier one are left out.

    Example:
        >>> [s.name for s in parse_shapes("0.75", "24", ["layers=27,ffn=1336"], layers=30, d_ff=1536)]
        ['dense', 'keep 0.75', '24 layers', '27 layers, ffn 1336']
        >>> parse_shapes("0.75", "", [], layers=30, d_ff=1536)[1]
        Shape(name='keep 0.75', layers=30, ffn=1152)
    """
    shapes = [Shape(DENSE, layers, d_ff)]
    shapes += [Shape(f"keep {float(k):g}", layers, _kept(float(k), d_ff)) for k in _items(keeps)]
    shapes += [Shape(f"{int(n)} layers", int(n), d_ff) for n in _items(depths)]
    for spec in specs:
        fields = dict(item.split("=", 1) for item in _items(spec))
        unknown = set(fields) - {"layers", "ffn", "keep"}
        if unknown or ("ffn" in fields and "keep" in fields) or any(not v for v in fields.values()):
            raise SystemExit(
                f"--shape {spec!r}: give layers=N and one of ffn=N or keep=F, e.g. layers=27,ffn=1336"
            )
        n = int(fields.get("layers", layers))
        ffn = int(fields["ffn"]) if "ffn" in fields else _kept(float(fields.get("keep", 1.0)), d_ff)
        parts = [f"{n} layers"] if n != layers else []
        parts += [f"ffn {ffn}"] if ffn != d_ff else []
        shapes.append(Shape(", ".join(parts) or DENSE, n, ffn))
    unique: dict[tuple[int, int], Shape] = {}
    for shape in shapes:
        if min(shape.layers, shape.ffn) < 1:
            raise SystemExit(
                f"shape {shape.name!r} has {shape.layers} layers and FFN {shape.ffn}: both must be >= 1"
            )
        unique.setdefault((shape.layers, shape.ffn), shape)
    return list(unique.values())


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _kept(keep: float, size: int) -> int:
    from prune.width.budget import parse_ffn_keep

    return parse_ffn_keep(keep).count(size)


def config_keys(model: Any) -> tuple[str, str]:
    """The config keys of the block count and the FFN width (from the model's anatomy)."""
    from prune.anatomy import get_anatomy

    anatomy = get_anatomy(model)
    mlp = anatomy.require_mlp("timing squeezed shapes")
    if (
        anatomy.layer_config(model) is not model.config
        or not anatomy.layer_count_key
        or not mlp.intermediate_size_key
    ):
        raise SystemExit(
            f"{type(model).__name__}: the layer count and FFN width are not both top-level config keys"
        )
    return anatomy.layer_count_key, mlp.intermediate_size_key


def build(model: Any, shape: Shape, keys: tuple[str, str]) -> Any:
    """A model of `model`'s class and config with `shape`'s block count and FFN width, random weights."""
    import torch

    config = copy.deepcopy(model.config)
    setattr(config, keys[0], shape.layers)
    setattr(config, keys[1], shape.ffn)
    torch.manual_seed(0)
    built = type(model)(config).to(dtype=next(model.parameters()).dtype)
    return built.eval()


@dataclass
class Timings:
    """Per model, the seconds of its pass in each timed round: wall clock and the process's CPU time
    (which leaves out the time the process waited for a core, not the sharing of caches and bandwidth);
    and the 1-minute load average at the start of each round."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    loads: list[float]


def time_interleaved(
    models: dict[str, Any],
    batch: dict[str, Any],
    *,
    rounds: int,
    warmup: int,
    on_round: Callable[[Timings], None] | None = None,
) -> Timings:
    """Wall and CPU seconds of one forward pass per model per timed round (round-robin, order rotated each
    round), and the 1-minute load average at the start of each round; `on_round` gets them after each
    timed round."""
    import torch

    from prune.forward import forward_accepts

    names = list(models)
    timings = Timings({name: [] for name in names}, {name: [] for name in names}, [])
    with torch.no_grad():
        for r in range(warmup + rounds):
            if r >= warmup:
                timings.loads.append(os.getloadavg()[0])
            for name in names[r % len(names) :] + names[: r % len(names)]:
                model = models[name]
                cached = {"use_cache": False} if forward_accepts(model, "use_cache") else {}
                start, start_cpu = time.perf_counter(), time.process_time()
                model(**batch, **cached)
                if r >= warmup:
                    timings.wall[name].append(time.perf_counter() - start)
                    timings.cpu[name].append(time.process_time() - start_cpu)
            if r >= warmup and on_round is not None:
                on_round(timings)
    return timings


def summarize(times: dict[str, list[float]], *, batch_size: int, seq_len: int) -> dict[str, dict[str, Any]]:
    """Per model: median ms and tokens/s (`latency_from_passes`), and its per-round ratios to dense.

    Example:
        >>> s = summarize({"dense": [2.0, 4.0, 2.0], "keep 0.5": [1.0, 3.0, 1.2]}, batch_size=1, seq_len=4)
        >>> s["keep 0.5"]["latency_ms"], s["keep 0.5"]["ratio_to_dense"]
        (1200.0, 0.6)
    """
    from prune.evaluation.speed import latency_from_passes

    out = {}
    for name, seconds in times.items():
        passes = [((batch_size, seq_len), s) for s in seconds]
        speed = latency_from_passes(passes, batch_size=batch_size, seq_len=seq_len, warmup=0, repeats=1)
        ratios = [s / d for s, d in zip(seconds, times[DENSE], strict=True)]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out[name] = {
            **(speed or {}),
            "min_ms": min(seconds) * 1e3,
            "max_ms": max(seconds) * 1e3,
            "ratio_to_dense": statistics.median(ratios),
            "ratio_iqr": [quartiles[0], quartiles[2]],
            "ratio_of_medians": statistics.median(seconds) / statistics.median(times[DENSE]),
            "times_ms": [s * 1e3 for s in seconds],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="an alias or path for prune.loading.load_model")
    parser.add_argument("--keeps", default="0.9,0.75,0.6", help="FFN keep fractions")
    parser.add_argument("--depth", default="", help="block counts of depth-cut shapes, e.g. 24")
    parser.add_argument("--shape", action="append", default=[], help="extra shape, e.g. layers=27,ffn=1336")
    parser.add_argument("--pretrained-dense", action="store_true", help="also time the loaded checkpoint")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/width_latency_MODEL.json)"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0:
        raise SystemExit("--rounds must be >= 1 and --warmup >= 0")
    out = Path(args.out or f"benchmarks/results/width_latency_{Path(args.model).name}.json")
    from benchmarks._common import Results

    kept: dict[str, Results] = {}

    def save(data: dict[str, Any]) -> None:
        """Write the rounds so far, so a run that is stopped keeps what it timed."""
        if "file" not in kept:
            kept["file"] = Results(out, {k: v for k, v in data.items() if k != "rows"})
        kept["file"].data.update(data)
        kept["file"].save(load_after=os.getloadavg()[0])
        loads = data["load_per_round"]
        print(f"round {len(loads)}/{args.rounds} (load {loads[-1]:.2f}):", ", ".join(
            f"{r['name']} {r['times_ms'][-1]:.0f} ms (CPU {r['cpu_times_ms'][-1]:.0f})" for r in data["rows"]),
            flush=True)  # fmt: skip

    data = run(args, on_round=save)
    for row in data["rows"]:
        print(row_line(row))
    print(
        f"load average (1 min) {data['load_before']:.2f} before, {kept['file'].data['load_after']:.2f} after; wrote {out}"
    )


def run(
    args: argparse.Namespace, model: Any = None, on_round: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Build the shapes of `args` from `model` (loaded from ``args.model`` when None) and time them.

    Returns:
        The result: header fields and one row per shape; `on_round` gets it after every timed round.
    """
    import torch

    from prune.sizes import parameter_count

    load_before = os.getloadavg()[0]
    if model is None:
        from prune.loading import load_model

        model = load_model(args.model, device="cpu", dtype="float32", progress=False).model
    keys = config_keys(model)
    layers, d_ff = getattr(model.config, keys[0]), getattr(model.config, keys[1])
    shapes = parse_shapes(args.keeps, args.depth, args.shape, layers=layers, d_ff=d_ff)
    models = {shape.name: build(model, shape, keys) for shape in shapes}
    described = {shape.name: shape for shape in shapes}
    if args.pretrained_dense:
        models["dense (pretrained weights)"] = model.eval()
        described["dense (pretrained weights)"] = Shape("dense (pretrained weights)", layers, d_ff)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(
        vocab // 2, vocab, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(0)
    )
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    header = {
        "benchmark": "width_latency",
        "model": args.model,
        "model_class": type(model).__name__,
        "num_blocks": layers,
        "intermediate_size": d_ff,
        "protocol": {
            "summary": f"batch {args.batch_size} x {args.seq_len} random ids, {args.warmup} warm-up round(s) "
            f"and {args.rounds} timed rounds, the shapes interleaved",
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "rounds": args.rounds,
            "warmup_rounds": args.warmup,
            "order": "round-robin, rotated by one shape per round",
            "weights": "random (torch.manual_seed(0), the model class's own init): the time depends only on shapes",
        },
        "environment": {
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "mkl_num_threads": os.environ.get("MKL_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
            "nice": os.nice(0),
        },
        "load_before": load_before,
    }
    params = {name: parameter_count(m) for name, m in models.items()}

    def result(timings: Timings) -> dict[str, Any]:
        wall = summarize(timings.wall, batch_size=args.batch_size, seq_len=args.seq_len)
        cpu = summarize(timings.cpu, batch_size=args.batch_size, seq_len=args.seq_len)
        rows = [
            {"key": name, "name": name, "layers": described[name].layers,
             "intermediate_size": described[name].ffn, "parameters": params[name], **wall[name],
             **{f"cpu_{k}": cpu[name][k] for k in ("latency_ms", "ratio_to_dense", "ratio_iqr", "times_ms")}}
            for name in models
        ]  # fmt: skip
        return {
            **header,
            "rounds_done": len(timings.loads),
            "load_per_round": list(timings.loads),
            "rows": rows,
        }

    def report(timings: Timings) -> None:
        if on_round is not None:
            on_round(result(timings))

    return result(time_interleaved(models, batch, rounds=args.rounds, warmup=args.warmup, on_round=report))


def row_line(row: dict[str, Any]) -> str:
    """One shape's progress line."""
    return (
        f"{row['name']}: {row['layers']} layers, ffn {row['intermediate_size']}, {row['parameters']:,} params | "
        f"{row['latency_ms']:.1f} ms ({row['min_ms']:.1f}-{row['max_ms']:.1f}) | x{row['ratio_to_dense']:.3f} "
        f"of dense | {row['tokens_per_s']:.0f} tokens/s | CPU {row['cpu_latency_ms']:.1f} ms, "
        f"x{row['cpu_ratio_to_dense']:.3f}"
    )


def table(data: dict[str, Any]) -> str:
    """The README table of one result file: per shape, params, median ms, ratio to dense, tokens/s."""
    p, env = data["protocol"], data.get("environment", {})
    loads = data.get("load_per_round") or [float("nan")]
    lines = [
        f"{data.get('rounds_done', p['rounds'])} rounds after {p['warmup_rounds']} warm-up, each one forward pass of every shape on the same "
        f"{p['batch_size']} x {p['seq_len']} batch ({p['order']}); {p['weights']}. OMP_NUM_THREADS="
        f"{env.get('omp_num_threads')}, MKL_NUM_THREADS={env.get('mkl_num_threads')}, {env.get('torch_threads')} "
        f"torch thread(s), nice {env.get('nice')}. Load average (1 min) {data['load_before']:.2f} before, "
        f"{min(loads):.2f}-{max(loads):.2f} during, {data.get('load_after', float('nan')):.2f} after. Ratio: the "
        "median of the per-round ratios to the dense pass of the same round (quartiles in brackets). Wall: "
        "what a user waits; CPU: the process's CPU time for the same passes, which leaves out the time it "
        "waited for a core (not what sharing caches and memory bandwidth with other processes costs).",
        "",
        "| shape | layers | FFN | params | wall median ms | wall min-max ms | wall ratio to dense | tokens/s "
        "| CPU median ms | CPU ratio to dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        low, high = r["ratio_iqr"]
        lines.append(
            f"| {r['name']} | {r['layers']} | {r['intermediate_size']} | {r['parameters'] / 1e6:.2f}M | "
            f"{_ms(r['latency_ms'])} | {_ms(r['min_ms'])}-{_ms(r['max_ms'])} | {r['ratio_to_dense']:.3f} "
            f"[{low:.3f}, {high:.3f}] | {r['tokens_per_s']:.0f} | {_ms(r['cpu_latency_ms'])} | "
            f"{r['cpu_ratio_to_dense']:.3f} [{r['cpu_ratio_iqr'][0]:.3f}, {r['cpu_ratio_iqr'][1]:.3f}] |"
        )
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


if __name__ == "__main__":
    main()
