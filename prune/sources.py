"""Resolve what the user typed (alias, folder, .gguf file, Hub id) into a `ModelSource`, loading nothing.

Resolution order for a spec:
  1. an alias from `prune/aliases.json` (its offline copy when one is installed or cached, else its Hub id);
  2. an existing local path: a `.gguf` file, a folder with `config.json`, or a folder holding one `.gguf`;
  3. anything shaped like a Hub id ("org/name" or "name").

Offline, a name that only the Hub could resolve fails at once with one line that lists the aliases that
load on this machine. `prune.loading.load_model` loads what this module resolves.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from prune.assets import cache_dir, package_dir
from prune.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

_ALIASES_FILE = Path(__file__).with_name("aliases.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    `kind` says how it is loaded: "hub" (a Hub id), "local" (a saved folder) or "gguf" (`gguf_file` inside
    the folder `location`). A resolved alias keeps the kind of its location and records the alias in
    `alias`; the value "alias" is kept in the type for compatibility but never produced.
    """

    spec: str
    kind: Literal["hub", "local", "gguf", "alias"]
    location: str
    gguf_file: str | None = None
    alias: str | None = None
    hub_id: str | None = None


@cache
def _aliases() -> dict[str, dict]:
    with open(_ALIASES_FILE, encoding="utf-8") as fh:
        return json.load(fh)


def list_aliases() -> dict[str, dict]:
    """The model aliases from `prune/aliases.json`: name -> {hub_id, description, offline}.

    Example:
        >>> list_aliases()["bert-base"]["hub_id"]
        'google-bert/bert-base-uncased'
    """
    return {name: dict(entry) for name, entry in _aliases().items()}


def _offline() -> bool:
    from prune.network import hub_unreachable

    return hub_unreachable()


def _suggest(spec: str) -> str:
    names = [name for name in _aliases() if name != spec.lower()]  # never "did you mean" what was typed
    close = difflib.get_close_matches(spec.lower(), names, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


def offline_aliases() -> list[str]:
    """The aliases whose offline copy is installed or cached on this machine (they load without a network).

    Example:
        >>> isinstance(offline_aliases(), list)
        True
    """
    return [name for name, entry in _aliases().items() if _offline_copy(name, name, entry) is not None]


def _offline_help(spec: str, *, suggest: bool = True) -> str:
    """What works without the Hub: the aliases that resolve offline here, and how to get the others."""
    from prune.network import offline_reason

    ready = offline_aliases()
    fetchable = [n for n, e in _aliases().items() if e.get("offline") and n not in ready]
    parts = [f"the Hub cannot be used: {offline_reason()}"]
    parts.append(
        f"aliases that load offline here: {', '.join(ready)}"
        if ready
        else "no alias has an offline copy here"
    )
    if fetchable:
        parts.append(f"run `prune-llm assets` to fetch the offline copies of {', '.join(fetchable)}")
    parts.append("or pass a local folder or .gguf file")
    return (_suggest(spec) if suggest else "") + "; ".join(parts)


def _offline_copy(spec: str, alias: str, entry: dict) -> ModelSource | None:
    """The first installed or cached offline copy of an alias, if any."""
    for where in entry.get("offline", []):
        if "package" in where:
            base = package_dir(where["package"])
            if base is None:
                continue
            folder = base / where.get("subfolder", "")
        else:
            folder = cache_dir() / where["cache"]
        gguf = where.get("gguf_file")
        if gguf and (folder / gguf).is_file():
            return ModelSource(spec, "gguf", str(folder), gguf, alias, entry["hub_id"])
        if not gguf and (folder / "config.json").is_file():
            return ModelSource(spec, "local", str(folder), None, alias, entry["hub_id"])
    return None


def _local_source(spec: str, path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{spec} is a file but not a .gguf checkpoint; pass a .gguf file or a folder written by save_pretrained"
            )
        return ModelSource(spec, "gguf", str(path.parent.resolve()), path.name)
    if (path / "config.json").is_file():
        return ModelSource(spec, "local", str(path.resolve()))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(spec, "gguf", str(path.resolve()), ggufs[0].name)
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise ModelNotFoundError(
            f"folder {spec} holds several .gguf files ({names}); pass the path of one of them"
        )
    raise ModelNotFoundError(
        f"folder {spec} has no config.json and no .gguf file; check the path (it must be a folder written by "
        "save_pretrained or a .gguf file)"
    )


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def resolve_model_source(spec: str) -> ModelSource:
    """Turn an alias, a local path or a Hub id into a `ModelSource`, without loading anything.

    Args:
        spec: e.g. "minilm-l6", "./pruned", "model.Q4_1.gguf", "Qwen/Qwen2.5-7B".

    Raises:
        ModelNotFoundError: a path that does not exist, an unknown name, or (with HF_HUB_OFFLINE=1) a Hub
            id that is not in the local Hub cache.

    Example:
        >>> source = resolve_model_source("minilm-l6")  # the packaged copy once `prune-llm assets` ran
        >>> source.hub_id
        'sentence-transformers/all-MiniLM-L6-v2'
    """
    spec = "" if spec is None else str(spec).strip()
    if not spec:
        raise ModelNotFoundError(
            "empty model name; pass an alias (see `prune-llm models`), a folder or a Hub id"
        )
    entry = _aliases().get(spec.lower())
    if entry is not None:
        alias = spec.lower()
        local = _offline_copy(spec, alias, entry)
        if local is not None:
            return local
        if _offline() and not _in_hub_cache(entry["hub_id"]):
            raise ModelNotFoundError(
                f"alias {alias} ({entry['hub_id']}) has no offline copy on this machine and is not in the Hub "
                f"cache; {_offline_help(alias, suggest=False)}"  # a known alias: no "did you mean"
            )
        return ModelSource(spec, "hub", entry["hub_id"], None, alias, entry["hub_id"])
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(spec, path)
    looks_like_path = (
        spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf") or spec.count("/") > 1
    )
    if looks_like_path or not _HUB_ID.match(spec):
        raise ModelNotFoundError(f"{spec} does not exist; {_suggest(spec)}check the path")
    if _offline() and not _in_hub_cache(spec):
        what = f"Hub id {spec} is" if "/" in spec else f"{spec} is not an alias, not a local path, and"
        raise ModelNotFoundError(f"{what} not in the local Hub cache; {_offline_help(spec)}")
    return ModelSource(spec, "hub", spec, None, None, spec)
