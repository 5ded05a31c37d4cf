"""Pruning targets: how many blocks to remove, from what the user typed.

Three forms are understood, case-insensitively and with surrounding spaces ignored:

- ``N-layers`` keeps N blocks (``8-layers``; ``8-layer`` and ``8-blocks`` also work),
- ``drop-N`` removes N blocks (``drop-4``),
- ``P%`` removes P percent of the blocks, rounded half up, and at least one (``25%``).

A bare number is rejected: "8" could mean keep 8 or drop 8, and guessing wrong would silently cut a
model in half.
"""

from __future__ import annotations

import math
import re

from prune.errors import TargetError

_KEEP = re.compile(r"^(?P<n>[+-]?\d+)-(?:layers?|blocks?)$")
_DROP = re.compile(r"^drop-(?P<n>[+-]?\d+)$")
_PERCENT = re.compile(r"^(?P<p>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*%$")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")

FORMS = "'N-layers' (keep N), 'drop-N' (remove N) or 'P%' (remove P percent)"


def parse_target(target: str, num_blocks: int) -> int:
    """The number of blocks to drop for `target` on a model with `num_blocks` blocks.

    Args:
        target: ``"N-layers"`` (keep N), ``"drop-N"`` (drop N) or ``"P%"`` (drop round(P% of the blocks),
            at least 1).
        num_blocks: how many blocks the model has now.

    Returns:
        How many blocks to remove: at least 1 and at most ``num_blocks - 1`` (a model keeps one block).

    Raises:
        TargetError: the target is malformed, keeps or drops every block, or drops nothing.

    Example:
        >>> parse_target("8-layers", 12), parse_target("drop-4", 12), parse_target("25%", 30)
        (4, 4, 8)
    """
    if not isinstance(target, str):
        raise TargetError(f"target {target!r} is not text; write it as {FORMS}")
    if num_blocks < 2:
        raise TargetError(
            f"the model has {num_blocks} block(s), so no block can be removed; prune a model with at least 2 blocks"
        )
    text = target.strip().lower()
    allowed = f"the model has {num_blocks} blocks"

    if match := _KEEP.match(text):
        keep = int(match["n"])
        if keep >= num_blocks:
            raise TargetError(
                f"target {target!r} keeps {keep} blocks but {allowed}, so nothing would be removed; "
                f"pass N-layers with 1 <= N <= {num_blocks - 1}"
            )
        if keep < 1:
            raise TargetError(
                f"target {target!r} keeps no block; pass N-layers with 1 <= N <= {num_blocks - 1} ({allowed})"
            )
        return num_blocks - keep

    if match := _DROP.match(text):
        drop = int(match["n"])
        if drop < 1:
            raise TargetError(
                f"target {target!r} drops nothing; pass drop-N with 1 <= N <= {num_blocks - 1} ({allowed})"
            )
        if drop >= num_blocks:
            raise TargetError(
                f"target {target!r} drops {drop} blocks but {allowed} and must keep one; "
                f"pass drop-N with 1 <= N <= {num_blocks - 1}"
            )
        return drop

    if match := _PERCENT.match(text):
        percent = float(match["p"])
        if not 0 < percent < 100:
            raise TargetError(f"target {target!r} is out of range; pass P% with 0 < P < 100 ({allowed})")
        # Half up, not Python's banker's rounding: 25% of 30 blocks is 7.5 -> 8, as a person would say.
        drop = max(1, math.floor(percent / 100 * num_blocks + 0.5))
        if drop >= num_blocks:
            raise TargetError(
                f"target {target!r} would drop {drop} of {num_blocks} blocks and keep none; "
                f"pass a smaller percentage or N-layers with 1 <= N <= {num_blocks - 1}"
            )
        return drop

    if _NUMBER.match(text):
        raise TargetError(
            f"target {target!r} is ambiguous; write '{text}-layers' to keep {text} blocks or "
            f"'drop-{text}' to remove {text} ({allowed})"
        )
    raise TargetError(f"cannot read target {target!r}; write it as {FORMS} ({allowed})")


def check_target_form(target: str) -> None:
    """Check what can be checked of `target` without the model: its form and the sign of its number.

    Run before a model loads, so a typo costs nothing; `parse_target` checks the range once the number of
    blocks is known.

    Raises:
        TargetError: the target is malformed, ambiguous, or keeps/drops no block whatever the model.

    Example:
        >>> check_target_form("8-layers")
        >>> check_target_form("8")
        Traceback (most recent call last):
        ...
        prune.errors.TargetError: target '8' is ambiguous; write '8-layers' to keep 8 blocks or 'drop-8' to remove 8
    """
    if not isinstance(target, str):
        raise TargetError(f"target {target!r} is not text; write it as {FORMS}")
    text = target.strip().lower()
    if match := _KEEP.match(text):
        if int(match["n"]) < 1:
            raise TargetError(f"target {target!r} keeps no block; pass N-layers with N >= 1")
    elif match := _DROP.match(text):
        if int(match["n"]) < 1:
            raise TargetError(f"target {target!r} drops nothing; pass drop-N with N >= 1")
    elif match := _PERCENT.match(text):
        if not 0 < float(match["p"]) < 100:
            raise TargetError(f"target {target!r} is out of range; pass P% with 0 < P < 100")
    elif _NUMBER.match(text):
        raise TargetError(
            f"target {target!r} is ambiguous; write '{text}-layers' to keep {text} blocks or 'drop-{text}' "
            f"to remove {text}"
        )
    else:
        raise TargetError(f"cannot read target {target!r}; write it as {FORMS}")
