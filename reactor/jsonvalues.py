"""What a JSON value is, checked once for every path that stores caller data (no I/O)."""
from __future__ import annotations

import math
from typing import Any

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # BSON integers; larger ones change on a round trip


class NotJSON(TypeError, ValueError):
    """A value of a kind JSON cannot hold (a set, a non-string key, …): a wrong type *and* value."""


def check_json(value: Any, where: str = "data", max_depth: int = 64) -> Any:
    """Return ``value`` if JSON and both stores hold it exactly; else raise naming the place."""
    _walk(value, where, 0, max_depth)
    return value


def _walk(value: Any, where: str, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise ValueError(f"{where} is nested more than {max_depth} levels deep")
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{where} = {value} is outside the 64-bit integer range; store it "
                             "as a string")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}; JSON has no NaN or infinity")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSON(f"{where} has a non-string key {key!r} ({type(key).__name__}); "
                              f"JSON object keys must be strings, e.g. {str(key)!r}")
            _walk(item, f"{where}[{key!r}]", depth + 1, max_depth)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _walk(item, f"{where}[{index}]", depth + 1, max_depth)
    else:
        raise NotJSON(f"{where} is a {type(value).__name__}, which JSON cannot represent; use a "
                      "dict, list, string, number, boolean or None (e.g. a list instead of a set)")
