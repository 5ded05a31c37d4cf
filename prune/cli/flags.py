"""Command-line flags generated from `PruneOptions`, so that flags and recipe keys cannot drift apart.

Every field of the options model becomes one flag: ``name`` -> ``--kebab-case``, its help text is the
field's description, booleans are switches, ``Literal`` types become choices and numeric bounds
(``ge``/``le``/``gt``/``lt``) are checked while parsing. Every flag defaults to ``None``, so that only the
flags a user typed are collected: the model's own defaults (or a recipe's values) fill in the rest.

This module must stay light to import (no torch): the CLI builds ``--help`` from it.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from prune.errors import PruneError
from prune.options import PruneOptions

__all__ = ["add_option_flags", "field_flag", "options_from_args", "overrides_from_args", "value_parser"]

# Marks the argparse actions this module created, so that collecting values finds exactly them.
_FLAG_DESTS_ATTR = "_prune_option_fields"


def positive_int(text: str) -> int:
    """argparse type for counts: an integer >= 1, with a message naming the bad value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def field_flag(name: str) -> str:
    """The flag of an options field: ``calib_samples`` -> ``--calib-samples``.

    Example:
        >>> field_flag("push_to_hub")
        '--push-to-hub'
    """
    return "--" + name.replace("_", "-")


def add_option_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel] = PruneOptions,
    *,
    overrides_only: bool,
    positional: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    require: Sequence[str] = (),
    with_defaults: bool = False,
    title: str | None = None,
) -> None:
    """Add one flag per field of `model` to `parser`.

    Args:
        parser: the parser (or subcommand parser) to add the flags to.
        model: the pydantic model whose fields become flags.
        overrides_only: True for commands whose values come from elsewhere (a recipe): every flag is
            optional, including the model's required fields. False for the main command: required
            fields are required and the fields in `positional` are positional arguments.
        positional: fields given as positional arguments when ``overrides_only`` is False
            (default: ``("model",)`` when the model has that field).
        skip: fields not to expose as flags.
        require: optional fields that this command requires all the same (``squeeze`` needs --ffn-keep).
        with_defaults: parsed values carry the fields' defaults instead of None (for commands that
            take no recipe, such as ``analyze``: then every field is in the namespace). Help texts and
            numeric bounds are the same either way.
        title: the heading of the flags in --help (default: says they are recipe keys).

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_option_flags(p, overrides_only=True)
        >>> overrides_from_args(p.parse_args(["--target", "25%", "--allow-last"]))
        {'target': '25%', 'allow_last': True}
    """
    if positional is None:
        positional = ("model",) if not overrides_only and "model" in model.model_fields else ()
    title = (
        "options (each is also a recipe key)"
        if overrides_only
        else "pruning options (each is also a recipe key)"
    )
    sections = _sections(parser, model, title)
    dests: list[str] = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        group = sections[name]
        help_text = field.description or ""
        required = (field.is_required() and not overrides_only) or name in require
        if overrides_only:
            help_text += " Overrides the recipe."
        elif not field.is_required():
            help_text += f" (default: {field.get_default()})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        annotation = _strip_optional(field.annotation)
        if not overrides_only and name in positional:
            group.add_argument(name, metavar=name.upper(), type=value_parser(name, field), help=help_text)
            dests.append(name)
            continue
        default = field.get_default() if with_defaults and not field.is_required() else None
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": help_text}
        if annotation is bool:
            # default-True switches need a way to turn them off; commands without recipes get both forms
            both = field.get_default() is True or with_defaults
            kwargs["action"] = argparse.BooleanOptionalAction if both else "store_true"
        else:
            kwargs["type"] = value_parser(name, field)
            kwargs["metavar"] = name.upper()
            kwargs["required"] = required
            if typing.get_origin(annotation) is Literal:
                kwargs["choices"] = list(typing.get_args(annotation))
                kwargs.pop("metavar")
        group.add_argument(field_flag(name), **kwargs)
        dests.append(name)
    parser.set_defaults(**{_FLAG_DESTS_ATTR: tuple(dests)})


def _sections(parser: argparse.ArgumentParser, model: type[BaseModel], title: str) -> dict[str, Any]:
    """One argument group per option group of `prune.options` that `model` composes (one for all when
    it composes none), by field name: --help lists the flags stage by stage."""
    from prune.command_options import COMMAND_OPTION_GROUPS as OPTION_GROUPS

    groups = [g for g in OPTION_GROUPS if issubclass(model, g)] or [model]
    sections: dict[str, Any] = {}
    for group in groups:
        doc = (group.__doc__ or "").strip().splitlines()[0] if len(groups) > 1 else ""
        section = parser.add_argument_group(f"{title}: {doc.rstrip('.').lower()}" if doc else title)
        for name in group.model_fields:
            sections.setdefault(name, section)
    return {name: sections.get(name, sections[next(iter(sections))]) for name in model.model_fields}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The option values the user typed (flags left out are not included), by field name.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_option_flags(p, overrides_only=True)
        >>> overrides_from_args(p.parse_args(["--seq-len", "512"]))
        {'seq_len': 512}
    """
    dests = getattr(args, _FLAG_DESTS_ATTR, ())
    return {name: getattr(args, name) for name in dests if getattr(args, name, None) is not None}


def options_from_args(
    args: argparse.Namespace, model: type[BaseModel] = PruneOptions, *, extra: dict[str, Any] | None = None
) -> Any:
    """Validate the typed flags into `model` (an instance of it: a `PruneOptions` by default).

    `extra` adds values of fields the command declares itself (a positional with its own help).

    Raises:
        PruneError: a value the parser could not check on its own is invalid (the message names the flag).
    """
    values = {**overrides_from_args(args), **(extra or {})}
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        if not first["loc"]:  # a check across options: its message says what to pass
            raise PruneError(str(first["msg"]).removeprefix("Value error, ")) from None
        name = str(first["loc"][0])
        raise PruneError(f"{field_flag(name)}: {first['msg']}; fix the value of {field_flag(name)}") from None


def _strip_optional(annotation: Any) -> Any:
    """`int | None` -> `int`; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def value_parser(name: str, field: Any) -> Callable[[str], Any]:
    """A converter for argparse's ``type=``: the field's scalar type plus its numeric bounds."""
    annotation = _strip_optional(field.annotation)
    if typing.get_origin(annotation) is Literal:
        return str
    base: Callable[[str], Any] = annotation if annotation in (int, float) else str
    bounds = [
        (symbol, getattr(m, attr))
        for m in field.metadata
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if getattr(m, attr, None) is not None
    ]

    def convert(text: str) -> Any:
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None
        for symbol, bound in bounds:
            ok = {
                ">=": value >= bound,
                ">": value > bound,
                "<=": value <= bound,
                "<": value < bound,
            }[symbol]
            if not ok:
                raise argparse.ArgumentTypeError(f"must be {symbol} {bound}, got {text}")
        return value

    convert.__name__ = base.__name__  # argparse names the type in its messages
    return convert
