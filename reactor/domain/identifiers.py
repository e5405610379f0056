"""Typed identifiers: UUID5 values whose first three hex digits name the kind of record.

The derivation matches the system this product replaces, so a job created from the same inputs
gets the same uuid in both.
"""
from __future__ import annotations

import hashlib
import json
import re
import random
import uuid as _uuid
from typing import Any, Iterable

from .tokens import shown

# Prefixes of the catalog's typed UUIDs.
PREFIXES = {
    "generic": "100", "experiment": "102", "sample": "103", "measurement": "104", "file": "105",
    "pipeline": "106", "pipelinejob": "107", "pipelinejob_event": "108", "reference": "109",
    "experiment_design": "114",
}
JOB_PREFIX = PREFIXES["pipelinejob"]
PIPELINE_PREFIX = PREFIXES["pipeline"]
EVENT_PREFIX = PREFIXES["pipelinejob_event"]

NAMESPACE = _uuid.uuid3(_uuid.NAMESPACE_DNS, "sd2e.org")
# Used with fullmatch: a pattern's "$" would also match before a final newline.
_TYPED = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


_NAMESPACE_BYTES = NAMESPACE.bytes


def typed_uuid(kind: str, text: str) -> str:
    """UUID5 of ``text`` in the catalog namespace, with the prefix of ``kind``."""
    prefix = PREFIXES[kind]
    # RFC 4122 name-based SHA-1, as ``uuid.uuid5`` computes it, without building UUID objects
    # (one per history entry, so per message): first 16 bytes, then version 5 and the variant.
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + text.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    x = digest.hex()
    return f"{prefix}{x[3:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _render(value: Any) -> str:
    # Dicts as compact sorted JSON, everything else as Python str(): the replaced system's rule.
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def job_uuid(pipeline_uuid: str, child_of: Iterable[str] | None = None,
             data: dict | None = None) -> str:
    """Deterministic job uuid (prefix 107) from pipeline_uuid + child_of + data."""
    parts = [_render(pipeline_uuid), _render(list(child_of or [])), _render(data or {})]
    return typed_uuid("pipelinejob", ":".join(sorted(parts)))


def pipeline_uuid(name: str) -> str:
    """Deterministic pipeline uuid (prefix 106) from a pipeline's name."""
    return typed_uuid("pipeline", name)


def history_uuid() -> str:
    """A fresh random uuid (prefix 108) for one history entry."""
    # 128 random bits make it unique; nothing about it is secret, so the module PRNG (seeded
    # from the OS, reseeded in forked children) serves, without a getrandom call per event.
    return typed_uuid("pipelinejob_event", f"{random.getrandbits(128):032x}")


def check_typed(value: Any, kind: str) -> str:
    """Return ``value`` if it is a typed uuid of ``kind``, else raise ValueError naming the problem."""
    prefix = PREFIXES[kind]
    if not isinstance(value, str) or not _TYPED.fullmatch(value):
        # The value is echoed only when harmless: a token sent in the uuid slot must not be.
        raise ValueError(f"{kind} uuid must be a lower-case UUID string, got {shown(value)}")
    if not value.startswith(prefix):
        raise ValueError(f"{kind} uuid must start with {prefix}, got {shown(value)}")
    return value


def check_any_typed(value: Any, what: str) -> str:
    """Return ``value`` if it is a typed uuid of any known kind, else ValueError naming ``what``."""
    kind = _KIND_BY_PREFIX.get(value[:3]) if isinstance(value, str) else None
    if kind is None:
        raise ValueError(f"{what} must be a typed uuid (e.g. 102… experiment, 103… sample, "
                         f"104… measurement, 107… job), got {shown(value)}")
    try:
        return check_typed(value, kind)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


_KIND_BY_PREFIX = {prefix: kind for kind, prefix in PREFIXES.items()}
