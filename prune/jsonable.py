"""One JSON policy for everything prune-llm writes: reports, analyses, evaluations, recipes, benchmarks.

JSON has no NaN or infinity. A diverged model's perplexity can be inf and a score of a block that saw
no token NaN, so every non-finite float becomes ``null`` (read back as None; `Analysis.from_dict`
turns it into NaN again). Tensors and numpy values become plain lists and numbers. Light to import
(no torch): the CLI prints JSON with it.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps_json", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON data: tensors and arrays to lists, numpy scalars to numbers, tuples to
    lists, dict keys to strings, and NaN/inf to None.

    Example:
        >>> to_jsonable({"ppl": float("inf"), "drop": (1, 2), 3: [0.5, float("nan")]})
        {'ppl': None, 'drop': [1, 2], '3': [0.5, None]}
    """
    if isinstance(value, str):
        return str(value)  # a str enum (`prune.vocab.ModelKind`) as its plain value
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "detach"):  # a torch tensor, on any device
        return to_jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return to_jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return to_jsonable(value.item())
    return value


def dumps_json(value: Any, *, indent: int | None = 2) -> str:
    """`value` as strict JSON text (`to_jsonable` first, so it never writes NaN or Infinity).

    Example:
        >>> dumps_json({"loss": float("nan")}, indent=None)
        '{"loss": null}'
    """
    return json.dumps(to_jsonable(value), indent=indent, allow_nan=False)
