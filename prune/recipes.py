"""Recipes: YAML files that hold the options of a pruning run, validated into `PruneOptions`.

A recipe is a flat mapping of `PruneOptions` keys plus two keys of its own:

- ``include:`` one recipe or a list of them, merged first, in order (later ones override earlier ones,
  and the recipe's own keys override them all). An include is a path relative to the including file or
  the name of a shipped recipe (``_llm`` or ``_llm.yaml``).
- ``description:`` one line that ``prune-llm recipes ls`` shows.

Example (lm-eval style, three lines)::

    include: _llm
    model: llama-3-8b
    target: drop-8

Shipped recipes live in the repository's top-level ``recipes/`` folder, installed as the package data
``prune._recipes``. Files whose name starts with ``_`` are partial recipes meant to be included; they are
not listed.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from prune.errors import RecipeError
from prune.options import PruneOptions

__all__ = [
    "RECIPE_KEYS",
    "Recipe",
    "RecipeInfo",
    "check_target_format",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "read_recipe",
    "recipes_dir",
    "validate_recipe",
]

RECIPE_KEYS = ("include", "description")
_SHIPPED_PACKAGE = "prune._recipes"
_SUFFIXES = (".yaml", ".yml")


class RecipeInfo(NamedTuple):
    """A shipped recipe as `list_recipes` reports it."""

    name: str
    path: Path
    description: str | None


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe: its validated options and where they came from.

    Attributes:
        name: the file name without its suffix.
        path: the recipe file.
        description: its ``description:`` (not inherited from includes).
        options: the merged, validated options.
        files: every file read, the recipe last (includes in merge order).
    """

    name: str
    path: Path
    description: str | None
    options: PruneOptions
    files: tuple[Path, ...]


def recipes_dir() -> Path:
    """The folder of the shipped recipes.

    Installed, it is the package data ``prune._recipes``; in a source checkout where that link is missing
    (e.g. a checkout without symlinks) it is the repository's ``recipes/`` folder.

    Example:
        >>> (recipes_dir() / "_base.yaml").is_file()
        True
    """
    try:
        # A namespace package (no __init__.py) gives a MultiplexedPath: take the folder of its files.
        for child in importlib.resources.files(_SHIPPED_PACKAGE).iterdir():
            if isinstance(child, Path) and child.suffix in _SUFFIXES:
                return child.parent
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    return Path(__file__).resolve().parent.parent / "recipes"


def _shipped() -> dict[str, Path]:
    folder = recipes_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in _SUFFIXES and p.is_file()}


def find_recipe(name: str | Path) -> Path:
    """The file of a recipe given as a path or as the name of a shipped recipe.

    Args:
        name: a path to a YAML file, or a shipped recipe's name (``"llama-3-8b"``, ``"llama-3-8b.yaml"``).

    Raises:
        RecipeError: neither a file nor a shipped recipe; the message lists the shipped ones.

    Example:
        >>> find_recipe("minilm-l6").name
        'minilm-l6.yaml'
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = _shipped()
    stem = path.name[: -len(path.suffix)] if path.suffix in _SUFFIXES else path.name
    if len(path.parts) == 1 and stem in shipped:
        return shipped[stem]
    if path.exists():
        raise RecipeError(f"recipe {str(name)!r} is a folder, not a file; pass a .yaml file")
    public = ", ".join(n for n in shipped if not n.startswith("_")) or "none"
    raise RecipeError(
        f"recipe {str(name)!r} not found: no such file and no shipped recipe of that name; "
        f"pass a .yaml path or one of: {public}"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RecipeError(f"{path}: cannot read the recipe ({err.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise RecipeError(f"{path}: invalid YAML{where} ({problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}: a recipe is a mapping of keys to values, got a {type(data).__name__}; "
            "write one 'key: value' per line"
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise RecipeError(
            f"{path}: key {bad[0]!r} is not a name; recipe keys are option names such as 'target'"
        )
    return data


def _resolve_include(spec: Any, including: Path) -> Path:
    if not isinstance(spec, str) or not spec.strip():
        raise RecipeError(
            f"{including}: include entries are recipe paths or names, got {spec!r}; "
            "write 'include: NAME' or a list of names"
        )
    relative = (including.parent / spec).expanduser()
    for candidate in (relative, *(relative.with_name(relative.name + s) for s in _SUFFIXES)):
        if candidate.is_file():
            return candidate
    shipped = _shipped()
    stem = spec[: -len(Path(spec).suffix)] if Path(spec).suffix in _SUFFIXES else spec
    if stem in shipped:
        return shipped[stem]
    raise RecipeError(
        f"{including}: included recipe {spec!r} not found (no file {relative} and no shipped recipe "
        f"of that name); fix the include path (relative to {including.parent}) or use one of: "
        f"{', '.join(shipped) or 'none'}"
    )


def _merge(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, Path | str], list[Path]]:
    """The merged option values of `path` with its includes, which file set each key, and the files read."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved) :], resolved))
        raise RecipeError(f"include cycle: {cycle}; remove one of these includes")
    chain = (*chain, resolved)
    data = _read_yaml(path)
    includes = data.get("include") or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise RecipeError(
            f"{path}: 'include' must be a recipe name or a list of them, got {includes!r}; "
            "write 'include: NAME' or 'include: [A, B]'"
        )
    values: dict[str, Any] = {}
    origin: dict[str, Path | str] = {}
    files: list[Path] = []
    for spec in includes:
        inc_values, inc_origin, inc_files = _merge(_resolve_include(spec, path), chain)
        values.update(inc_values)
        origin.update(inc_origin)
        files.extend(f for f in inc_files if f not in files)
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise RecipeError(f"{path}: 'description' must be text, got {description!r}; quote it")
    for key, value in data.items():
        if key not in RECIPE_KEYS:
            values[key] = value
            origin[key] = path
    files.append(path)
    return values, origin, files


def check_target_format(target: Any, where: str = "target") -> None:
    """Check the form of a target (the block count is checked against the model at run time).

    Raises:
        RecipeError: not one of 'N-layers', 'drop-N', 'P%'.

    Example:
        >>> check_target_format("25%")
        >>> check_target_format("8")
        Traceback (most recent call last):
        ...
        prune.errors.RecipeError: target: '8' is ambiguous; write '8-layers' to keep 8 blocks or 'drop-8' to remove 8
    """
    from prune.errors import TargetError
    from prune.targets import FORMS, check_target_form

    if isinstance(target, bool) or not isinstance(target, (str, int)):
        raise RecipeError(f"{where}: {target!r} is not a target; write it as {FORMS}")
    try:
        # the grammar of prune.targets; an unquoted YAML number is read as the text the user typed
        check_target_form(str(target))
    except TargetError as err:
        raise RecipeError(f"{where}: {str(err).removeprefix('target ')}") from None


def _validate(values: dict[str, Any], origin: dict[str, Path | str], path: Path) -> PruneOptions:
    fields = PruneOptions.model_fields
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        valid = ", ".join([*fields, *RECIPE_KEYS])
        raise RecipeError(f"{origin.get(key, path)}: unknown key {key!r}; valid keys are: {valid}")
    if "target" in values:
        check_target_format(values["target"], where=f"{origin.get('target', path)}: target")
    try:
        options = PruneOptions.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        if first["type"] == "missing":
            raise RecipeError(
                f"{path}: missing required key {key!r} ({fields[key].description}); add '{key}: ...' "
                "to the recipe or pass it as a flag"
            ) from None
        raise RecipeError(
            f"{origin.get(key, path)}: {key}: {first['msg']} (got {first.get('input')!r}); fix the value of {key!r}"
        ) from None
    return options


def read_recipe(
    path_or_name: str | Path, overrides: dict[str, Any] | None = None, *, check_names: bool = False
) -> Recipe:
    """Load a recipe with its includes and description.

    Args:
        path_or_name: a YAML file or the name of a shipped recipe.
        overrides: option values that win over the recipe's (e.g. flags typed on the command line).
        check_names: also check the strategy and metric against the planner's registry (imports torch,
            ~4 s; off for listing, on for `validate_recipe` and `prune-llm run`).

    Raises:
        RecipeError: the file is missing or invalid, an include is missing or cyclic, a key is unknown or
            a value has the wrong type (the message names the file and the key).

    Example:
        >>> read_recipe("minilm-l6").options.target
        '4-layers'
    """
    path = find_recipe(path_or_name)
    values, origin, files = _merge(path, ())
    for key, value in (overrides or {}).items():
        values[key] = value
        origin[key] = "--" + key.replace("_", "-")  # overrides come from flags (or the API's overrides)
    description = _read_yaml(path).get("description")
    options = _validate(values, origin, path)
    if check_names:
        _check_names(options, origin, path)
    stem = path.name[: -len(path.suffix)] if path.suffix in _SUFFIXES else path.name
    return Recipe(name=stem, path=path, description=description, options=options, files=tuple(files))


def load_recipe(
    path_or_name: str | Path, overrides: dict[str, Any] | None = None, *, check_names: bool = False
) -> PruneOptions:
    """The validated options of a recipe (see `read_recipe`).

    Example:
        >>> load_recipe("minilm-l6", {"seq_len": 64}).seq_len
        64
    """
    return read_recipe(path_or_name, overrides, check_names=check_names).options


def validate_recipe(path: str | Path) -> PruneOptions:
    """Validate one recipe file: the checks of `load_recipe` plus the strategy and metric names.

    Raises:
        RecipeError: the first problem found, naming the file and the key.
    """
    return load_recipe(path, check_names=True)


def _check_names(options: PruneOptions, origin: dict[str, Path | str], path: Path) -> None:
    """Unknown strategies and metrics fail here, before any model is downloaded."""
    from prune.errors import PruneError
    from prune.plan import required_metrics  # imports torch: only when asked

    try:
        required_metrics(options.strategy, options.metric)
    except PruneError as err:
        key = "metric" if options.metric is not None and "rank by" in str(err) else "strategy"
        raise RecipeError(f"{origin.get(key, path)}: {err}; fix the value of {key!r}") from None


def list_recipes() -> list[RecipeInfo]:
    """The shipped recipes that can be run (partial ones, named ``_*``, are left out), by name.

    Example:
        >>> "llama-3-8b" in [r.name for r in list_recipes()]
        True
    """
    infos = []
    for name, path in _shipped().items():
        if name.startswith("_"):
            continue
        description = _read_yaml(path).get("description")
        infos.append(RecipeInfo(name, path, description if isinstance(description, str) else None))
    return infos
