"""What a JSON value is, checked once for every path that stores caller data (no I/O).

One walker (``walk``) finds what no store can hold exactly; ``check_json`` words its findings
for the library, the job operations and the stores' own checks, and the message contract
(``reactor.contract.messages``) words the same findings as rejection reasons.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # BSON integers; larger ones change on a round trip
# Two depth limits, because two things are measured. What callers send (a message, or data
# through the library) nests at most MESSAGE_MAX_DEPTH levels: the contract's promise to
# senders (docs/operations.md), kept well below the other limit because that data is stored a
# few levels down inside a job record (record, history, entry, data). A stored record as a whole
# nests at most RECORD_MAX_DEPTH levels: MongoDB's own limit, which the embedded store enforces
# too, so both backends accept exactly the same records.
MESSAGE_MAX_DEPTH = 64
RECORD_MAX_DEPTH = 100


class NotJSON(TypeError, ValueError):
    """A value of a kind JSON cannot hold (a set, a non-string key, …): a wrong type *and* value."""


class Problem(Exception):
    """What ``walk`` found, and where: ``code`` names it, ``value`` is the value or key at fault.

    ``parts`` collects the path (innermost first) on the way out, so a valid value (every
    value, nearly always) never pays for building it. Codes: ``deep``, ``bad_text``,
    ``bad_key`` (a key with an unpaired surrogate), ``nul_key``, ``big_int``, ``not_finite``,
    ``key_type`` (a key that is not a string), ``not_json`` (a value of another type)."""

    def __init__(self, code: str, value: Any):
        super().__init__(code)
        self.code = code
        self.value = value
        self.parts: list = []


class _Rules(NamedTuple):
    max_depth: int
    leaves: bool  # a scalar counts as a level too (else only containers do)
    texts: bool  # look at text (strings and keys) at all
    nul_keys: bool  # a NUL in a key is allowed


def walk(value: Any, max_depth: int, depth: int = 0, *, leaves: bool = True,
         texts: bool = True, nul_keys: bool = False) -> None:
    """Raise ``Problem`` at the first part of ``value`` no store can hold exactly.

    ``depth`` is the level of ``value`` itself; a value deeper than ``max_depth`` is refused,
    a scalar only if ``leaves`` (the stores' rule counts every value, the message contract's
    counts containers, as JSON parsers do). The recursion stops there, so hostile input cannot
    exhaust the stack. ``texts=False`` skips the text checks of strings and keys, for a caller
    that knows its text is valid."""
    _walk(value, depth, _Rules(max_depth, leaves, texts, nul_keys))


def check_json(value: Any, where: str = "data", max_depth: int = MESSAGE_MAX_DEPTH,
               nul_keys: bool = False) -> Any:
    """Return ``value`` if JSON and both stores hold it exactly; else raise naming the place.

    Text must be valid Unicode (no unpaired surrogate: no store can encode one). A NUL in an
    object key is refused unless ``nul_keys`` (the store's own check allows what it can keep;
    what callers send is held to the message contract, which refuses it)."""
    try:
        walk(value, max_depth, nul_keys=nul_keys)
    except Problem as bad:
        path = where + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]"
                               for p in reversed(bad.parts))
        raise _refusal(bad, path, max_depth) from None
    return value


def _refusal(bad: Problem, where: str, max_depth: int) -> Exception:
    """The exception ``check_json`` raises for ``bad`` at ``where``."""
    value = bad.value
    if bad.code == "deep":
        return ValueError(f"{where} is nested more than {max_depth} levels deep")
    if bad.code == "bad_text":
        return ValueError(f"{where} holds an unpaired UTF-16 surrogate, which no store can "
                          "encode")
    if bad.code == "bad_key":
        return ValueError(f"{where} has a key with an unpaired UTF-16 surrogate, which no store "
                          "can encode")
    if bad.code == "nul_key":
        return ValueError(f"{where} has a key with a NUL character, which no message may carry, "
                          "so no other path stores it either")
    if bad.code == "big_int":
        return ValueError(f"{where} = {value} is outside the 64-bit integer range; store it as "
                          "a string")
    if bad.code == "not_finite":
        return ValueError(f"{where} is {value!r}; JSON has no NaN or infinity")
    if bad.code == "key_type":
        return NotJSON(f"{where} has a non-string key {value!r} ({type(value).__name__}); JSON "
                       f"object keys must be strings, e.g. {str(value)!r}")
    return NotJSON(f"{where} is a {type(value).__name__}, which JSON cannot represent; use a "
                   "dict, list, string, number, boolean or None (e.g. a list instead of a set)")


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


def _walk(value: Any, depth: int, rules: _Rules) -> None:
    max_depth, leaves, texts, nul_keys = rules
    if depth > max_depth and (leaves or isinstance(value, (dict, list, tuple))):
        raise Problem("deep", value)
    if isinstance(value, str):
        if texts and not is_text(value):
            raise Problem("bad_text", value)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise Problem("big_int", value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Problem("not_finite", value)
    elif isinstance(value, dict):
        inline = depth < max_depth or not leaves  # children one level deeper are still allowed
        for key, item in value.items():
            if not isinstance(key, str):
                raise Problem("key_type", key)  # a bad key is reported at its object's path
            if texts and not is_text(key):
                raise Problem("bad_key", key)
            if texts and not nul_keys and "\x00" in key:
                raise Problem("nul_key", key)
            if not (inline and _plain_leaf(item)):
                _descend(item, key, depth, rules)
    elif isinstance(value, (list, tuple)):
        inline = depth < max_depth or not leaves
        for index, item in enumerate(value):
            if not (inline and _plain_leaf(item)):
                _descend(item, index, depth, rules)
    else:
        raise Problem("not_json", value)


def _plain_leaf(item: Any) -> bool:
    """True for a valid leaf of an exact plain type: checked in place, without a call to
    ``_walk`` (most of a document is leaves). Anything else takes the full walk."""
    kind = type(item)
    return (kind is str and item.isascii()) or item is None or kind is bool or \
        (kind is int and INT64_MIN <= item <= INT64_MAX) or \
        (kind is float and math.isfinite(item))


def _descend(item: Any, part: Any, depth: int, rules: _Rules) -> None:
    try:
        _walk(item, depth + 1, rules)
    except Problem as bad:
        bad.parts.append(part)
        raise
