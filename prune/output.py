"""Write results without ever losing what the user had.

`check_output_dir` refuses an existing, non-empty folder unless `force` (call it before any expensive work);
`atomic_output_dir` writes into a temporary sibling folder and renames it into place only when everything
was written, so a crash leaves either the old folder or the complete new one; `save_model` saves a model as
a stock safetensors checkpoint, GGUF-loaded models included.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prune.errors import OutputError, OutputExistsError

_GGUF_STATE = ("hf_quantizer", "is_quantized", "quantization_method")


# What prune-llm writes into an output folder (pruning: model, tokenizer, report, plots, model card;
# analysis: analysis.json/.txt and plots). `--force` replaces a folder only when everything in it matches
# these and one of the reports marks it as ours: anything else may be the user's and is never deleted.
_OWN_MARKERS = ("prune_report.json", "analysis.json")
_OWN_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "*.jinja",
    "chat_template*",
    "prune_report.*",
    "prune_recipe.yaml",
    "analysis.*",
    "*.png",
    "README.md",
)


def _not_ours(folder: Path) -> list[str]:
    """The entries of `folder` that prune-llm would not have written (folders end with '/')."""
    entries = sorted(folder.iterdir())
    strange = [
        p.name + ("/" if p.is_dir() else "")
        for p in entries
        if p.is_dir() or not any(fnmatch.fnmatch(p.name, pattern) for pattern in _OWN_PATTERNS)
    ]
    if not strange and not any((folder / marker).is_file() for marker in _OWN_MARKERS):
        strange = [p.name for p in entries]  # model-like files, but no report: not a prune-llm output
    return strange


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _writable_ancestor(out: Path) -> None:
    """Fail now, not after the work, when the output cannot be created (read-only disk, no permission)."""
    if out.is_dir() and os.path.ismount(out):
        raise OutputError(
            f"output folder {out} is a mount point: results are written beside it and renamed into place, "
            "which cannot replace a mount point; pass a folder inside it, e.g. --out "
            f"{out / 'pruned-model'}"
        )
    base = out.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=base)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputError(
            f"cannot write the output {out}: {base} is not writable ({exc.strerror}); choose another --out"
        ) from None


def check_output_dir(path: str | os.PathLike, *, force: bool) -> Path:
    """Check that `path` may be written: absent, empty, or `force` given and it holds a prune-llm output.

    Also checks, by creating and removing an empty folder, that the output can be written there at all.

    Args:
        path: the output folder.
        force: allow replacing an existing non-empty folder that prune-llm wrote (one with
            ``prune_report.json`` or ``analysis.json`` and nothing but the files prune-llm writes).

    Returns:
        The path, with `~` expanded.

    Raises:
        OutputExistsError: the path is a file, a non-empty folder and `force` is False, or a folder that
            holds anything prune-llm did not write (even with `force`: it may be the user's).
        OutputError: the path is a mount point, or its parent is not writable.

    Example:
        >>> check_output_dir("/tmp/surely-new-prune-output", force=False).name
        'surely-new-prune-output'
    """
    if not str(path).strip():
        raise OutputError("the output folder is empty text; pass --out DIR")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(
                f"output folder {out} exists; pass --force to overwrite or choose another --out"
            )
        strange = _not_ours(out)
        if strange:
            raise OutputExistsError(
                f"output folder {out} holds {_describe(strange)}, which prune-llm did not write; --force "
                "only replaces a folder prune-llm wrote (with its prune_report.json or analysis.json), so "
                "nothing was deleted: choose another --out"
            )
    _writable_ancestor(out)
    return out


def _apply_umask(folder: Path) -> None:
    """Give the folder and everything in it the modes the user's umask allows.

    `tempfile.mkdtemp` creates 0700 folders (and some writers 0600 files) so that a half-written result is
    private; the finished result should look like anything else the user creates.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextmanager
def atomic_output_dir(path: str | os.PathLike, *, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder of `path`; on success it replaces `path`, on error it is removed.

    The temporary folder has the same parent, so the final rename is atomic. With `force`, an existing
    folder is renamed aside (`.<name>.old-*`), the new one renamed in, then the old one deleted: at every
    moment the complete old or the complete new folder exists under one of those names, and whatever
    goes wrong, nothing this run created is left behind.

    Args:
        path: the final output folder.
        force: allow replacing an existing folder that prune-llm wrote.

    Raises:
        OutputExistsError: as `check_output_dir`, checked both before and after the work.
        OutputError: the folder cannot be written or renamed into place (the OS reason is named).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "analysis"
        >>> with atomic_output_dir(out, force=False) as tmp:
        ...     _ = (tmp / "analysis.json").write_text("{}")
        >>> (out / "analysis.json").read_text()
        '{}'
    """
    out = check_output_dir(path, force=force).absolute()
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot create the output {out} ({exc.strerror}); choose another --out") from None
    try:
        yield tmp
        # Someone may have written the folder while we worked: check again before replacing.
        check_output_dir(out, force=force)
        _apply_umask(tmp)
        _replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first: only the empty parents this run made
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            raise OutputError(
                f"writing {out} failed: {exc.strerror or exc}{where}; nothing was left behind, choose "
                "another --out"
            ) from None
        raise


def _replace(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`, moving an existing `out` aside first and deleting it only at the end."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.rename(out, old / out.name)
    except BaseException:
        shutil.rmtree(old, ignore_errors=True)
        raise
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / out.name, out)  # put the old folder back
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _without_gguf_state(model: Any) -> Iterator[None]:
    """Hide a GGUF-loaded model's quantizer state while saving, then restore it (caller's model unchanged)."""
    from prune.loading import clear_gguf_state

    config = getattr(model, "config", None)
    saved = {name: getattr(model, name) for name in _GGUF_STATE if hasattr(model, name)}
    has_qconfig = config is not None and hasattr(config, "quantization_config")
    qconfig = getattr(config, "quantization_config", None)
    methods = (getattr(qconfig, "quant_method", None), getattr(model, "quantization_method", None))
    if not any(str(m).lower().endswith("gguf") for m in methods if m is not None):
        yield  # not GGUF: a genuinely quantized model keeps its state (and its own save rules)
        return
    clear_gguf_state(model)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(model, name, value)
        if has_qconfig:
            config.quantization_config = qconfig


def save_model(model: Any, tokenizer: Any, folder: str | os.PathLike) -> None:
    """Save a model (safetensors) and its tokenizer into `folder` with `save_pretrained`.

    Models loaded from GGUF are already dequantized; their quantizer state is hidden while saving and
    restored afterwards, so the caller's model is left as it was.

    Args:
        model: a `PreTrainedModel`.
        tokenizer: its tokenizer, or None.
        folder: destination folder (created if missing); use inside `atomic_output_dir`.

    Example:
        >>> with atomic_output_dir("pruned", force=False) as tmp:  # doctest: +SKIP
        ...     save_model(model, tokenizer, tmp)
    """
    from prune.checkpoint import tokenizer_problem
    from prune.errors import DataError

    problem = tokenizer_problem(tokenizer) if tokenizer is not None else None
    if problem is not None:  # saved, it would look like the model's own tokenizer to everyone who loads it
        raise DataError(f"refusing to save a tokenizer that cannot represent text: {problem}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _without_gguf_state(model):
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
