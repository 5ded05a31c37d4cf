"""Render the tables of benchmarks/README.md from the JSON the benchmarks wrote: never pasted by hand.

Each table lives between two marker comments in the README,

    <!-- render: depth_smollm2-135m_quick -->
    ...generated...
    <!-- /render -->

where the name is a file under benchmarks/results/ (without .json). The text between the markers is
replaced by the tables of that file, headed by its date, machine and the command that made it. A
marker whose file is missing is left as it is, with a warning.

    PYTHONPATH=. python benchmarks/render.py            # rewrite benchmarks/README.md in place
    PYTHONPATH=. python benchmarks/render.py --check    # exit 1 if the README is not up to date
    PYTHONPATH=. python benchmarks/render.py --print depth_smollm2-135m_quick
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARKER = re.compile(r"(<!-- render: *([\w.-]+) *-->\n)(.*?)(<!-- /render -->)", re.S)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", default=str(HERE / "README.md"))
    parser.add_argument("--check", action="store_true", help="fail if rendering would change the README")
    parser.add_argument("--print", dest="name", help="print the tables of one result file and stop")
    args = parser.parse_args()
    if args.name:
        print(render(args.name))
        return
    path = Path(args.readme)
    text = path.read_text()
    new = MARKER.sub(lambda m: m.group(1) + _block(m.group(2), m.group(3)) + m.group(4), text)
    if args.check:
        sys.exit(0 if new == text else 1)
    path.write_text(new)
    print(f"rendered {len(MARKER.findall(text))} tables into {path}")


def _block(name: str, old: str) -> str:
    if not (RESULTS / f"{name}.json").exists():
        print(f"warning: {RESULTS / name}.json is missing; its table is left as it was", file=sys.stderr)
        return old
    return render(name) + "\n"


def render(name: str) -> str:
    """The Markdown of one result file (its kind read from the file)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    data["_name"] = f"{name}.json"
    renderers = {
        "depth_quality": depth_tables,
        "width_quality": width_tables,
        "stage_costs": stage_tables,
        "peers": peer_tables,
        "scale": scale_tables,
        "width_latency": width_latency_tables,
        "ffn_memory": ffn_memory_tables,
    }
    body = renderers.get(data.get("benchmark"))
    if body is None:
        raise SystemExit(f"{name}.json: no renderer for benchmark {data.get('benchmark')!r}")
    return header(data) + "\n\n" + body(data)


def header(data: dict) -> str:
    if "machine" not in data:  # a projection: no machine, no measurement
        return f"*Rendered from `benchmarks/results/{data['_name']}` (projected from `{data.get('measured_from')}`).*"
    m = data["machine"]
    p = data.get("protocol", {})
    # every command whose rows the file holds: the resumed runs, then the files merged into it
    commands = "\n".join(
        dict.fromkeys([*(data.get("commands") or [data["command"]]), *data.get("merged_commands", [])])
    )
    threads = f"{m['torch_threads']} torch thread(s), OMP_NUM_THREADS={m.get('omp_num_threads')}"
    sizes = p.get("summary") or (  # a timing benchmark says its own sizes
        f"{p.get('calib_samples')} calibration windows ({p.get('calib_tokens')} tokens), {p.get('eval_samples')} "
        f"held-out windows of {p.get('seq_len')} tokens, disjoint texts"
        if p
        else "sizes with the table"
    )
    return (
        f"*Rendered from `benchmarks/results/{Path(data.get('_name', '')).name or '?'}`: measured {data['date']} on "
        f"{m['device']} ({m['cpu']}, {threads}; torch {m['torch']}); {sizes}; peak RSS {data.get('peak_rss_mib', 0):.0f} "
        f"MiB.*\n\n```\n{commands}\n```"
    )


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e5:  # a collapsed model: the order of magnitude is what matters
        return f"{value:.2g}"
    if abs(value) >= 1e3 and kind == "causal-lm":
        return f"{value:.0f}"
    return f"{value:.2f}" if kind == "causal-lm" else f"{value:.3f}"


def _quality_key(data: dict) -> str:
    return "perplexity" if data["kind"] == "causal-lm" else "cosine_mean"


def _cells(rows: list[dict], key: str, kind: str) -> str:
    values = [r[key] for r in rows if key in r]
    if not rows:
        return ""
    if not values:
        return "n/a"
    if len(values) == 1 and len(rows) == 1:
        return _fmt(values[0], kind)
    mean, spread = statistics.fmean(values), statistics.pstdev(values)
    note = f" ({len(rows) - len(values)} n/a)" if len(values) < len(rows) else ""
    # a few collapsed draws dominate a mean of perplexities: the median says what a typical draw gives
    return f"{_fmt(mean, kind)} ± {_fmt(spread, kind)} (median {_fmt(statistics.median(values), kind)}){note}"


def depth_tables(data: dict) -> str:
    """Quality per method x repair x depth, the blocks chosen, one-pass vs sequential, and the verdict."""
    kind, key = data["kind"], _quality_key(data)
    rows = [r for r in data["rows"] if r["method"] != "dense"]
    dense = next(r for r in data["rows"] if r["method"] == "dense")
    drops = sorted({r["drop"] for r in rows})
    repairs = list(dict.fromkeys(r["repair"] for r in rows))
    methods = sorted(
        dict.fromkeys(r["method"] for r in rows), key=lambda m: (m != "default", not m.startswith("default"))
    )  # ours first
    from benchmarks.depth_quality import METHODS

    described = {name: entry[3] for name, entry in METHODS.items()} | data.get("protocol", {}).get(
        "methods", {}
    )
    default = data.get("protocol", {}).get("default", {"strategy": "span", "repair": "linear"})
    better = "lower" if kind == "causal-lm" else "higher"
    total = data["num_blocks"]

    def pick(method, drop, repair, order="sequential"):
        order = "default" if method.startswith("default") else order  # the pipeline's own rows
        return [
            r
            for r in rows
            if (r["method"], r["drop"], r["repair"], r.get("order")) == (method, drop, repair, order)
        ]

    head = "| method | " + " | ".join(f"{total}->{total - d} {rep}" for d in drops for rep in repairs) + " |"
    lines = [
        f"Held-out {key} ({better} is better; dense {_fmt(dense[key], kind)}). Columns: blocks before -> after, "
        "repair (none: plain cut; scale: Prune&Comp; linear: ReplaceMe least squares, sequential over spans). "
        "Random: mean ± spread (population std) of the seeds, and their median; n/a: the repair cannot apply to "
        "that cut.",
        "",
        head,
        "|---|" + "---:|" * (len(drops) * len(repairs)),
    ]
    pipeline = [r for r in rows if r["method"] == "default"]
    for method in methods:
        # a row may carry its own label (rows kept from an earlier default, renamed)
        said = described.get(method) or next(
            (r["label"] for r in rows if r["method"] == method and "label" in r), ""
        )
        label = f"**{method}** ({said})" if said else f"**{method}**"
        if method == "default":
            label = f"**our default** ({_default_label(pipeline)})"
        elif method == default["strategy"] and not pipeline:
            label += f"; with {default['repair']}: **our default**"
        elif method == default["strategy"]:
            label += f"; with {default['repair']}: the default's plan and repair without the refit"
        cells = [_cells(pick(method, d, rep), key, kind) for d in drops for rep in repairs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "Blocks chosen (0-based):",
        "",
        "| method | " + " | ".join(f"drop {d}" for d in drops) + " |",
        "|---|" + "---|" * len(drops),
    ]
    for method in methods:
        cells = []
        for d in drops:
            chosen = {tuple(r["blocks"]) for r in rows if r["method"] == method and r["drop"] == d}
            cells.append(
                "; ".join(str(list(c)) for c in sorted(chosen))
                if len(chosen) <= 2
                else f"{len(chosen)} draws"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")

    one_pass = [r for r in rows if r.get("order") == "one-pass"]
    if one_pass:
        lines += [
            "",
            "Several cut spans, linear repair: sequential (each span fitted with the earlier ones cut and "
            "repaired) against one-pass (every span fitted on the original):",
            "",
            f"| method | blocks | spans | sequential {key} | one-pass {key} |",
            "|---|---|---:|---:|---:|",
        ]
        for r in one_pass:
            seq = pick(r["method"], r["drop"], "linear")
            spans = len(r.get("residuals", []))
            lines.append(
                f"| {r['method']} | {r['blocks']} | {spans} | {_cells(seq, key, kind)} | {_fmt(r.get(key), kind)} |"
            )

    lines += ["", verdict(data)]
    return "\n".join(lines)


def _default_label(rows: list[dict]) -> str:
    """What the default rows ran: `prune-llm MODEL --target N-layers`, with the options they recorded."""
    options = next((r.get("options") for r in rows if r.get("options")), {})
    said = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None)
    used = sorted({r["strategy"] for r in rows if r.get("strategy")})
    if options.get("strategy") == "auto" and used:  # what `auto` resolved to on this model
        said = said.replace("strategy auto", f"strategy auto (= {', '.join(used)})", 1)
    return f"`prune-llm MODEL --target N-layers`, the library's stages: {said}"


def verdict(data: dict) -> str:
    """Where our default does not beat a baseline, with the numbers (every method x repair, per depth)."""
    kind, key = data["kind"], _quality_key(data)
    default = data.get("protocol", {}).get("default", {"strategy": "span", "repair": "linear"})
    sign = 1 if kind == "causal-lm" else -1  # lower perplexity / higher fidelity wins
    rows = [r for r in data["rows"] if r["method"] != "dense" and key in r]
    out = []
    pipeline = any(r["method"] == "default" for r in rows)
    for drop in sorted({r["drop"] for r in rows}):
        here = [r for r in rows if r["drop"] == drop]
        if pipeline:  # the pipeline's own rows; without them, the strategy + repair of the defaults
            ours = [r for r in here if r["method"] == "default"]
        else:
            ours = [
                r
                for r in here
                if (r["method"], r["repair"], r.get("order"))
                == (default["strategy"], default["repair"], "sequential")
            ]
        if not ours:
            continue
        mine = ours[0][key]
        groups: dict[tuple[str, str, str], list[float]] = {}
        for r in here:
            if r is not ours[0]:
                groups.setdefault((r["method"], r["repair"], r.get("order", "sequential")), []).append(r[key])
        beaten = []
        for (method, repair, order), values in groups.items():
            value = statistics.fmean(values)
            if sign * (value - mine) < 0:
                beaten.append(
                    f"{method}+{repair}{'' if order == 'sequential' else ' ' + order} {_fmt(value, kind)}"
                )
        status = "no other row is better" if not beaten else "is beaten by " + ", ".join(beaten)
        what = "the pipeline" if pipeline else f"{default['strategy']} + {default['repair']}"
        out.append(f"- drop {drop}: our default ({what}) {_fmt(mine, kind)} {status}")
    return "Our default against every other row (method + repair; random as its mean):\n\n" + "\n".join(out)


def width_tables(data: dict) -> str:
    """Quality, parameters and latency per method x keep; then depth vs width vs both at equal parameters."""
    kind, key = data["kind"], _quality_key(data)
    rows = data["rows"]
    dense = next(r for r in rows if r["method"] == "dense")
    width = [r for r in rows if r.get("key", "").startswith("width|")]
    keeps = sorted({r["keep"] for r in width}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in width))
    from benchmarks.width_quality import METHODS as WIDTH_METHODS

    described = WIDTH_METHODS | data.get("protocol", {}).get("methods", {})
    better = "lower" if kind == "causal-lm" else "higher"
    lines = [
        f"Held-out {key} ({better} is better) at FFN keep fraction; dense {_fmt(dense[key], kind)}, "
        f"{dense['parameters'] / 1e6:.1f}M parameters, {dense.get('latency_ms', 0):.0f} ms per batch.",
        "",
        "| method | "
        + " | ".join(f"keep {k:g}" for k in keeps)
        + " | squeeze s (keep "
        + f"{keeps[-1]:g}) |",
        "|---|" + "---:|" * (len(keeps) + 1),
    ]
    for method in methods:
        by_keep = {r["keep"]: r for r in width if r["method"] == method}
        cells = [_fmt(by_keep[k].get(key), kind) if k in by_keep else "" for k in keeps]
        seconds = by_keep.get(keeps[-1], {}).get("squeeze_s")
        label = f"**{method}** ({described.get(method, '')})"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds if seconds is not None else ''} |")
    lines += _error_table(width, keeps, methods)
    lines += [
        "",
        "Parameters and latency (ms per batch, median of 5). The latencies were taken on the shared CPU, "
        "inside the long runs listed above, under loads that changed between them: compare them only within "
        "one run, not across keeps or with the dense row (the same shapes timed interleaved, so that they "
        "compare, are in the width-latency table, `width_latency.py`); the parameter counts are exact:",
        "",
        "| keep | params | latency ms (squeeze) | latency ms (dense) |",
        "|---:|---:|---:|---:|",
    ]
    for k in keeps:
        r = next((r for r in width if r["keep"] == k and r["method"] == "squeeze"), None) or next(
            r for r in width if r["keep"] == k
        )
        lines.append(
            f"| {k:g} | {r['parameters'] / 1e6:.2f}M | {r.get('latency_ms', 0):.0f} | {dense.get('latency_ms', 0):.0f} |"
        )
    pareto = [r for r in rows if r.get("key", "").startswith("pareto|")]
    if pareto:
        lines += [
            "",
            "Equal parameter counts: width alone (squeeze) against depth alone (span + linear repair) and "
            "both (half the cut, repaired, then squeezed to the same count):",
            "",
            f"| at keep | way | blocks cut | FFN kept | params | {key} | latency ms |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for keep in sorted({r["keep"] for r in pareto}, reverse=True):
            how = next((r["width_method"] for r in pareto if r.get("width_method")), "squeeze")
            alone = next((r for r in width if r["keep"] == keep and r["method"] == how), None)
            group = ([alone] if alone else []) + [r for r in pareto if r["keep"] == keep]
            for r in group:
                way = f"width ({how})" if r is alone else r["method"]
                way += f" ({r['width_method']})" if r.get("width_method") else ""
                blocks = r.get("blocks", [])
                kept = r.get("kept") or (dense.get("intermediate_size") or data.get("intermediate_size"))
                lines.append(
                    f"| {keep:g} | {way} | {blocks if blocks else '-'} | {kept} | {r['parameters'] / 1e6:.2f}M | "
                    f"{_fmt(r.get(key), kind)} | {r.get('latency_ms', 0):.0f} |"
                )
    return "\n".join(lines)


def _error_table(width: list[dict], keeps: list[float], methods: list[str]) -> list[str]:
    """Mean relative FFN output error per method x keep, on the calibration tokens / held back, and the
    ridges chosen; nothing for a result file measured before the held-back error was recorded."""
    if not any(r.get("mean_held_back_error") is not None for r in width):
        return []

    def error(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    def ridges(row: dict) -> str:
        chosen = row.get("ridges") or []
        counts = {r: chosen.count(r) for r in sorted(set(chosen))}
        return ", ".join(f"{r:g} x{n}" for r, n in counts.items()) if row.get("mean_held_back_error") else ""

    lines = [
        "",
        "FFN output error (relative, mean over blocks): calibration (the final fold, fitted on every "
        "calibration batch, on those same tokens) / held back (the fold fitted on 4 batches in 5 with the "
        "chosen ridge, on the 5th: an estimate for new text). `-`: no least-squares fold, so no ridge to "
        "choose and nothing held back. Ridges chosen, with the number of blocks:",
        "",
        "| method | " + " | ".join(f"keep {k:g}" for k in keeps) + " | ridges (keep " + f"{keeps[-1]:g}) |",
        "|---|" + "---:|" * len(keeps) + "---|",
    ]
    for method in methods:
        by_keep = {r["keep"]: r for r in width if r["method"] == method}
        cells = [
            f"{error(by_keep[k].get('mean_output_error'))} / {error(by_keep[k].get('mean_held_back_error'))}"
            if k in by_keep
            else ""
            for k in keeps
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {ridges(by_keep.get(keeps[-1], {}))} |")
    return lines


def stage_tables(data: dict) -> str:
    """Stage time and memory per token budget; surgery and save; speed of the pruned models."""
    rows = data["rows"]
    budgets = sorted({r["tokens"] for r in rows if r.get("tokens")})
    stages = list(dict.fromkeys(r["stage"] for r in rows if r.get("tokens")))
    theory = data.get("theory_bytes", {})
    lines = [
        "Wall seconds / peak RSS MiB above the process before the stage, per calibration-token budget "
        f"(d = {data.get('hidden_size')}, d_ff = {data.get('intermediate_size')}; the float64 sums are "
        f"{theory.get('repair_linear_per_span', 0) / 2**20:.1f} MiB per repaired span and "
        f"{theory.get('ffn_gram_per_block', 0) / 2**20:.1f} MiB per FFN Gram, whatever the tokens):",
        "",
        "| stage | " + " | ".join(f"{b} tokens" for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for stage in stages:
        by = {r["tokens"]: r for r in rows if r["stage"] == stage and r.get("tokens")}
        cells = [
            f"{by[b]['seconds']:.1f} s / {by[b]['peak_mib_above']:.0f} MiB" if b in by else ""
            for b in budgets
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    once = [r for r in rows if not r.get("tokens") and r.get("stage") != "speed"]
    if once:
        lines += ["", "| step | wall s | peak MiB above |", "|---|---:|---:|"]
        lines += [f"| {r['stage']} | {r['seconds']:.2f} | {r['peak_mib_above']:.0f} |" for r in once]
    speed = [r for r in rows if r.get("stage") == "speed"]
    if speed:
        lines += [
            "",
            "| model | params | batch | latency ms | tokens/s | peak MB |",
            "|---|---:|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['batch']} | {r['latency_ms']:.0f} | "
            f"{r['tokens_per_s']:.0f} | {r['peak_memory_mb']:.0f} |"
            for r in speed
        ]
    return "\n".join(lines)


def peer_tables(data: dict) -> str:
    """Each tool's blocks, wall time, peak memory and held-out quality, or why it has none."""
    kind, key = data["kind"], _quality_key(data)
    lines = [
        f"| tool | blocks cut | wall s | peak RSS MiB | held-out {key} | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        note = r.get("error", r.get("blocks_from", ""))
        note = note.replace("\n", " ").replace("|", "/")[-300:]
        seconds = r.get("wall_s", r.get("seconds"))
        lines.append(
            f"| {r['tool']} | {r.get('blocks', '-')} | {seconds if seconds is not None else '-'} | "
            f"{round(r['max_rss_mib']) if r.get('max_rss_mib') else '-'} | {_fmt(r.get(key), kind)} | {note} |"
        )
    return "\n".join(lines)


def width_latency_tables(data: dict) -> str:
    from benchmarks.width_latency import table

    return table(data)


def scale_tables(data: dict) -> str:
    from benchmarks.scale import table

    return table(data)


def ffn_memory_tables(data: dict) -> str:
    from benchmarks.ffn_memory import table

    return table(data)


if __name__ == "__main__":
    main()
