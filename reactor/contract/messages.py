"""The message contract (contract §5): turn raw bytes plus parameters into one normalised message.

Steps, in order, each ending the message with a rejection when it fails:

1. size: more than ``max_bytes`` → ``too_large``;
2. decode: strict UTF-8, then JSON (no NaN/Infinity, no duplicate keys, nesting at most
   ``jsonvalues.MESSAGE_MAX_DEPTH``, no unpaired surrogates) → ``decode_error``; an empty body
   counts as "no body";
3. choose the message type by this rule (first match wins; never by trying schemas):

   a. the body is not a JSON object                       → rejected (``schema_invalid``)
   b. the body has ``action``                              → delete action
   c. the body has ``status``, or a ``status`` parameter   → job-status callback
   d. the body has ``name``                                → event
   e. no body (or ``{}``) and an ``event`` parameter       → parameter-only event
   f. no body and neither parameter                        → ``decode_error`` (nothing to do)
   g. anything else                                        → event (its schema names the problem)

4. validate with that type's pre-compiled schema → ``schema_invalid`` with the JSON path and
   the failed rule, or ``unknown_event`` when the only problem is the event name;
5. normalise to ``(uuid, event, token, data)`` (callbacks through ``STATUS_EVENTS``).

Parameters are the query parameters of an HTTP callback or the environment of ``reactor
invoke``; only ``PARAM_NAMES`` are read. For an event body, the body wins over parameters
(a ``token`` parameter is used only when the body has none).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..domain import lifecycle
from . import schemas
from ..domain.identifiers import check_typed
from ..domain.jsonvalues import MESSAGE_MAX_DEPTH, Problem, is_text, walk
from ..domain.outcomes import Reject
from ..domain.tokens import shown

PARAM_NAMES = ("uuid", "token", "event", "status", "note")

# Job status (Agave v2 / Tapis v3) -> event (contract §5.2). Statuses not listed map to "update".
_FAIL = ("FAILED", "STOPPED", "KILLED", "DELETED", "ARCHIVING_FAILED")
_UPDATE = ("HEARTBEAT", "UPDATED")
_RESOURCE = ("CREATED", "PENDING", "PROCESSING_INPUTS", "STAGING_INPUTS", "STAGED",
             "STAGING_JOB", "SUBMITTING", "SUBMITTING_JOB", "QUEUED", "CLEANING_UP",
             "ARCHIVING", "ARCHIVING_FINISHED", "PAUSED", "BLOCKED", "PERMISSION_GRANT",
             "PERMISSION_REVOKE")
STATUS_EVENTS: dict[str, str] = {
    "RUNNING": "run", "FINISHED": "finish",
    **{s: "fail" for s in _FAIL}, **{s: "update" for s in _UPDATE},
    **{s: "resource" for s in _RESOURCE},
}
UNKNOWN_STATUS_EVENT = "update"
# Where an event name sits in each validated instance (an enum miss there is unknown_event).
_EVENT_PATHS = {("name",), ("event",), ("parameters", "event")}


class MessageRejected(Reject):
    """A rejection found before the store is touched, with what is known of the message."""

    def __init__(self, reason: str, detail: str, job_uuid: str | None = None,
                 event: str | None = None):
        super().__init__(reason, detail)
        self.job_uuid = job_uuid
        self.event = event


@dataclass(frozen=True)
class EventMessage:
    """One event for one job, whatever form it arrived in."""

    kind: str  # "event", "callback" or "parameters"
    uuid: str
    event: str
    data: dict | None
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DeleteMessage:
    """A request to delete (``force``) or hide a job."""

    uuid: str
    force: bool
    token: str | None = field(default=None, repr=False)
    kind: str = "delete"


Message = EventMessage | DeleteMessage


class _NoBody:
    """What ``decode`` returns for an empty body (a JSON ``null`` body is a document)."""

    def __repr__(self) -> str:
        return "NO_BODY"


NO_BODY: Any = _NoBody()


def clean_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    """The recognised, non-empty parameters as strings (others are ignored); a parameter that
    is not valid UTF-8 text is the sender's error (``decode_error``), like such a body."""
    out = {}
    for name, value in _param_items(params):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise MessageRejected("decode_error", f"parameter {name!r} is not valid "
                                      "UTF-8") from None
        elif not isinstance(value, str):
            value = str(value)
        # An environment variable with bytes that are not UTF-8 arrives as text with lone
        # surrogates (Python's surrogateescape); no store can keep such text.
        _check_param_text(name, value)
        out[name] = value
    return out


def _param_items(params: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    return [(name, value) for name in PARAM_NAMES
            if (value := (params or {}).get(name)) is not None and value not in ("", b"")]


def _check_param_text(name: str, value: str) -> None:
    if not is_text(value):
        raise MessageRejected("decode_error", f"parameter {name!r} is not valid UTF-8 text "
                              "(it holds bytes that are not UTF-8, or an unpaired "
                              "surrogate)")


def duplicate_key(body: bytes, message_id: str | None = None,
                  params: Mapping[str, Any] | None = None) -> str:
    """The message's duplicate key: its transport id, else a digest of body and parameters."""
    if message_id:
        # An id that is not valid text (bytes from an environment) still names the message.
        return "id:" + str(message_id).encode("utf-8", "surrogateescape").decode("utf-8",
                                                                                 "replace")
    digest = hashlib.sha256(bytes(body))
    digest.update(b"\x00")
    # The parameters as given (not checked: a rejected message has a key too), bytes as bytes.
    items = sorted((name, value if isinstance(value, str) else
                    bytes(value).decode("utf-8", "surrogateescape") if isinstance(value, bytes)
                    else str(value)) for name, value in _param_items(params))
    digest.update(json.dumps(items).encode())
    return "sha256:" + digest.hexdigest()


def parse(body: bytes, params: Mapping[str, Any] | None = None,
          max_bytes: int = 262144) -> Message:
    """Check, decode, classify, validate and normalise one message; raise MessageRejected."""
    p = clean_params(params)
    if len(body) > max_bytes:
        raise MessageRejected("too_large", f"message is {len(body)} bytes; the limit is "
                              f"{max_bytes} bytes", _uuid_hint(p.get("uuid")))
    doc = decode(body)
    kind = classify(doc, p)
    if kind == "delete":
        return _delete(doc)
    if kind == "callback":
        return _callback(doc if doc is not NO_BODY else {}, p)
    if kind == "parameters":
        return _parameters(p)
    return _event(doc if doc is not NO_BODY else {}, p)


def decode(body: bytes) -> Any:
    """The JSON document in ``body`` (``NO_BODY`` when empty); decode_error when it is not."""
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageRejected("decode_error", f"message is not valid UTF-8: byte "
                              f"0x{exc.object[exc.start]:02x} at offset {exc.start}") from None
    if not text.strip():
        return NO_BODY
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                         parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise MessageRejected("decode_error", f"message is not valid JSON: {exc.msg} at line "
                              f"{exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise MessageRejected("decode_error", "message is not acceptable JSON: nested too "
                              "deeply to parse") from None
    except ValueError as exc:  # raised by the hooks below, and for huge integer literals
        raise MessageRejected("decode_error", f"message is not acceptable JSON: "
                              f"{schemas.clip(str(exc), 160)}") from None
    # The strict decoder refuses raw control characters in strings and the bytes were valid
    # UTF-8, so a NUL or an unpaired surrogate can only come from a \u escape: without one,
    # no text needs looking at.
    _check_tree(doc, texts="\\u" in text)
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    # Two values for one key (say two tokens) make a message ambiguous: refuse, don't pick one.
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {shown(k)} in an object")
            seen.add(k)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# The rejection (reason, problem) of each ``jsonvalues.walk`` finding. The decoder yields only
# JSON types, string keys and finite numbers, so the walker's other findings cannot occur in a
# decoded document (were one to, it would still be a decode_error, not a crash).
_REJECTIONS = {
    "deep": ("decode_error", f"nested deeper than {MESSAGE_MAX_DEPTH} levels"),
    "bad_text": ("decode_error", "string contains an unpaired UTF-16 surrogate escape"),
    "bad_key": ("decode_error", "key contains an unpaired UTF-16 surrogate escape"),
    "big_int": ("schema_invalid", "integer does not fit in 64 bits (rule: int64)"),
    "nul_key": ("schema_invalid", "object key contains a NUL character (rule: key)"),
}


def _check_tree(doc: Any, texts: bool = True, depth: int = 1) -> None:
    """Refuse what no store can keep identically: deep nesting, NUL in keys, bad unicode
    (looked at only when ``texts``), integers beyond 64 bits.

    Containers count as levels, the document itself at ``depth``; the path of a problem is
    built only when there is one."""
    try:
        walk(doc, MESSAGE_MAX_DEPTH, depth, leaves=False, texts=texts)
    except Problem as bad:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{_path_part(p)}"
                             for p in reversed(bad.parts))
        reason, problem = _REJECTIONS.get(bad.code, ("decode_error", "not a JSON value"))
        raise MessageRejected(reason, f"{path}: {problem}") from None


def _path_part(key: str) -> str:
    return key if key.isidentifier() else json.dumps(key, ensure_ascii=False)[:40]


def classify(doc: Any, params: Mapping[str, str]) -> str:
    """The message type by the module's rule: delete, callback, event or parameters."""
    if doc is not NO_BODY and not isinstance(doc, dict):
        raise MessageRejected("schema_invalid", f"$: a message must be a JSON object, not "
                              f"{schemas.json_type(doc)} (rule: type)", _uuid_hint(
                                  params.get("uuid")))
    body = doc if doc is not NO_BODY else {}
    if "action" in body:
        return "delete"
    if "status" in body or "status" in params:
        return "callback"
    if "name" in body:
        return "event"
    if not body and "event" in params:
        return "parameters"
    if doc is NO_BODY:
        raise MessageRejected("decode_error", "message is empty: no body, and no 'event' or "
                              "'status' parameter", _uuid_hint(params.get("uuid")))
    return "event"


def _validate(kind: str, instance: Any, uuid: Any, event: Any) -> None:
    errs = schemas.errors(kind, instance)
    if not errs:
        return
    hint = _uuid_hint(uuid)
    if all(e.validator == "enum" and tuple(e.absolute_path) in _EVENT_PATHS for e in errs):
        name = errs[0].instance
        raise MessageRejected("unknown_event", schemas.clip(
            f"{errs[0].json_path}: unknown event {shown(name)}; known events: "
            + ", ".join(schemas.generated_enums()["event_name"])), hint)
    known = event if event in schemas.generated_enums()["event_name"] or event == "delete" \
        else None
    raise MessageRejected("schema_invalid", schemas.describe(errs[0]), hint, known)


def _uuid_hint(value: Any) -> str | None:
    # Echo a uuid into the outcome only when it looks like a job uuid, never arbitrary input.
    try:
        return check_typed(value, "pipelinejob")
    except ValueError:
        return None


def _event(doc: dict, params: Mapping[str, str]) -> EventMessage:
    instance = dict(doc)
    if "name" in instance:
        instance["name"] = lifecycle.fold_event(instance["name"])
    _validate("event", instance, instance.get("uuid"), instance.get("name"))
    token = instance.get("token", params.get("token"))
    return EventMessage("event", instance["uuid"], instance["name"], instance.get("data"), token)


def _parameters(params: Mapping[str, str]) -> EventMessage:
    instance = dict(params)
    instance["event"] = lifecycle.fold_event(instance["event"])
    _validate("parameters", instance, instance.get("uuid"), instance.get("event"))
    data = {"note": instance["note"]} if "note" in instance else None
    return EventMessage("parameters", instance["uuid"], instance["event"], data,
                        instance.get("token"))


def _callback(body: dict, params: Mapping[str, str]) -> EventMessage:
    parameters = dict(params)
    if "event" in parameters:
        parameters["event"] = lifecycle.fold_event(parameters["event"])
    instance = {"parameters": parameters, "body": body}
    _validate("callback", instance, parameters.get("uuid"), parameters.get("event"))
    status = (parameters.get("status") or body["status"]).upper()
    if status == "RUNNING":
        # The body becomes the event's data, one level deeper than it arrived: it must fit
        # there too, or the event it becomes (queued by ``reactor serve``) could not be read.
        try:
            _check_tree(body, texts=False, depth=2)
        except MessageRejected:
            raise MessageRejected("decode_error", f"$: a RUNNING callback's body becomes the "
                                  f"event's data, one level deeper, so it may be nested at "
                                  f"most {MESSAGE_MAX_DEPTH - 1} levels deep", _uuid_hint(
                                      parameters.get("uuid"))) from None
    event = parameters.get("event") or STATUS_EVENTS.get(status, UNKNOWN_STATUS_EVENT)
    return EventMessage("callback", parameters["uuid"], event,
                        callback_data(body, status, parameters.get("note")),
                        parameters.get("token"))


def callback_data(body: dict, status: str, note: str | None = None) -> dict:
    """History data of a callback: the job JSON for RUNNING, else its status and id."""
    if status == "RUNNING":
        data = {k: v for k, v in body.items() if k != "_links"}
        data["status"] = status
    else:
        data = {"status": status}
        if "id" in body:
            data["id"] = body["id"]
        # Agave v2 calls the latest status text lastStatusMessage, Tapis v3 lastMessage.
        for name in ("lastStatusMessage", "lastMessage"):
            if isinstance(body.get(name), str):
                data["message"] = body[name]
                break
    if note is not None:
        data["note"] = note
    return data


def _delete(doc: dict) -> DeleteMessage:
    _validate("delete", doc, doc.get("uuid"), "delete")
    return DeleteMessage(doc["uuid"], bool(doc.get("force", False)), doc.get("token"))
