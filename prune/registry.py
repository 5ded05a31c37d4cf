"""A small named registry for the things users pick by name (metrics, strategies).

Each entry registers itself from its own module. Bad or duplicate names are rejected at
registration, and an unknown name at lookup gets an error that lists the valid ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_VALID_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class Registry(Generic[T]):
    """A mapping of lower-case names to entries of one kind.

    Args:
        kind: What the entries are, used in error messages ("metric", "strategy").

    Example:
        >>> strategies: Registry[str] = Registry("strategy")
        >>> strategies.register("span", "contiguous blocks")
        'contiguous blocks'
        >>> strategies.get("span")
        'contiguous blocks'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add `entry` under `name`; returns the entry so it can be used as a decorator helper."""
        if not _VALID_NAME.match(name):
            raise ValueError(f"invalid {self.kind} name {name!r}: use lower-case letters, digits, '-' or '_'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`register`."""

        def wrap(entry: T) -> T:
            return self.register(name, entry)

        return wrap

    def get(self, name: str) -> T:
        """The entry named `name`, or a `KeyError` that lists the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
