"""Model cards for pruned models: what was removed and why, before/after numbers, how to reproduce.

The card is built from the pruning report (``prune_report.json``, written by the pipeline) and is a
`huggingface_hub.ModelCard`: YAML metadata (base model, licence, tags, library, pipeline tag) and a
Markdown body. Every key of the report but ``model.num_blocks_*`` and ``plan.drop`` is optional.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from prune.vocab import ModelKind

__all__ = ["PIPELINE_TAGS", "build_model_card", "read_license"]

BASE_TAGS = ("prune-llm", "layer-pruning", "pruned")
# model kind (prune.loading.ModelKind) -> Hub pipeline tag of the saved checkpoint
PIPELINE_TAGS = {ModelKind.CAUSAL_LM: "text-generation", ModelKind.ENCODER: "feature-extraction"}
_AUTO_CLASS = {ModelKind.CAUSAL_LM: "AutoModelForCausalLM"}


def read_license(source: str | Path | None) -> str | None:
    """The licence of a model from its local model card (README.md with YAML front matter).

    Args:
        source: the model's folder (or its README.md), or a Hub id whose card is in the local Hub cache;
            anything else (None, an id never downloaded) gives None.

    Returns:
        The card's ``license`` (``license_name`` when the licence is ``other``), or None when unknown.

    Example:
        >>> read_license(None) is None
        True
    """
    if source is None:
        return None
    path = Path(source)
    readme = path / "README.md" if path.is_dir() else path
    if not readme.is_file():
        # a Hub id: use the card from the local Hub cache when the model was downloaded (no network)
        if path.exists() or str(source).count("/") != 1:
            return None
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(str(source), "README.md")
        except Exception:  # an id the cache cannot hold is just a model without a known licence
            return None
        if not isinstance(cached, str):
            return None
        readme = Path(cached)
    try:
        data = ModelCard.load(readme, ignore_metadata_errors=True).data
    except Exception:  # a malformed card must not stop a pruning run: the licence is just unknown
        return None
    license_ = getattr(data, "license", None)
    if license_ == "other" and getattr(data, "license_name", None):
        return str(data.license_name)
    if isinstance(license_, list):  # some cards list several
        license_ = license_[0] if license_ else None
    return str(license_) if license_ else None


def build_model_card(
    report: Mapping[str, Any],
    *,
    base_model: str | None,
    license: str | None,
    command: str,
    repo_id: str | None,
) -> ModelCard:
    """A model card for a pruned model.

    Args:
        report: the pruning report (``prune_report.json``): ``model``, ``plan``, ``scores``,
            ``evaluation``, ``prune_llm_version``; missing optional parts are left out of the card.
        base_model: the original model's Hub id (metadata ``base_model``), None when it has none.
        license: the original model's licence, carried over (None: unknown, left out).
        command: the exact command that reproduces the model.
        repo_id: the Hub repo the card is for (used in the title and the usage snippet).

    Example:
        >>> card = build_model_card(
        ...     {"model": {"num_blocks_before": 6, "num_blocks_after": 4, "kind": "encoder"},
        ...      "plan": {"strategy": "span", "drop": [3, 4], "reason": "lowest angular distance"}},
        ...     base_model="sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0",
        ...     command="prune-llm minilm-l6 --target 4-layers", repo_id=None)
        >>> card.data.base_model, "prune-llm" in card.data.tags
        ('sentence-transformers/all-MiniLM-L6-v2', True)
    """
    model = dict(report.get("model") or {})
    plan = dict(report.get("plan") or {})
    kind = model.get("kind")
    tags = list(dict.fromkeys([*BASE_TAGS, *([plan["strategy"]] if plan.get("strategy") else [])]))
    if report.get("squeeze"):
        tags.append("ffn-squeeze")
    data = ModelCardData(
        base_model=base_model,
        license=license,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS.get(kind or ""),
        tags=tags,
    )
    body = "\n\n".join(
        part
        for part in (
            _intro(model, plan, base_model, repo_id, report.get("repair"), report.get("squeeze")),
            _what_was_done(plan, report.get("data") or {}),
            _repair(report.get("repair")),
            _squeeze(report.get("squeeze")),
            _scores_table(report.get("scores") or {}, plan),
            _evaluation(report.get("evaluation") or {}),
            _size(model),
            _usage(kind, repo_id),
            _reproduce(command, report.get("prune_llm_version"), report.get("recipe")),
        )
        if part
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _intro(
    model: dict,
    plan: dict,
    base_model: str | None,
    repo_id: str | None,
    repair: Any = None,
    squeeze: Mapping[str, Any] | None = None,
) -> str:
    name = repo_id.split("/")[-1] if repo_id else f"{model.get('spec') or base_model or 'model'} (pruned)"
    origin = (
        f"[{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else f"`{model.get('spec', '?')}`"
    )
    before, after = model.get("num_blocks_before"), model.get("num_blocks_after")
    removed = len(plan.get("drop") or [])
    counts = f" with {removed} of its {before} transformer blocks removed ({after} kept)" if before else ""
    if squeeze:
        squeezed = f" every FFN squeezed from {squeeze['size_before']} to {squeeze['kept']} neurons"
        counts = (counts + " and" + squeezed) if removed else " with" + squeezed
    repaired = [s for s in (repair or {}).get("spans") or [] if not s.get("skipped")]
    if (repair or {}).get("method") == "none" or ((repair or {}).get("guard") or {}).get("kept") == "plain":
        repaired = []  # fitted, but not applied (a report from before `method_requested` says so by its guard)
    weights = "the kept blocks are the original weights, renumbered"
    if repaired:
        weights += (
            f", with a map fitted on calibration text folded into their weights at {len(repaired)} cut(s) "
            f"(`{repair.get('method')}` repair, no training, no new parameters)"
        )
    if squeeze:
        weights += f"; FFN neurons chosen by `{squeeze['method']}` ({squeeze['description']})"
    return (
        f"# {name}\n\n"
        f"This model is {origin}{counts} by prune-llm (pruning, no training). It is a stock Hugging Face "
        f"checkpoint: {weights}, and it loads without `trust_remote_code`."
    )


def _what_was_done(plan: dict, data: Mapping[str, Any]) -> str:
    if not plan:
        return ""
    lines = ["## What was done", ""]
    method = f"`{plan.get('strategy', '?')}`"
    if plan.get("metric"):
        method += f", scored by `{plan['metric']}`"
    lines.append(f"- Strategy: {method}")
    if plan.get("target"):
        lines.append(f"- Target: `{plan['target']}`")
    lines.append(f"- Removed blocks (0-based): {_ints(plan.get('drop'))}")
    if plan.get("keep") is not None:
        lines.append(f"- Kept blocks: {_ints(plan.get('keep'))}")
    if plan.get("reason"):
        lines.append(f"- Why these blocks: {plan['reason']}")
    if data:
        lines.append(
            "- Data: " + ", ".join(f"{k} `{v}`" for k, v in data.items() if not isinstance(v, (dict, list)))
        )
    details = plan.get("details") or {}
    shown = {k: json.dumps(v, default=str) for k, v in details.items()}
    # long entries (full matrices) stay in prune_report.json
    shown = {k: v for k, v in shown.items() if len(v) <= 400}
    if shown:
        lines += ["", "Scores behind the choice (all of them are in `prune_report.json`):", ""]
        lines += [f"- `{k}`: `{v}`" for k, v in shown.items()]
    return "\n".join(lines)


def _repair(repair: Mapping[str, Any] | None) -> str:
    """Which repair was folded into the weights, per cut span, with the fit's relative error."""
    from prune.report import repair_lines

    lines = repair_lines(dict(repair) if repair else None)
    return "\n".join(lines[1:]).replace("## Repair", "### Repair", 1) if lines else ""


def _squeeze(squeeze: Mapping[str, Any] | None) -> str:
    if not squeeze:
        return ""
    from prune.report import squeeze_section

    return "\n".join(squeeze_section(dict(squeeze), heading="###"))


def _scores_table(scores: Mapping[str, Any], plan: dict) -> str:
    """One row per block with every per-block score (matrices such as `angular` stay in the report)."""
    per_block = {k: v for k, v in scores.items() if _is_number_list(v)}
    if not per_block:
        return ""
    num_blocks = max(len(v) for v in per_block.values())
    drop = set(plan.get("drop") or [])
    names = sorted(per_block)
    lines = [
        "### Per-block scores",
        "",
        "| Block | " + " | ".join(f"`{n}`" for n in names) + " | |",
        "|---:|" + "---:|" * len(names) + "---|",
    ]
    for block in range(num_blocks):
        cells = [_fmt(per_block[n][block]) if block < len(per_block[n]) else "" for n in names]
        lines.append(
            f"| {block} | " + " | ".join(cells) + f" | {'**removed**' if block in drop else 'kept'} |"
        )
    return "\n".join(lines)


def _evaluation(evaluation: Mapping[str, Any]) -> str:
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    keys = [k for k in before if _is_number(before[k]) and _is_number(after.get(k))]
    keys += [k for k in after if k not in keys and _is_number(after[k]) and _is_number(before.get(k))]
    if not keys:
        return ""
    lines = ["## Evaluation before and after", ""]
    protocol = {
        k: v for k, v in (evaluation.get("protocol") or {}).items() if not isinstance(v, (dict, list))
    }
    if protocol:
        lines += ["Both models were measured with the same data and protocol:", ""]
        lines += [
            f"- {k}: {v}" if isinstance(v, str) and len(v) > 40 else f"- {k}: `{v}`"
            for k, v in protocol.items()
        ]
        lines.append("")
    lines += ["| Metric | Original | Pruned | Change |", "|---|---:|---:|---:|"]
    for key in keys:
        b, a = float(before[key]), float(after[key])
        change = (
            f"{(a - b) / abs(b) * 100:+.1f}%" if b != 0 and math.isfinite(b) and math.isfinite(a) else "n/a"
        )
        lines.append(f"| {key} | {_fmt(b)} | {_fmt(a)} | {change} |")
    return "\n".join(lines)


def _size(model: dict) -> str:
    rows = [
        ("Blocks", "num_blocks_before", "num_blocks_after", str),
        ("Parameters", "params_before", "params_after", lambda v: f"{int(v):,}"),
        ("Size on disk", "size_bytes_before", "size_bytes_after", _bytes),
    ]
    lines = ["## Size", "", "| | Original | Pruned | Change |", "|---|---:|---:|---:|"]
    for label, kb, ka, fmt in rows:
        b, a = model.get(kb), model.get(ka)
        if _is_number(b) and _is_number(a):
            change = f"{(a - b) / b * 100:+.1f}%" if b else "n/a"
            lines.append(f"| {label} | {fmt(b)} | {fmt(a)} | {change} |")
    return "\n".join(lines) if len(lines) > 4 else ""


def _usage(kind: str | None, repo_id: str | None) -> str:
    auto = _AUTO_CLASS.get(kind or "", "AutoModel")
    where = repo_id or "path/to/pruned-model"
    return (
        "## Usage\n\n```python\n"
        f"from transformers import AutoTokenizer, {auto}\n\n"
        f'model = {auto}.from_pretrained("{where}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")\n```'
    )


def _reproduce(command: str, version: str | None, recipe: str | None = None) -> str:
    installed = f"prune-llm {version}" if version else "prune-llm"
    text = f"## Reproduce\n\nWith {installed} installed (`pip install prune-llm`):\n\n```bash\n{command}\n```"
    if recipe:
        # the recipe beside the weights holds every resolved option, defaults included
        text += (
            f"\n\nor, from the files of this repo: `prune-llm run {recipe} --out DIR` (the resolved options)."
        )
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number_list(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(map(_is_number, value))
    )


def _fmt(value: float) -> str:
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{int(value):,}" if value.is_integer() else f"{value:,.1f}"
    return f"{value:.4f}"


def _ints(values: Sequence[int] | None) -> str:
    return ", ".join(str(int(v)) for v in values) if values else "none"


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
