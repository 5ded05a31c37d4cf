"""Write results without ever losing what the user had.

`check_output_dir` refuses an existing, non-empty folder unless `force` (call it before any expensive work);
`atomic_output_dir` writes into a temporary sibling folder and renames it into place only when everything
was written, so a crash leaves either the old folder or the complete new one; `save_model` saves a model as
a stock safetensors checkpoint, GGUF-loaded models included.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prune.errors import OutputExistsError

_GGUF_STATE = ("hf_quantizer", "is_quantized", "quantization_method")


def check_output_dir(path: str | os.PathLike, *, force: bool) -> Path:
    """Check that `path` may be written: absent, empty, or `force` given.

    Args:
        path: the output folder.
        force: allow replacing an existing non-empty folder.

    Returns:
        The path, with `~` expanded.

    Raises:
        OutputExistsError: the path is a file, or a non-empty folder and `force` is False.

    Example:
        >>> check_output_dir("/tmp/surely-new-prune-output", force=False).name
        'surely-new-prune-output'
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(
            f"output folder {out} exists; pass --force to overwrite or choose another --out"
        )
    return out


@contextmanager
def atomic_output_dir(path: str | os.PathLike, *, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder of `path`; on success it replaces `path`, on error it is removed.

    The temporary folder has the same parent, so the final rename is atomic. With `force`, an existing
    folder is renamed aside (`.<name>.old-*`), the new one renamed in, then the old one deleted: at every
    moment the complete old or the complete new folder exists under one of those names.

    Args:
        path: the final output folder.
        force: allow replacing an existing non-empty folder.

    Raises:
        OutputExistsError: as `check_output_dir`, checked both before and after the work.

    Example:
        >>> with atomic_output_dir("/tmp/prune-doctest-out", force=True) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> (Path("/tmp/prune-doctest-out") / "a.txt").read_text()
        'hi'
    """
    out = check_output_dir(path, force=force).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        # Someone may have written the folder while we worked: check again before replacing.
        check_output_dir(out, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / out.name, out)  # put the old folder back
        shutil.rmtree(tmp, ignore_errors=True)
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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _without_gguf_state(model):
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
