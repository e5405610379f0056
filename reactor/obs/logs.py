"""Logging setup: one JSON object per line for machines, a readable line for terminals.

``setup_logging`` installs one handler on the ``reactor`` logger (and any other loggers named,
e.g. ``uvicorn``) with the formatter the ``log_format`` key chooses: ``json``, ``console``, or
``auto`` (console when the stream is a terminal, JSON otherwise). Token masking is one filter
on that handler, ``MaskTokens``: it masks the record (message, fields, traceback) before any
formatter sees it, so a token that slipped into a message, a field or a traceback never
reaches the output, and the formatters only format.

Structured fields travel in ``extra={"fields": {...}}``; ``outcome_fields`` gives the fields of
the one line per processed message (message id, job uuid, event, outcome, attempt, latency).

The formatters are written here rather than taken from python-json-logger: the line's shape
(envelope keys first, a field never overwriting them, Unicode line separators escaped, the
traceback under ``exc``) would need about as much code on top of the library as the formatter
itself is.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping, TextIO

from ..domain.tokens import SECRET_NAMES, mask, mask_text

FORMATS = ("json", "console", "auto")
FIELDS_ATTR = "fields"
# Marks handlers installed here, so a second setup replaces them instead of doubling lines.
_MARK = "_reactor_logs"
# Field names whose values are secrets: shown masked whatever they hold.
_SECRET_FIELDS = frozenset(SECRET_NAMES)
_PLAIN = (bool, int, float)


def _clean(value: Any) -> Any:
    """A field value safe to log: strings masked, containers walked, the rest as they are."""
    # Plain types first: this runs for every field of every per-message line, and the
    # ``Mapping`` check goes through the ABC machinery.
    if isinstance(value, str):
        return mask_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (dict, Mapping)):
        out = {}
        for k, v in value.items():
            name = k if type(k) is str else str(k)
            if len(name) >= 16 or not name.isidentifier():  # a plain short name holds no token
                name = mask_text(name)
            if name.lower() in _SECRET_FIELDS:
                out[name] = mask(v)
            elif type(v) is str:  # the common case, without another call
                out[name] = mask_text(v)
            elif v is None or type(v) in _PLAIN:
                out[name] = v
            else:
                out[name] = _clean(v)
        return out
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return mask_text(str(value))


class MaskTokens(logging.Filter):
    """Masks tokens in a record in place: its message, its fields and its traceback text.

    In place, so that the handlers after this one see the masked record too; masking is
    idempotent, so a record that passes two such filters comes out the same."""

    _traceback = logging.Formatter()  # the standard traceback text, as both formatters show it

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask ``record``; always let it through."""
        record.msg, record.args = mask_text(record.getMessage()), None
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping):
            setattr(record, FIELDS_ATTR, _clean(fields))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._traceback.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


def record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    """The structured fields attached to ``record``, or an empty dict."""
    fields = getattr(record, FIELDS_ATTR, None)
    return fields if isinstance(fields, Mapping) else {}


_last_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _timestamp(record: logging.LogRecord) -> str:
    # One line per message: format the date and time once per second, not once per line.
    global _last_second
    second = int(record.created)
    cached = _last_second  # one read: a pair written by one assignment, safe across threads
    if cached[0] != second:
        cached = (second, datetime.fromtimestamp(second, timezone.utc)
                  .strftime("%Y-%m-%dT%H:%M:%S."))
        _last_second = cached
    return f"{cached[1]}{int(record.msecs):03d}Z"


# Valid JSON, but line breaks to readers that split on Unicode line boundaries (Python's
# splitlines, some log shippers): escaped, so one record stays one line.
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
# One encoder for every line (json.dumps with options builds one per call); default=str: a
# field of an unexpected type must not cost the whole line.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        doc: dict[str, Any] = {"time": _timestamp(record), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for key, value in record_fields(record).items():
            # Fields never overwrite the envelope: a field named "message" stays distinct.
            doc[key if key not in doc else f"field_{key}"] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        line = _LINE_ENCODER.encode(doc)
        if not line.isascii():  # a search per separator is far cheaper than a translate
            for char, escaped in _LINE_BREAKS:
                if char in line:
                    line = line.replace(char, escaped)
        return line


class ConsoleFormatter(logging.Formatter):
    """``time LEVEL logger message key=value …`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as one readable line (plus a traceback, if any)."""
        text = super().format(record)
        fields = record_fields(record)
        if fields:
            extra = " ".join(f"{k}={_console_value(v)}" for k, v in fields.items()
                             if v is not None)
            head, sep, tail = text.partition("\n")  # fields go on the first line
            text = f"{head} [{extra}]{sep}{tail}" if extra else text
        return text


def _console_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


class LineHandler(logging.StreamHandler):
    """A ``StreamHandler`` that, inside ``batched()``, writes the calling thread's lines
    together at the end of the block: one write and one flush instead of one per line."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self._held = threading.local()  # per thread: the lines held back, and the depth

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record's line now, or keep it for the end of this thread's batch."""
        lines = getattr(self._held, "lines", None)
        if lines is None:
            super().emit(record)
            return
        try:
            lines.append(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own rule: report, never raise
            self.handleError(record)

    def hold(self) -> None:
        """Keep this thread's lines until the matching ``write_held``."""
        if getattr(self._held, "lines", None) is None:
            self._held.lines, self._held.depth = [], 0
        self._held.depth += 1

    def write_held(self) -> None:
        """Write the lines held since the outermost ``hold``, in one go."""
        self._held.depth -= 1
        if self._held.depth:
            return
        lines, self._held.lines = self._held.lines, None
        if lines:
            with self.lock:
                self.stream.write("".join(lines))
                self.flush()


@contextmanager
def batched(logger: str = "reactor") -> Iterator[None]:
    """Write the lines this thread logs inside the block together, at its end (a consumer logs
    a line per message, and a write per line costs as much as the rest of the line)."""
    handlers = [h for h in logging.getLogger(logger).handlers if isinstance(h, LineHandler)]
    for handler in handlers:
        handler.hold()
    try:
        yield
    finally:
        for handler in handlers:
            handler.write_held()


def choose_format(log_format: str, stream: TextIO) -> str:
    """``json`` or ``console``: ``auto`` is console on a terminal, JSON otherwise."""
    if log_format not in FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    if log_format != "auto":
        return log_format
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or file-less stream is no terminal
        return "json"


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter for a resolved format (``json`` or ``console``)."""
    return JsonFormatter() if fmt == "json" else ConsoleFormatter()


def make_handler(stream: TextIO, fmt: str) -> LineHandler:
    """A handler writing to ``stream`` in a resolved format, tokens masked by its filter."""
    handler = LineHandler(stream)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(MaskTokens())
    return handler


def setup_logging(level: str = "INFO", log_format: str = "auto", stream: TextIO | None = None,
                  loggers: Iterable[str] = ("reactor",)) -> logging.Handler:
    """Send the named loggers to ``stream`` (stderr) in the chosen format; returns the handler.

    Calling it again replaces the handler installed before (no doubled lines). Process-wide,
    log records stop collecting the thread and process (neither format shows them): meant for
    the ``reactor`` commands, which own their process."""
    stream = stream if stream is not None else sys.stderr
    # Neither format shows the thread or the process, so do not collect them for every record
    # (the logging HOWTO's "Optimization" switches; a consumer writes a line per message). The
    # caller's file and line are still looked up: the only switch for that is a private name.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = make_handler(stream, choose_format(log_format, stream))
    setattr(handler, _MARK, True)
    for name in loggers:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _MARK, False)
                    or getattr(h, "_reactor_invoke", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        if name != "reactor":
            logger.propagate = False  # e.g. uvicorn: one line, not one per ancestor handler
    return handler


def outcome_fields(outcome: Any, *, message_id: str | None, attempt: int | None,
                   latency_s: float | None, action: str | None = None) -> dict:
    """The structured fields of one processed message (for ``extra={"fields": …}``).

    ``outcome`` is a ``reactor.domain.outcomes.Outcome``; ``action`` says what was done with the
    message (ack, retry_later, dead_letter)."""
    fields = {"message_id": message_id, "job_uuid": outcome.job_uuid, "event": outcome.event,
              "outcome": outcome.label, "state": outcome.state, "attempt": attempt,
              "latency_ms": None if latency_s is None else round(latency_s * 1000, 3)}
    if action is not None:
        fields["action"] = action
    return fields
