"""The pruning report: what was removed and why, the scores, and what it cost.

`build_report` gathers a JSON-able dict (written as ``prune_report.json``); `report_markdown` renders the
same dict for people (``prune_report.md``). The model card of a Hub push is built from the same dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prune.jsonable import dumps_json, to_jsonable
from prune.sizes import parameter_bytes, parameter_count  # noqa: F401 (the report's counters)

REPORT_JSON = "prune_report.json"
REPORT_MD = "prune_report.md"


def folder_bytes(folder: str | Path) -> int:
    """Total size of the weight files (``*.safetensors``, ``*.bin``) in a saved model folder."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"})


def build_report(
    *,
    model_info: dict[str, Any],
    plan: dict[str, Any],
    scores: dict[str, Any],
    evaluation: dict[str, Any] | None,
    data: dict[str, Any],
    command: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report dict (JSON-able: tensors become lists, NaN/inf become null).

    Args:
        model_info: spec, hub_id, kind, family, block counts, parameter counts and sizes before/after.
        plan: `Plan.to_dict()` of the applied plan.
        scores: per-metric scores from the collector (tensors are fine).
        evaluation: `Comparison.to_dict()` (before, after, protocol), or None when evaluation was skipped.
        data: what calibration/evaluation data was used (spec, samples, tokens).
        command: the command line that reproduces the run, when known.
        extra: anything else to keep (e.g. MSRS).
    """
    from prune import __version__

    report = {
        "prune_llm_version": __version__,
        "model": model_info,
        "plan": plan,
        "scores": scores,
        "evaluation": evaluation,
        "data": data,
        "command": command,
    }
    if extra:
        report.update(extra)
    return to_jsonable(report)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def report_markdown(report: dict[str, Any]) -> str:
    """Render a report dict as Markdown: the decision, the scores behind it, and before/after numbers."""
    model, plan = report["model"], report["plan"]
    lines = [
        f"# Pruning report: {model.get('spec')}",
        "",
        f"- Model: `{model.get('spec')}` ({model.get('family')}, {model.get('kind')})",
        f"- Blocks: {model.get('num_blocks_before')} -> {model.get('num_blocks_after')} "
        f"(target `{plan.get('target')}`, strategy `{plan.get('strategy')}`"
        + (f", metric `{plan['metric']}`" if plan.get("metric") else "")
        + ")",
        f"- Removed blocks: {', '.join(str(i) for i in plan.get('drop', [])) or 'none'}",
        f"- Why: {plan.get('reason')}",
    ]
    if report.get("squeeze"):
        squeeze = report["squeeze"]
        lines += [
            f"- FFN width: {squeeze['size_before']} -> {squeeze['kept']} neurons in every block ({squeeze['method']})"
        ]
    if report.get("command"):
        lines += [f"- Reproduce: `{report['command']}`"]
    lines += repair_lines(report.get("repair"))
    lines += ["", "## Size", ""]
    lines += _table(
        ["", "before", "after"],
        [
            ["blocks", model.get("num_blocks_before"), model.get("num_blocks_after")],
            ["parameters", model.get("params_before"), model.get("params_after")],
            ["weights (bytes)", model.get("size_bytes_before"), model.get("size_bytes_after")],
        ],
    )
    evaluation = report.get("evaluation")
    if evaluation:
        before, after = evaluation.get("before", {}), evaluation.get("after", {})
        keys = [k for k in before if k in after]
        rows = []
        for key in keys:
            b, a = before[key], after[key]
            delta = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
            rows.append([key, b, a, delta])
        lines += ["", "## Before / after", ""]
        lines += _table(["metric", "before", "after", "delta"], rows)
        protocol = evaluation.get("protocol")
        if protocol:
            # One bullet per part: the protocol is long (each part states its own method), and one
            # paragraph of it is unreadable.
            lines += ["", "Protocol:", "", *(f"- **{k}**: {v}" for k, v in protocol.items())]
    if report.get("squeeze"):
        lines += ["", *squeeze_section(report["squeeze"])]
    if report.get("budget"):
        from prune.budget.report import budget_section

        lines += ["", *budget_section(report["budget"])]
    scores = report.get("scores") or {}
    per_block = {k: v for k, v in scores.items() if isinstance(v, list) and v and not isinstance(v[0], list)}
    if per_block:
        num_blocks = model.get("num_blocks_before") or max(len(v) for v in per_block.values())
        removed = set(plan.get("drop", []))
        names = sorted(per_block)
        rows = [
            [f"{i}{' (removed)' if i in removed else ''}"]
            + [per_block[n][i] if i < len(per_block[n]) else None for n in names]
            for i in range(num_blocks)
        ]
        lines += ["", "## Per-block scores", ""]
        lines += _table(["block", *names], rows)
    if report.get("msrs"):
        msrs = report["msrs"]
        lines += ["", f"MSRS: {_fmt(msrs.get('raw'))} (normalised {_fmt(msrs.get('normalised'))})"]
    data = report.get("data")
    if data:
        lines += ["", "## Data", ""] + [f"- {k}: {v}" for k, v in data.items()]
    lines += ["", f"_Generated by prune-llm {report.get('prune_llm_version')}._", ""]
    return "\n".join(lines)


def repair_lines(repair: dict[str, Any] | None) -> list[str]:
    """Markdown lines saying which repair was applied to each cut span, with the fit's relative error.

    ``method`` is what was applied and ``method_requested`` what the run asked for (a report written
    before that field has ``method`` only, and a guard that kept the plain cut says the same).

    Example:
        >>> repair_lines({"method": "none", "spans": []})
        ['', '## Repair', '', 'None: the plain cut (no map was fitted).']
    """
    if not repair:
        return []
    lines = ["", "## Repair", ""]
    requested = repair.get("method_requested") or repair.get("method")
    kept_plain = (repair.get("guard") or {}).get("kept") == "plain"
    if repair.get("method") == "none" and not kept_plain:
        if requested in (None, "none"):
            lines.append("None: the plain cut (no map was fitted).")
        else:
            lines.append(
                f"None: the plain cut; `{requested}` was asked for but not applied (see the warnings)."
            )
        lines += [f"- Warning: {w}" for w in repair.get("warnings") or []]
        return lines
    how = f"order `{repair.get('order')}`, objective `{repair.get('objective')}`, {_fmt(repair.get('seconds'))} s"
    if kept_plain:
        lines.append(
            f"None applied: the model is the plain cut. Method `{requested}` was fitted (training-free; "
            f"{how}), and the guard below kept the plain cut."
        )
    else:
        lines.append(f"Method `{requested}` (training-free, folded into the kept weights; {how}).")
    lines[-1] += (
        " Relative error = squared error of the hidden state after the cut / its squared norm, on the "
        "calibration tokens."
    )
    lines.append("")
    rows = [
        [
            f"{span['first']}-{span['last']}",
            span.get("kept_block"),
            span.get("skipped") or span.get("map"),
            span.get("residual_before"),
            span.get("residual_after"),
            span.get("ridge"),
        ]
        for span in repair.get("spans") or []
    ]
    lines += _table(["cut blocks", "map in block", "map", "error plain cut", "error repaired", "ridge"], rows)
    lines += [f"- Warning: {w}" for w in repair.get("warnings") or []]
    if repair.get("refit"):
        from prune.repair.refit_report import refit_lines

        lines += ["", *refit_lines(repair["refit"])]
    if repair.get("guard"):
        lines += ["", *guard_lines(repair["guard"])]
    return lines


def guard_lines(guard: dict[str, Any]) -> list[str]:
    """The repair guard's verdict: both held-back figures and which model was kept.

    Example:
        >>> guard_lines({"loss_plain": 2.0, "loss_repaired": 2.5, "measure": "next-token loss",
        ...              "kept": "plain", "sequences": 8, "tokens": 2048, "seconds": 1.0})[0]
        '**Guard: the plain cut was kept.** The repair made the cut worse on held-back calibration data.'
    """
    plain, repaired = guard["loss_plain"], guard["loss_repaired"]
    figures = f"{guard['measure']} {_fmt(plain)} for the plain cut, {_fmt(repaired)} repaired"
    if "perplexity_plain" in guard:
        figures += f" (perplexity {_fmt(guard['perplexity_plain'])} plain, {_fmt(guard['perplexity_repaired'])} repaired)"
    where = (
        f"on {guard['sequences']} held-back calibration sequences ({guard['tokens']:,} tokens, fitted on by "
        f"nothing; {_fmt(guard['seconds'])} s)"
    )
    if guard.get("kept") == "plain":
        return [
            "**Guard: the plain cut was kept.** The repair made the cut worse on held-back calibration data.",
            f"- {figures}, {where}; the maps and refit above were fitted but not applied "
            "(`repair_guard: false` keeps them).",
        ]
    return [f"Guard: the repair was kept: {figures}, {where}."]


def squeeze_section(squeeze: dict[str, Any], *, heading: str = "##") -> list[str]:
    """Markdown lines for a `SqueezeReport` dict: the method, and per block the kept neurons and the
    relative FFN output error on calibration data with and without the compensation (and on the
    held-back batches, with the chosen ridge, when the ridge was chosen by them)."""
    held = any(b.get("held_back_error") is not None for b in squeeze["blocks"])
    lines = [
        f"{heading} FFN squeeze",
        "",
        f"- Method: `{squeeze['method']}`: {squeeze['description']}",
        f"- Kept: {squeeze['kept']} of {squeeze['size_before']} neurons in every block (keep {squeeze['keep']}; "
        "stock configs hold one intermediate size)",
        f"- Fitted on {squeeze['num_tokens']:,} calibration tokens in {squeeze['passes']} pass(es), "
        f"{_ridge_text(squeeze)}, {squeeze['gram_bytes_per_block'] / 1e6:.1f} MB of statistics per block, "
        f"{squeeze['seconds']:.1f} s",
        "",
        "Relative output error of each FFN, E||W a - W' a_K||^2 / E||W a||^2 on calibration data, with the "
        "fold and with the same neurons merely removed"
        + (
            "; the same on the held-back batches for the fold fitted without them (what to expect on new text)"
            if held
            else ""
        )
        + "; neurons needed to keep a fraction of the activation energy (pivoted Cholesky):",
        "",
    ]
    levels = list(squeeze["blocks"][0].get("neurons_for_energy") or {}) if squeeze["blocks"] else []
    rows = [
        [
            b["block"],
            b["kept"],
            b["error"],
            b["error_uncompensated"],
            *((b.get("held_back_error"), b.get("ridge")) if held else ()),
            *(b["neurons_for_energy"][k] for k in levels),
        ]
        for b in squeeze["blocks"]
    ]
    extra = ["error held back", "ridge"] if held else []
    lines += _table(
        ["block", "kept", "error", "error without fold", *extra, *(f"neurons for {k}" for k in levels)], rows
    )
    if squeeze.get("refit"):
        from prune.repair.refit_report import refit_lines

        lines += ["", *refit_lines(squeeze["refit"])]
    return lines


def _ridge_text(squeeze: dict[str, Any]) -> str:
    """How the squeeze's ridge was set, for the report."""
    ridge = squeeze["ridge"]
    if ridge != "auto":
        return f"ridge {ridge:g}"
    chosen = sorted({b["ridge"] for b in squeeze["blocks"] if b.get("ridge") is not None})
    if squeeze.get("held_back_tokens"):
        span = f"{chosen[0]:g}" if len(chosen) == 1 else f"{chosen[0]:g} to {chosen[-1]:g}"
        return (
            f"ridge chosen per block on {squeeze['held_back_tokens']:,} of those tokens held back from a first "
            f"fit ({span})"
        )
    if not chosen:
        return "ridge auto"
    note = squeeze.get("ridge_note")
    return f"ridge {chosen[0]:g}" + (f" ({note})" if note else "")


def write_report(report: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write ``prune_report.json`` and ``prune_report.md`` into `folder`; returns both paths."""
    folder = Path(folder)
    json_path, md_path = folder / REPORT_JSON, folder / REPORT_MD
    json_path.write_text(dumps_json(report) + "\n")
    md_path.write_text(report_markdown(report))
    return json_path, md_path
