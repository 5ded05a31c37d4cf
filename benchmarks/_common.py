"""What every quality benchmark shares: the protocol (data, settings), the machine, incremental JSON, figures.

The benchmarks compose the library's stages (`prune.loading`, `prune.collect`, `prune.plan`,
`prune.surgery`, `prune.repair`, `prune.width`, `prune.evaluation`); this module only holds the
bookkeeping around them, so that each result file says how it was made (command, date, machine, data,
sizes) and `benchmarks/render.py` can print that next to the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """The machine the figures come from: CPU, threads, torch, and the accelerator if one was used."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def command_line() -> str:
    """The command that produced a result, as a user would retype it."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    return " ".join(["PYTHONPATH=. python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Results:
    """A result file written after every row, so a long grid that is stopped keeps what it measured.

    With ``resume``, rows already in the file (same key) are kept and not measured again.
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any], *, resume: bool = False):
        self.path = Path(path)
        self.data: dict[str, Any] = {
            **header,
            "command": command_line(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "rows": [],
        }
        if resume and self.path.exists():
            old = json.loads(self.path.read_text())
            self.data["rows"] = old.get("rows", [])
            self.data.update({k: v for k, v in old.items() if k not in self.data})
            # every command that added rows, oldest first, so the file says how all of it was made
            earlier = old.get("commands") or [old.get("command")]
            self.data["commands"] = [*filter(None, earlier), self.data["command"]]
        self._done = {row["key"] for row in self.data["rows"]}

    def done(self, key: str) -> bool:
        return key in self._done

    def add(self, key: str, row: dict[str, Any]) -> None:
        self.data["rows"].append({"key": key, **row})
        self._done.add(key)
        self.save()

    def save(self, **extra: Any) -> None:
        self.data.update(extra)
        self.data["peak_rss_mib"] = round(peak_rss_mib(), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        tmp.replace(self.path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def add_protocol_flags(parser: Any, quick: dict[str, int]) -> None:
    """The protocol flags of the grid benchmarks: ``--quick`` (the `quick` sizes), ``--calib-samples`` and
    ``--eval-samples`` (None until `fill_protocol_sizes`), ``--seq-len`` and ``--batch-size``."""
    parser.add_argument("--quick", action="store_true", help=f"small calibration and evaluation: {quick}")
    parser.add_argument("--calib-samples", type=int, default=None)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)


def fill_protocol_sizes(args: Any, quick: dict[str, int], full: dict[str, int]) -> None:
    """Give every size flag left unset (None) its `quick` or `full` value, as ``--quick`` says."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def protocol_data(tokenizer: Any, kind: str, *, calib_samples: int, seq_len: int, batch_size: int, seed: int):
    """Calibration batches and held-out texts of the default corpus, checked disjoint.

    Returns:
        (calibration batches, held-out texts, a JSON-able description of the protocol).
    """
    from prune.data import load_texts, make_batches

    calib_texts = load_texts("default", purpose="calib", seed=seed)
    eval_texts = load_texts("default", purpose="eval", seed=seed)
    shared = set(calib_texts) & set(eval_texts)
    if shared:
        raise SystemExit(f"{len(shared)} texts are both calibration and held-out text; fix the split first")
    batches = make_batches(
        tokenizer,
        calib_texts,
        seq_len=seq_len,
        batch_size=batch_size,
        num_samples=calib_samples,
        packed=kind == "causal-lm",
    )
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    protocol = {
        "data": "default corpus (prune.data.load_texts): calibration split for statistics, search and fits; "
        "the eval split for quality; no text in both (checked)",
        "calib_texts": len(calib_texts),
        "eval_texts": len(eval_texts),
        "calib_samples": calib_samples,
        "calib_tokens": tokens,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "seed": seed,
    }
    return batches, eval_texts, protocol


@dataclass
class Setup:
    """What a quality benchmark starts from: the model, its calibration batches and held-out protocol."""

    model: Any
    tokenizer: Any
    kind: str
    anatomy: Any
    loaded: Any
    calib: list
    eval_texts: list[str]
    protocol: dict[str, Any]
    settings: Any


def load_protocol(
    model: str,
    *,
    calib_samples: int,
    eval_samples: int,
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    speed: bool = False,
    repeats: int = 5,
) -> Setup:
    """Load `model` on the CPU in float32 and build the shared protocol: `protocol_data` and its `EvalSettings`.

    Args:
        model: an alias or path for `prune.loading.load_model`.
        calib_samples: calibration windows (statistics, search and every fit).
        eval_samples: held-out windows the quality is measured on.
        seq_len: tokens per window.
        batch_size: windows per batch.
        seed: the text-split seed.
        speed: also time the models (`prune.evaluation.speed`), `repeats` forward passes each.
        repeats: timed passes per model when `speed` is on.

    Returns:
        A `Setup`; its ``protocol`` records ``eval_samples`` as well.

    Example:
        >>> setup = load_protocol("minilm-l6", calib_samples=16, eval_samples=8)  # doctest: +SKIP
    """
    from prune.anatomy import get_anatomy
    from prune.evaluation import EvalSettings
    from prune.loading import load_model

    loaded = load_model(model, device="cpu", dtype="float32", progress=False)
    calib, eval_texts, protocol = protocol_data(
        loaded.tokenizer,
        loaded.kind,
        calib_samples=calib_samples,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
    )
    protocol["eval_samples"] = eval_samples
    extra = {"repeats": repeats} if speed else {}
    settings = EvalSettings(
        seq_len=seq_len,
        batch_size=batch_size,
        num_samples=eval_samples,
        generation=False,
        speed=speed,
        **extra,
    )
    return Setup(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        kind=loaded.kind,
        anatomy=get_anatomy(loaded.model),
        loaded=loaded,
        calib=calib,
        eval_texts=eval_texts,
        protocol=protocol,
        settings=settings,
    )


def held_out_quality(setup: Setup, candidate: Any) -> dict[str, float]:
    """`quality_keys` of `candidate` on the setup's held-out text (encoders: fidelity to ``setup.model``)."""
    from prune.evaluation import evaluate_model

    reference = None if setup.kind == "causal-lm" else setup.model
    values = evaluate_model(
        candidate,
        setup.tokenizer,
        kind=setup.kind,
        texts=setup.eval_texts,
        reference=reference,
        settings=setup.settings,
    )
    return {k: values[k] for k in quality_keys(setup.kind)}


def quality_keys(kind: str) -> tuple[str, ...]:
    """The held-out quality a table shows: perplexity for causal LMs, fidelity to the original for encoders."""
    return ("perplexity",) if kind == "causal-lm" else ("cosine_mean", "cosine_min")


# The quality figures a progress line shows, where a row has them (held-out perplexity; encoder fidelity).
QUALITY_FIELDS = ("perplexity", "cosine_mean", "cosine_min")
# Timings a progress line shows, in the order of a run, with their names in the line.
_TIMES = (("plan_s", "plan"), ("repair_s", "repair"), ("squeeze_s", "squeeze"), ("build_s", "build"),
          ("eval_s", "eval"))  # fmt: skip


def result_line(row: dict[str, Any]) -> str:
    """One measured row of a quality benchmark as a progress line, from the fields it has.

    What was measured (blocks cut, method, FFN keep, seed, blocks, repair and order), its quality
    figures in 4 significant digits, then size, latency and timings; a row that failed (``error``)
    ends with the error instead.

    Example:
        >>> result_line({"method": "span", "drop": 6, "seed": 0, "blocks": [13, 14], "repair": "linear",
        ...              "order": "sequential", "perplexity": 52.191, "repair_s": 10.04, "eval_s": 2.0})
        'drop 6 | span (seed 0) | [13, 14] | linear sequential | perplexity 52.19 | repair 10.0 s, eval 2.0 s'
    """
    name = str(row["method"])
    name += f" keep {row['keep']}" if "keep" in row else ""
    name += f" (seed {row['seed']})" if "seed" in row else ""
    parts = [f"drop {row.get('drop', 0)}", name]
    if "blocks" in row:
        parts.append(str(row["blocks"]))
    if "repair" in row:
        parts.append(f"{row['repair']} {row.get('order', '')}".strip())
    if "error" in row:
        return " | ".join(parts) + f": {row['error']}"
    parts.append(", ".join(f"{k} {row[k]:.4g}" for k in QUALITY_FIELDS if k in row))
    if row.get("parameters") is not None:
        parts.append(f"params {row['parameters']:,}")
    if row.get("latency_ms") is not None:
        parts.append(f"latency {row['latency_ms']:.1f} ms")
    times = ", ".join(f"{label} {row[key]:.1f} s" for key, label in _TIMES if row.get(key) is not None)
    return " | ".join(part for part in (*parts, times) if part)


def figure(width: float, height: float, ncols: int = 1):
    """A matplotlib Figure and its axes on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)
