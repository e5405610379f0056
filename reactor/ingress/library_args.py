"""The client library's argument checks (pure): every argument of ``ManagedPipelineJob`` and
``ManagedPipelineJobInstance`` is checked here before configuration or the store is touched,
so a bad one raises ``TypeError``/``ValueError`` with nothing written.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ..domain import identifiers
from ..domain import records
from ..domain import jsonvalues
from ..domain.jsonvalues import check_json
from ..domain.tokens import shown

_MONGODB_KEYS = ("authn", "uri", "database")
_PIPELINES_KEYS = ("job_manager_id", "job_manager_nonce", "pipeline_uuid")
# Metadata keywords that become ``child_of``, in the order the replaced system consulted them:
# the first one given wins.
_CHILD_KEYWORDS = (("experiment_design_id", "experiment_design"), ("experiment_id", "experiment"),
                   ("sample_id", "sample"), ("measurement_id", "measurement"))
_STORE_SCHEMES = ("mongodb://", "mongodb+srv://", "sqlite:///")
_DB_NAME = re.compile(r'[^/\\. "$*<>:|?\x00-\x1f\x7f\s]{1,63}')  # fullmatch
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: "$" would pass a final "\n"


def store_location(mongodb: Any) -> tuple[str, str | None]:
    """The store URI and database name (or None) named by a ``mongodb`` argument."""
    if not isinstance(mongodb, dict):
        raise ValueError("mongodb must be a dict: {'authn': <base64url connection string>} or "
                         "{'uri': 'mongodb://…' or 'sqlite:///path', 'database': <name>}; got "
                         f"{type(mongodb).__name__}")
    unknown = sorted(str(k) for k in mongodb if k not in _MONGODB_KEYS)
    if unknown:
        raise ValueError(f"mongodb has unknown key(s) {', '.join(unknown)}; accepted keys: "
                         + ", ".join(_MONGODB_KEYS))
    if ("authn" in mongodb) == ("uri" in mongodb):
        raise ValueError("mongodb needs exactly one of 'authn' (base64url connection string) "
                         "or 'uri'")
    if "authn" in mongodb:
        uri = _decode_authn(mongodb["authn"])
        what = "mongodb['authn'] decodes to a string that"  # never echo credentials
    else:
        uri = mongodb["uri"]
        if not isinstance(uri, str) or not uri:
            raise ValueError("mongodb['uri'] must be a non-empty string")
        what = f"mongodb['uri'] (scheme {uri.split('://')[0][:20]!r})"
    if not uri.isprintable() or any(c.isspace() for c in uri):
        # "sqlite:///x.db\n" would open another file; a URI never holds such characters.
        raise ValueError(f"{what} contains white space or a control character; a store URI "
                         "has none (a trailing newline, say from `echo … | base64`?)")
    if not uri.startswith(_STORE_SCHEMES) or uri in _STORE_SCHEMES:
        raise ValueError(f"{what} is not a usable store URI; use mongodb://host/…, "
                         "mongodb+srv://… or sqlite:///path/to/file.db")
    database = mongodb.get("database")
    if database is None:
        return uri, None
    if uri.startswith("sqlite:"):
        raise ValueError("mongodb['database'] applies to MongoDB only; the sqlite store is the "
                         "file named by the URI")
    if not isinstance(database, str) or not _DB_NAME.fullmatch(database):
        raise ValueError(f"mongodb['database'] must be a MongoDB database name (1-63 characters, "
                         f"none of / \\ . space \" $ * < > : | ?), got {shown(database)}")
    in_uri = uri.split("://", 1)[1].partition("/")[2].split("?")[0]
    if in_uri and in_uri != database:
        raise ValueError(f"mongodb['database'] is {database!r} but the URI names database "
                         f"{in_uri!r}; give one or make them agree")
    return uri, database


def _decode_authn(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("mongodb['authn'] must be a non-empty base64url-encoded connection "
                         "string")
    # Accept the standard alphabet and padding too: the replaced system's values used them.
    text = value.strip().replace("+", "-").replace("/", "_").rstrip("=")
    if not _BASE64URL.fullmatch(text):
        raise ValueError("mongodb['authn'] is not base64url text (A-Z a-z 0-9 - _)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("mongodb['authn'] does not decode to a UTF-8 connection string") from None


def check_event_data(data: Any) -> dict | None:
    """``data`` if it may be an event's data (a dict of JSON, or None), else TypeError/ValueError."""
    return check_json(records.check_data(data))


def optional_text(value: Any, what: str) -> str | None:
    """``value`` if it is a string or None, else TypeError naming ``what``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _uuid_list(value: Any, what: str, kind: str | None) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{what} must be a uuid string or a list of them, not "
                        f"{type(value).__name__}")
    if kind is None:
        return [identifiers.check_any_typed(item, what) for item in items]
    out = []
    for item in items:
        try:
            out.append(identifiers.check_typed(item, kind))
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    return out


def resolve_child_of(child_of: Any, ids: dict[str, Any]) -> list[str]:
    """The parents of a new job: ``child_of``, else the first metadata keyword given."""
    if child_of is not None:
        return _uuid_list(child_of, "child_of", None)
    for keyword, kind in _CHILD_KEYWORDS:
        if ids.get(keyword) is not None:
            return _uuid_list(ids[keyword], keyword, kind)
    return []


def parse_pipelines(pipelines: Any, pipeline_uuid: Any) -> tuple[str, str | None, str | None]:
    """(pipeline uuid, job manager id, nonce) from the ``pipelines`` argument."""
    if pipelines is None:
        pipelines = {}
    if not isinstance(pipelines, dict):
        raise ValueError("pipelines must be a dict with 'pipeline_uuid' (and optionally "
                         f"'job_manager_id', 'job_manager_nonce'), got {type(pipelines).__name__}")
    unknown = sorted(str(k) for k in pipelines if k not in _PIPELINES_KEYS)
    if unknown:
        raise ValueError(f"pipelines has unknown key(s) {', '.join(unknown)}; accepted keys: "
                         + ", ".join(_PIPELINES_KEYS))
    chosen = pipeline_uuid if pipeline_uuid is not None else pipelines.get("pipeline_uuid")
    if chosen is None:
        raise ValueError("no pipeline uuid: give pipelines['pipeline_uuid'] or pipeline_uuid=")
    identifiers.check_typed(chosen, "pipeline")
    manager_id = optional_text(pipelines.get("job_manager_id"), "pipelines['job_manager_id']")
    nonce = optional_text(pipelines.get("job_manager_nonce"), "pipelines['job_manager_nonce']")
    return chosen, manager_id, nonce


def check_secret(secret: Any) -> str | None:
    """``secret`` if it is None or a string of at least 16 bytes, else TypeError/ValueError."""
    if secret is None:
        return None
    if not isinstance(secret, str):
        raise TypeError(f"secret must be a string, not {type(secret).__name__}")
    jsonvalues.check_text(secret, "secret")  # a lone surrogate cannot be encoded to a key
    if len(secret.encode()) < 16:
        raise ValueError("secret must be at least 16 bytes long")
    return secret
