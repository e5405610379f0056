"""What a JSON value is, checked once for every path that stores caller data (no I/O)."""
from __future__ import annotations

import math
from typing import Any

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # BSON integers; larger ones change on a round trip


class NotJSON(TypeError, ValueError):
    """A value of a kind JSON cannot hold (a set, a non-string key, …): a wrong type *and* value."""


def check_json(value: Any, where: str = "data", max_depth: int = 64,
               nul_keys: bool = False) -> Any:
    """Return ``value`` if JSON and both stores hold it exactly; else raise naming the place.

    Text must be valid Unicode (no unpaired surrogate: no store can encode one). A NUL in an
    object key is refused unless ``nul_keys`` (the store's own check allows what it can keep;
    what callers send is held to the message contract, which refuses it)."""
    try:
        _walk(value, 0, max_depth, nul_keys)
    except _Bad as bad:
        path = where + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]"
                               for p in reversed(bad.parts))
        raise bad.kind(bad.problem.format(where=path)) from None
    return value


class _Bad(Exception):
    """Raised inside ``_walk``; ``parts`` collects the path on the way out, so a valid value
    (every value, nearly always) never pays for building path strings."""

    def __init__(self, kind: type, problem: str):
        super().__init__(problem)
        self.kind = kind
        self.problem = problem
        self.parts: list = []


def check_text(value: Any, what: str) -> str:
    """Return ``value`` if it is a string of valid Unicode without NUL, else ValueError."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if not is_text(value) or "\x00" in value:
        raise ValueError(f"{what} must be valid Unicode text without NUL characters (it holds "
                         "an unpaired surrogate or a NUL)")
    return value


def is_text(text: str) -> bool:
    """True unless ``text`` holds a lone surrogate (which no store or UTF-8 writer can take)."""
    # ASCII (nearly all text) is valid by itself; only other text can hold a lone surrogate.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_BAD_TEXT = "{where} holds an unpaired UTF-16 surrogate, which no store can encode"


def _walk(value: Any, depth: int, max_depth: int, nul_keys: bool) -> None:
    if depth > max_depth:
        raise _Bad(ValueError, f"{{where}} is nested more than {max_depth} levels deep")
    if isinstance(value, str):
        if not is_text(value):
            raise _Bad(ValueError, _BAD_TEXT)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _Bad(ValueError, f"{{where}} = {value} is outside the 64-bit integer range; "
                       "store it as a string")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(ValueError, f"{{where}} is {value!r}; JSON has no NaN or infinity")
    elif isinstance(value, dict):
        inline = depth < max_depth  # children are one level deeper: still allowed
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Bad(NotJSON, f"{{where}} has a non-string key {_braces(repr(key))} "
                           f"({type(key).__name__}); JSON object keys must be strings, e.g. "
                           f"{_braces(repr(str(key)))}")
            if not is_text(key):
                raise _Bad(ValueError, "{where} has a key with an unpaired UTF-16 surrogate, "
                           "which no store can encode")
            if not nul_keys and "\x00" in key:
                raise _Bad(ValueError, "{where} has a key with a NUL character, which no "
                           "message may carry, so no other path stores it either")
            if not (inline and _plain_leaf(item)):
                _descend(item, key, depth, max_depth, nul_keys)
    elif isinstance(value, (list, tuple)):
        inline = depth < max_depth
        for index, item in enumerate(value):
            if not (inline and _plain_leaf(item)):
                _descend(item, index, depth, max_depth, nul_keys)
    else:
        raise _Bad(NotJSON, f"{{where}} is a {type(value).__name__}, which JSON cannot "
                   "represent; use a dict, list, string, number, boolean or None (e.g. a list "
                   "instead of a set)")


def _plain_leaf(item: Any) -> bool:
    """True for a valid leaf of an exact plain type: checked in place, without a call to
    ``_walk`` (most of a document is leaves). Anything else takes the full walk."""
    kind = type(item)
    return (kind is str and item.isascii()) or item is None or kind is bool or \
        (kind is int and INT64_MIN <= item <= INT64_MAX) or \
        (kind is float and math.isfinite(item))


def _descend(item: Any, part: Any, depth: int, max_depth: int, nul_keys: bool) -> None:
    try:
        _walk(item, depth + 1, max_depth, nul_keys)
    except _Bad as bad:
        bad.parts.append(part)
        raise


def _braces(text: str) -> str:
    # The problem text is a format string with one field, {where}: keep other braces literal.
    return text.replace("{", "{{").replace("}", "}}")
