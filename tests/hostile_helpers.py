"""Helpers of the hostile-input suite (``tests/test_hostile.py``).

- ``World``: a fresh embedded store (SQLite, ``TEST_SECRET``) with one registered pipeline, two
  jobs and an archive root of its own; ``dump()`` is its normalised content (dates, history
  uuids, duplicate keys and the world's own directory replaced), so two worlds that received
  the same legitimate operations compare equal.
- Runners that call the real entry points in-process and check the documented refusal form
  of each surface (contract §6, §9): ``run_cli`` / ``assert_cli_refused`` (click's CliRunner on
  ``reactor.cli.main.main``), ``run_invoke`` / ``assert_invoke_refused`` (``reactor invoke`` through
  the same CLI command, the environment set as the actor platform sets it, raw bytes included),
  ``library_refusal`` (the exception types the client library documents).
- ``leaks``: every token, the admin token and the secret searched in every captured text.
- Hypothesis strategies for near-miss uuids, statuses and event names, hostile data and raw
  JSON texts.
- ``ServeProcess``: ``reactor serve`` as a real process, JSON logs in a file.
"""
from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import httpx
from click.testing import CliRunner
from hypothesis import strategies as st
from transitions.core import MachineError

from conftest import ROOT, TEST_SECRET
from queue_helpers import QueueSetup
from test_serve import ServeProcess as _ServeProcess
from reactor.app import App
from reactor.domain.errors import ArchiveError, AuthError, ManagedPipelineJobError
from reactor.domain.identifiers import job_uuid, pipeline_uuid, typed_uuid
from reactor.domain.tokens import Authority

PIPELINE_NAME = "hostile-tests"
PIPELINE = pipeline_uuid(PIPELINE_NAME)
AUTHORITY = Authority(TEST_SECRET)
# The two jobs every World holds: same uuids and tokens in every world (same pipeline, data
# and secret), so strategies can use them as constants.
JOB_DATA = [{"n": 0}, {"n": 1}]
JOBS = [job_uuid(PIPELINE, [], d) for d in JOB_DATA]
TOKENS = [AUTHORITY.job_token(u) for u in JOBS]
SAMPLE = typed_uuid("sample", "hostile.sample.1")
UNKNOWN_JOB = "107ffff0-0000-5000-8000-000000000000"

# contract §6: the only reasons a refused message may have.
REJECT_REASONS = ("too_large", "decode_error", "schema_invalid", "unknown_event", "unknown_job",
                  "auth_failed", "invalid_transition")
# contract §8 / the library's docstring: what a refusal of the library may raise.
LIBRARY_ERRORS = (TypeError, ValueError, AuthError, MachineError, ManagedPipelineJobError,
                  ArchiveError)
ACTOR_VARS = ("MSG", "uuid", "token", "event", "status", "note", "message_id")
ADMIN = "<admin>"  # placeholder in generated values: the current admin token


def admin_token() -> str:
    return AUTHORITY.admin_token()


class Lazy:
    """A value built when used (``resolve``), shown by a short name: hypothesis prints the
    examples it runs, and a 10,000-deep value cannot be printed."""

    def __init__(self, make: Callable[[], Any], name: str):
        self.make = make
        self.name = name

    def __repr__(self) -> str:
        return self.name


def resolve(value: Any) -> Any:
    """``value`` with the ``ADMIN`` placeholder replaced (strings, lists and dicts) and
    ``Lazy`` values built."""
    if isinstance(value, Lazy):
        return value.make()
    if isinstance(value, str):
        return value.replace(ADMIN, admin_token()) if ADMIN in value else value
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve(v) for v in value)
    if isinstance(value, dict):
        return {resolve(k): resolve(v) for k, v in value.items()}
    return value


def secrets() -> list[str]:
    """Every secret value a process of these tests may hold: job tokens, admin tokens (this
    window and the previous one), the secret."""
    import time

    return [*TOKENS, AUTHORITY.admin_token(), AUTHORITY.admin_token(time.time() - 3600),
            TEST_SECRET]


# --------------------------------------------------------------------------------- leaks
def _pieces(secret: str) -> list[str]:
    # The whole value, and every 16-character piece of a token (a truncated or glued token is
    # a leak too); a masked token shows its first 4 characters only.
    if secret == TEST_SECRET:
        return [secret.lower(), secret[:16].lower()]
    out = {secret.lower()}
    if len(secret) > 16:
        out.update(secret[i:i + 16].lower() for i in range(len(secret) - 15))
    return sorted(out)


def leaks(texts: dict[str, Any], values: Iterable[str] | None = None) -> list[str]:
    """Where (names of ``texts``) any token or secret of ``values`` (default: ``secrets()``)
    appears, in any letter case. Non-string texts are JSON-encoded first."""
    found = []
    values = list(values) if values is not None else secrets()
    for where, text in texts.items():
        if not isinstance(text, str):
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else \
                json.dumps(text, default=str, ensure_ascii=False)
        low = text.lower()
        for secret in values:
            if any(piece in low for piece in _pieces(secret)):
                found.append(f"{where} holds (part of) the secret value {secret[:4]}…: "
                             f"{_context(text, secret)}")
    return found


def _context(text: str, secret: str) -> str:
    low, s = text.lower(), secret.lower()
    for piece in _pieces(secret):
        i = low.find(piece)
        if i >= 0:
            return repr(text[max(0, i - 80):i + len(s) + 40])
    return ""


# --------------------------------------------------------------------------------- logs
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.levelname} {record.name} {record.getMessage()}"
        except Exception as exc:  # noqa: BLE001 - a record that cannot format is a finding
            text = f"UNFORMATTABLE {record.name} {record.msg!r}: {exc!r}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + json.dumps(fields, default=str, ensure_ascii=False)
        self.lines.append(text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def captured_logs() -> Iterator[_Collect]:
    """Every record the ``reactor`` logger (and its children) emits inside the block."""
    logger = logging.getLogger("reactor")
    handler = _Collect()
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _drop_invoke_handlers() -> None:
    # ``reactor invoke`` adds a stderr handler once per process; under CliRunner each run has
    # its own stderr, so the handler of an earlier run must not survive into the next one.
    logger = logging.getLogger("reactor")
    for h in list(logger.handlers):
        if getattr(h, "_reactor_logs", False):
            logger.removeHandler(h)


# --------------------------------------------------------------------------------- worlds
class World:
    """A fresh embedded store with the pipeline ``PIPELINE`` and the jobs ``JOBS``."""

    def __init__(self, base: Path):
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.root = base / "archive"
        self.root.mkdir(exist_ok=True)
        self.store_uri = f"sqlite:///{base / 'store.db'}"
        self.env = {"REACTOR_STORE_URI": self.store_uri, "REACTOR_SECRET": TEST_SECRET,
                    "REACTOR_STATE_DIR": str(base / "state"),
                    "REACTOR_ARCHIVE_ROOT": str(self.root)}
        self.app = App.from_env(self.env)
        self.store = self.app.store
        self.store.add_pipeline({"uuid": PIPELINE, "name": PIPELINE_NAME})
        for data in JOB_DATA:
            record, _ = self.app.jobs.create(PIPELINE, data=data)
            assert record["uuid"] in JOBS
        self.jobs = list(zip(JOBS, TOKENS))

    def close(self) -> None:
        self.app.close()

    # --- the library on this world -------------------------------------------------------------
    @property
    def mongodb(self) -> dict:
        return {"uri": self.store_uri}

    def mpj(self, data: Any = None, **kw):
        from reactor import ManagedPipelineJob

        kw.setdefault("secret", TEST_SECRET)
        kw.setdefault("archive_root", self.root)
        pipelines = kw.pop("pipelines", {"pipeline_uuid": PIPELINE})
        mongodb = kw.pop("mongodb", self.mongodb)
        return ManagedPipelineJob(mongodb, pipelines, data=data, **kw)

    def instance(self, uuid: str, token: str | None = None, **kw):
        from reactor import ManagedPipelineJobInstance

        kw.setdefault("secret", TEST_SECRET)
        kw.setdefault("archive_root", self.root)
        return ManagedPipelineJobInstance(self.mongodb, uuid, token=token, **kw)

    # --- what it holds -------------------------------------------------------------------------
    def job(self, uuid: str) -> dict | None:
        return self.store.get_job(uuid, include_hidden=True)

    def dump(self) -> dict:
        """Jobs (with history), pipelines and the archive tree, normalised."""
        jobs = {}
        for j in self.store.list_jobs(limit=100000, include_hidden=True):
            jobs[j["uuid"]] = normalise(self.store.get_job(j["uuid"], include_hidden=True),
                                        self.base)
        pipelines = sorted((normalise(p, self.base) for p in self.store.list_pipelines()),
                           key=lambda p: json.dumps(p, sort_keys=True))
        tree = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))
        return {"jobs": jobs, "pipelines": pipelines, "archive": tree}


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def normalise(value: Any, base: Path | None = None) -> Any:
    """``value`` with what differs between runs replaced: timestamps, history entry uuids,
    duplicate keys, and the world's directory in paths."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ("created", "updated", "date") and isinstance(v, str) and \
                    _TIMESTAMP.match(v):
                out[k] = "<date>"
            elif k == "key" and isinstance(v, str):
                out[k] = "<key>"
            elif k == "history" and isinstance(v, list):
                out[k] = [{**normalise(h, base), "uuid": "<history>"}
                          if isinstance(h, dict) else h for h in v]
            else:
                out[k] = normalise(v, base)
        return out
    if isinstance(value, list):
        return [normalise(v, base) for v in value]
    if isinstance(value, str) and base is not None:
        return value.replace(str(base), "<base>")
    return value


# --------------------------------------------------------------------------------- the CLI
@dataclass
class CliResult:
    args: tuple
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    logs: str
    traceback: str = ""

    def texts(self) -> dict[str, str]:
        return {"stdout": self.stdout, "stderr": self.stderr, "log records": self.logs,
                "exception": self.traceback}

    def __str__(self) -> str:
        return (f"reactor {' '.join(map(repr, self.args))} -> exit {self.code}\n"
                f"stdout: {self.stdout[:600]!r}\nstderr: {self.stderr[:600]!r}\n"
                f"{self.traceback[-1500:]}")


def run_cli(env: dict, *args: str, extra_env: dict | None = None) -> CliResult:
    """``reactor ARGS`` in-process (click's CliRunner) with exactly ``env`` + ``extra_env``
    as the reactor's environment (actor variables unset unless given)."""
    import traceback as _tb

    from reactor.cli.main import main

    full = {name: None for name in ACTOR_VARS}
    full.update(env)
    full.update(extra_env or {})
    runner = CliRunner()
    _drop_invoke_handlers()
    with captured_logs() as logs:
        try:
            result = runner.invoke(main, list(args), env=full, catch_exceptions=True)
        finally:
            _drop_invoke_handlers()
    exc = result.exception
    tb = ""
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
    else:
        exc = None
    return CliResult(tuple(args), result.exit_code, result.stdout, result.stderr, exc,
                     logs.text, tb)


def assert_cli_refused(result: CliResult, *names: str | tuple[str, ...]) -> None:
    """The CLI's refusal: exit 2, nothing on stdout, an error line on stderr naming the problem
    (each of ``names``: a word, or a tuple of alternatives, case-insensitive), never an
    internal error or a traceback."""
    assert result.exception is None, f"uncaught exception (a traceback):\n{result}"
    assert result.code == 2, f"expected exit 2 (refused), got {result.code}:\n{result}"
    assert result.stdout == "", f"a refused command printed to stdout:\n{result}"
    err = result.stderr
    assert re.search(r"^(reactor: error: |Error: )", err, re.M), \
        f"no `reactor: error:` / `Error:` line on stderr:\n{result}"
    assert "internal error" not in err.lower(), f"an internal error, not a refusal:\n{result}"
    assert "Traceback" not in err, f"a traceback on stderr:\n{result}"
    assert "codec can't" not in err and "RecursionError" not in err, \
        f"a raw UnicodeError/RecursionError message, not a clear error:\n{result}"
    for name in names:
        options = (name,) if isinstance(name, str) else name
        assert any(o.lower() in err.lower() for o in options), \
            f"the error does not name the problem ({' or '.join(options)}):\n{result}"


# --------------------------------------------------------------------------------- invoke
@dataclass
class InvokeResult:
    code: int
    outcome: dict | None
    stdout: str
    stderr: str
    logs: str
    cli: CliResult

    @property
    def label(self) -> str | None:
        return (self.outcome or {}).get("outcome")

    def texts(self) -> dict[str, str]:
        return self.cli.texts()

    def __str__(self) -> str:
        return str(self.cli)


def _env_text(value: str | bytes) -> str:
    # The environment holds bytes; os.environ shows them decoded with surrogateescape, which is
    # how a raw (non-UTF-8) value reaches the process.
    return os.fsdecode(value) if isinstance(value, bytes) else value


def run_invoke(env: dict, msg: str | bytes | None = None, message_id: str | None = None,
               **params: str | bytes) -> InvokeResult:
    """``reactor invoke`` in-process: ``MSG`` = ``msg`` (bytes stay raw), the parameters as
    environment variables of their name, exactly as the actor platform sets them."""
    extra: dict[str, str | None] = {}
    if msg is not None:
        extra["MSG"] = _env_text(msg)
    if message_id is not None:
        extra["message_id"] = message_id
    for name, value in params.items():
        extra[name] = _env_text(value)
    result = run_cli(env, "invoke", extra_env=extra)
    lines = result.stdout.splitlines()
    outcome = None
    if len(lines) == 1:
        try:
            outcome = json.loads(lines[0])
        except ValueError:
            outcome = None
    return InvokeResult(result.code, outcome, result.stdout, result.stderr, result.logs, result)


def assert_invoke_one_line(res: InvokeResult) -> None:
    assert res.cli.exception is None, f"uncaught exception:\n{res}"
    assert "Traceback" not in res.stderr, f"a traceback on stderr:\n{res}"
    assert res.outcome is not None and res.stdout.count("\n") == 1, \
        f"expected exactly one JSON outcome line on stdout:\n{res}"


def assert_invoke_refused(res: InvokeResult, reasons: Iterable[str] = REJECT_REASONS) -> None:
    """Invoke's refusal: exit 1, one JSON line ``rejected:<reason>`` with a documented reason
    (``reasons``), never ``retry:*``, no traceback."""
    reasons = tuple(reasons)
    assert_invoke_one_line(res)
    label = res.label
    assert label and not label.startswith("retry:"), \
        f"bad input treated as the reactor's own failure ({label}):\n{res}"
    assert label in {f"rejected:{r}" for r in reasons}, \
        f"expected rejected:{'|'.join(reasons)}, got {label}:\n{res}"
    assert res.code == 1, f"a rejection must exit 1, got {res.code}:\n{res}"
    assert res.outcome.get("detail"), f"the rejection has no detail:\n{res}"


def assert_invoke_applied(res: InvokeResult) -> None:
    assert_invoke_one_line(res)
    assert (res.code, res.label) == (0, "applied"), f"expected applied:\n{res}"


def event_body(uuid: Any, name: Any, token: Any, data: Any = None, raw_data: str | None = None
               ) -> str:
    """An event message; ``raw_data`` is spliced in as JSON text (duplicate keys, NaN, …)."""
    doc: dict[str, Any] = {"uuid": uuid, "name": name}
    if token is not None:
        doc["token"] = token
    if data is not None:
        doc["data"] = data
    text = json.dumps(resolve(doc), ensure_ascii=True)
    if raw_data is not None:
        text = text[:-1] + ', "data": ' + raw_data + "}"
    return text


# --------------------------------------------------------------------------------- library
def library_refusal(call: Callable[[], Any], *names: str | tuple[str, ...],
                    types: tuple[type, ...] = LIBRARY_ERRORS) -> BaseException:
    """Run ``call``; it must raise one of the documented library errors (``types``), never a
    UnicodeError (a ValueError subclass), and its message must name the problem."""
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - judged below
        ok = isinstance(exc, types) and not isinstance(exc, UnicodeError)
        text = str(exc)
        assert ok, (f"expected one of {[t.__name__ for t in types]} (never UnicodeError, "
                    f"RecursionError, KeyError, store errors), got {type(exc).__module__}."
                    f"{type(exc).__name__}: {text[:400]!r}")
        for name in names:
            options = (name,) if isinstance(name, str) else name
            assert any(o.lower() in text.lower() for o in options), \
                f"the error does not name the problem ({' or '.join(options)}): " \
                f"{type(exc).__name__}: {text[:400]!r}"
        return exc
    raise AssertionError("the hostile call was accepted; a refusal was expected")


@contextmanager
def closing_all() -> Iterator[list]:
    """Collect library objects; close them all at the end."""
    made: list = []
    try:
        yield made
    finally:
        for m in made:
            try:
                m.close()
            except Exception:  # noqa: BLE001
                pass


# --------------------------------------------------------------------------------- strategies
# White space str.strip() removes (and JSON/HTTP tools may add), invisible format characters,
# and control characters: none of them belongs in a uuid, a status or an event name.
WHITESPACE = ["\n", "\r", "\r\n", "\t", " ", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f",
              "\x85", "\xa0", "\u1680", "\u2000", "\u2002", "\u2003", "\u2007", "\u2009",
              "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e"]
CONTROL = [chr(c) for c in range(1, 32) if chr(c) not in "\n\r\t\x0b\x0c\x1c\x1d\x1e\x1f"] + \
    ["\x7f", "\x9b"]
PADDING = WHITESPACE + INVISIBLE + CONTROL
# Characters whose case mapping or compatibility form is ASCII: only ASCII case is ignored.
LOOKALIKES = {"s": ["\u017f"], "i": ["\u0131", "\u0130"], "k": ["\u212a"], "fi": ["\ufb01"],
              "a": ["\u0430"], "e": ["\u0435", "\uff45"], "r": ["\uff52"], "n": ["\uff4e"]}


def _pad(value: str, pad: str, where: str) -> str:
    if where == "before":
        return pad + value
    if where == "after":
        return value + pad
    if where == "both":
        return pad + value + pad
    middle = max(1, len(value) // 2)
    return value[:middle] + pad + value[middle:]


def padded(values: list[str], pads: list[str] = PADDING, inside: bool = True):
    """``values`` with white space / invisible / control characters around (or inside) them."""
    wheres = ["before", "after", "both"] + (["inside"] if inside else [])
    return st.builds(_pad, st.sampled_from(values), st.sampled_from(pads),
                     st.sampled_from(wheres))


def _lookalike(value: str, data: st.DataObject | None = None) -> list[str]:
    out = []
    for ascii_, subs in LOOKALIKES.items():
        if ascii_ in value:
            for sub in subs:
                out.append(value.replace(ascii_, sub, 1))
    return out


EVENTS = ["create", "run", "update", "resource", "fail", "finish", "index", "indexed",
          "validate", "validated", "reject", "finalize", "retire", "reset", "ready"]
# Events the job tokens may send (reset and ready need the admin token).
JOB_EVENTS = [e for e in EVENTS if e not in ("create", "reset", "ready")]


def near_miss_events(events: list[str] = EVENTS, controls: bool = True):
    """Event names that are not event names: padded with white space (any Unicode space, a
    trailing newline), invisible or control characters, or with a non-ASCII look-alike letter
    (whose casefold/NFKC form would be the event)."""
    bases = events + [e.upper() for e in events] + [e.title() for e in events]
    pads = WHITESPACE + INVISIBLE + (CONTROL if controls else [])
    lookalikes = sorted({v for e in bases for v in _lookalike(e)})
    return padded(bases, pads) | st.sampled_from(lookalikes)


def ascii_case_variants(events: list[str] = EVENTS):
    """The same events in other ASCII letter cases (these must work)."""
    return st.builds(lambda e, flips: "".join(c.upper() if f else c for c, f in zip(e, flips)),
                     st.sampled_from(events), st.lists(st.booleans(), min_size=12, max_size=12))


STATUSES = ["RUNNING", "FINISHED", "FAILED", "PENDING", "QUEUED", "HEARTBEAT", "KILLED"]


def near_miss_statuses(controls: bool = True):
    """Statuses that are not statuses: padded, or with a look-alike letter."""
    pads = WHITESPACE + INVISIBLE + (CONTROL if controls else [])
    lookalikes = sorted({v for s in STATUSES for v in _lookalike(s.lower())})
    return padded(STATUSES, pads) | st.sampled_from(lookalikes) | \
        st.sampled_from(["RUNNING\n", "FINISHED\n", "FINISHED\r\n", " FINISHED"])


def _uuid_variants(valid: str) -> list[str]:
    hexed = valid.replace("-", "")
    return [
        valid.upper(), valid[:3].upper() + valid[3:], "106" + valid[3:], "108" + valid[3:],
        "000" + valid[3:], hexed, valid[:-1], valid + "0", "{" + valid + "}",
        "urn:uuid:" + valid, valid.replace("-", "_"), valid[:9] + "\u0663" + valid[10:],
        valid[:9] + "\uff10" + valid[10:], valid.replace("a", "\u0430", 1) if "a" in valid
        else valid.replace("-", "\u2010", 1), '{"$ne": null}', "$where", "", " ",
    ]


def near_miss_uuids(valid: list[str] = JOBS, tokens: list[str] = TOKENS, nul: bool = True,
                    empty: bool = True):
    """Values near a job uuid: padded (a trailing newline first of all), upper case, another
    prefix, mangled, an operator object's text, a token (or the secret) in the uuid slot."""
    pads = WHITESPACE + INVISIBLE + CONTROL + (["\x00"] if nul else [])
    variants = sorted({v for u in valid for v in _uuid_variants(u)})
    if not empty:
        variants = [v for v in variants if v.strip()]
    return (padded(valid, pads, inside=False) | st.sampled_from(variants)
            | st.sampled_from(tokens + [ADMIN, TEST_SECRET]))


def surrogate_texts():
    """Text holding a lone (unpaired) UTF-16 surrogate."""
    return st.builds(lambda a, s, b: a + s + b, st.text("abc", max_size=3),
                     st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\udcff",
                                      "\udc80"]), st.text("xyz", max_size=3))


def nested(depth: int, leaf: Any = 1, kind: str = "dict") -> Any:
    """A value ``depth`` containers deep (the outermost counts as 1)."""
    value = leaf
    for _ in range(depth):
        value = {"a": value} if kind == "dict" else [value]
    return value


def hostile_data():
    """Python values the library must refuse as ``data`` (ValueError/TypeError, never a
    UnicodeError or RecursionError): deep nesting, NUL in keys, lone surrogates in keys or
    values, integers beyond 64 bits, NaN/infinity, values JSON cannot hold."""
    return st.one_of(
        st.sampled_from([65, 66, 100, 500, 10_000]).flatmap(
            lambda d: st.sampled_from(["dict", "list"]).map(
                lambda kind: Lazy(lambda: {"deep": nested(d, kind=kind)},
                                  f"{{'deep': nested({d}, kind={kind!r})}}"))),
        st.sampled_from([{"a\x00b": 1}, {"\x00": "x"}, {"ok": {"k\x00": 1}},
                         {"a": [{"\x00$set": 1}]}]),
        surrogate_texts().flatmap(lambda s: st.sampled_from(
            [{"a": s}, {s: 1}, {"a": [s]}, {"a": {"b": s}}])),
        st.sampled_from([{"a": 2 ** 63}, {"a": -(2 ** 63) - 1}, {"a": 10 ** 30},
                         {"a": [2 ** 64]}]),
        st.sampled_from([{"a": float("nan")}, {"a": float("inf")}, {"a": [float("-inf")]}]),
        st.sampled_from([{1: "x"}, {"a": {1, 2}}, {"a": b"bytes"}, {"a": object()},
                         {("t",): 1}]),
    )


def hostile_json_texts(shallow: bool = False):
    """JSON texts (for ``--data`` and a message's ``data``) the contract refuses: duplicate
    keys, NaN/Infinity, out-of-range numbers, nesting beyond the limit (up to 10,000 deep),
    NUL in a key, lone surrogates (escaped, or raw from a non-UTF-8 argument)."""
    deep = [65, 70, 100] + ([] if shallow else [10_000])
    return st.one_of(
        st.sampled_from(['{"a": 1, "a": 2}', '{"a": {"b": 1, "b": 1}}',
                         '{"x": [{"k": 1, "k": 2}]}', '{"token": "a", "token": "b"}']),
        st.sampled_from(['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}',
                         '{"a": 1e999}', '{"a": 99999999999999999999}',
                         '{"a": -9223372036854775809}']),
        st.sampled_from(deep).map(lambda n: '{"a": ' * n + "1" + "}" * n),
        st.sampled_from(deep).map(lambda n: '{"a": ' + "[" * n + "]" * n + "}"),
        st.sampled_from(['{"a\\u0000": 1}', '{"\\u0000": 1}', '{"a": {"\\u0000$": 1}}']),
        st.sampled_from(['{"a": "\\ud800"}', '{"\\udfff": 1}', '{"a": ["x\\udc80y"]}',
                         '{"a": "\udcff"}', '{"\udc80": 1}']),
    )


# --------------------------------------------------------------------------------- serve
class ServeProcess(_ServeProcess):
    """``reactor serve`` as a real process (tests/test_serve.py), with its log and metrics
    read as the hostile tests need them."""

    def log_lines(self, start: int = 0) -> list[dict]:
        """The JSON log lines from character ``start`` on (a line that is not JSON is kept
        as ``{"unparsed": line}``)."""
        out = []
        # JSON lines end at "\n" only (str.splitlines would also split at U+2028, NEL, …).
        for line in self.log()[start:].split("\n"):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"unparsed": line})
        return out

    def metrics(self) -> dict[tuple[str, str], float]:
        """``reactor_http_requests_total`` by (endpoint, status)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for labels, value in re.findall(r"^reactor_http_requests_total\{([^}]*)\}\s+(\S+)$",
                                        text, re.M):
            d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            out[(d.get("endpoint", ""), d.get("status", ""))] = float(value)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def problems_in_serve_log(lines: list[dict]) -> list[str]:
    """ERROR lines, 5xx answers and tracebacks in serve's log lines."""
    out = []
    for line in lines:
        text = json.dumps(line, ensure_ascii=False)
        if line.get("level") in ("ERROR", "CRITICAL") or "Traceback" in text or \
                (isinstance(line.get("status"), int) and line["status"] >= 500) or \
                "unparsed" in line:
            out.append(text[:800])
    return out


def subprocess_env(world: World) -> dict:
    """The environment of a real ``reactor`` subprocess on ``world`` (bytes keys/values)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REACTOR_") and k not in ACTOR_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                      str(ROOT)]))
    env.update(world.env)
    return {os.fsencode(k): os.fsencode(v) for k, v in env.items()}


__all__ = [name for name in dir() if not name.startswith("_")]
