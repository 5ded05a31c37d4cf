"""What a model's config says, read without loading its weights: block count, positions, model type.

A run checks its target and its sequence length against these before the weights load (20 s for
SmolLM2 on CPU, minutes for a 7B model), so a bad flag costs nothing. A GGUF file keeps its config in
its metadata header; reading it through transformers parses the whole file (seconds), so only the
header's few keys are read here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from prune.loading import ModelSource, _load_error


@dataclass(frozen=True)
class ModelFacts:
    """What the config declares (None where it does not say)."""

    num_blocks: int | None
    max_positions: int | None
    model_type: str | None


# GGUF metadata value types -> struct format of one scalar (8: string, 9: array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = fh.read(size)
    if len(data) != size:
        raise struct.error("truncated GGUF header")
    return struct.unpack("<" + fmt, data)[0]


def _string(fh: BinaryIO) -> str:
    length = _read(fh, "Q")
    return fh.read(length).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _read(fh, _SCALARS[kind])
    if kind == 8:
        return _string(fh)
    if kind == 9:
        item, count = _read(fh, "I"), _read(fh, "Q")
        if item in _SCALARS:  # skipped in one seek (tokenizer scores, token types)
            fh.seek(struct.calcsize("<" + _SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                _value(fh, item)
        return None
    raise struct.error(f"unknown GGUF value type {kind}")


def gguf_metadata(path: str | Path, wanted: tuple[str, ...] = ()) -> dict[str, Any]:
    """The scalar metadata of a GGUF file's header (arrays skipped); stops once every `wanted` key is read.

    Example:
        >>> gguf_metadata("model.Q4_1.gguf", ("general.architecture",))  # doctest: +SKIP
        {'general.architecture': 'llama'}
    """
    out: dict[str, Any] = {}
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise struct.error("not a GGUF file (bad magic)")
        version = _read(fh, "I")
        if version < 2:
            raise struct.error(f"GGUF version {version} is too old")
        _read(fh, "Q")  # tensor count
        for _ in range(_read(fh, "Q")):
            key = _string(fh)
            value = _value(fh, _read(fh, "I"))
            if value is not None:
                out[key] = value
            arch = out.get("general.architecture")
            keys = tuple(k.replace("{arch}", str(arch)) for k in wanted)
            if wanted and arch is not None and all(k in out for k in keys):
                break
    return out


def _gguf_facts(path: Path) -> ModelFacts:
    meta = gguf_metadata(path, ("general.architecture", "{arch}.block_count", "{arch}.context_length"))
    arch = meta.get("general.architecture")
    return ModelFacts(
        num_blocks=meta.get(f"{arch}.block_count"),
        max_positions=meta.get(f"{arch}.context_length"),
        model_type=arch,
    )


def read_model_facts(source: ModelSource, *, trust_remote_code: bool = False) -> ModelFacts:
    """Block count, positions and model type of `source` from its config (or GGUF header) alone.

    Args:
        source: a resolved `ModelSource` (``prune.loading.resolve_model_source``).
        trust_remote_code: allow a config whose class lives in the checkpoint.

    Raises:
        ModelNotFoundError: the config cannot be read (custom code without `trust_remote_code`, a
            missing or corrupt file, an unreachable Hub), with the fix.

    Example:
        >>> read_model_facts(resolve_model_source("minilm-l6")).num_blocks  # doctest: +SKIP
        6
    """
    import transformers

    from prune.anatomy.discovery import config_block_count

    try:
        if source.gguf_file:
            return _gguf_facts(Path(source.location) / source.gguf_file)
        config = transformers.AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError, struct.error) as exc:
        raise _load_error(source, exc) from exc
    positions = getattr(config, "max_position_embeddings", None)
    text = getattr(config, "text_config", None)
    if positions is None and text is not None:
        positions = getattr(text, "max_position_embeddings", None)
    return ModelFacts(
        num_blocks=config_block_count(config),
        max_positions=positions if isinstance(positions, int) else None,
        model_type=getattr(config, "model_type", None),
    )
