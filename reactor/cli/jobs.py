"""Commands that need no broker: ``jobs``, ``fsm``, ``invoke``, ``replay`` and ``demo``.

Tables for people by default, ``--json`` for machines. Every failure is one line on stderr and
a non-zero exit (a traceback only with ``reactor --debug``).
"""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from .main import app_from_context, handle_error
from ..domain.lifecycle import STATE_NAMES

PROGRESS_MIN_STEPS = 20


def one_line_errors(command: Callable) -> Callable:
    """Turn any exception of ``command`` into one error line (``--debug`` keeps tracebacks)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
            from ..domain.errors import ReactorError

            if isinstance(exc, (ReactorError, ValueError, TypeError, LookupError, OSError)):
                handle_error(exc)
            handle_error(RuntimeError(f"internal error: {type(exc).__name__}: {exc} (run "
                                      "`reactor --debug …` for the traceback)"))

    return wrapper


def _table(rows: list[tuple], header: tuple) -> str:
    rows = [tuple("" if c is None else str(c) for c in r) for r in [header, *rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _entries_shown(history: list) -> list:
    """History entries as printed: a duplicate key quotes the sender's message id, so it is
    masked like any text that leaves the reactor (a token sent as a message id)."""
    from ..domain.tokens import mask_text

    return [{**h, "key": mask_text(h["key"])} if isinstance(h.get("key"), str) else h
            for h in history]


def _record_shown(record: dict) -> dict:
    """A job record as printed (see ``_entries_shown``)."""
    if "history" not in record:
        return record
    return {**record, "history": _entries_shown(record["history"])}


def _short(value: Any, limit: int = 60) -> str:
    if value in (None, {}):
        return ""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def decode_option(option: str, text: str) -> Any:
    """The JSON value of a command-line option, decoded by the message contract's rules (no
    duplicate keys, NaN, deep nesting or bad Unicode), so the CLI is no looser than a message."""
    from ..contract.messages import NO_BODY, MessageRejected, decode

    try:
        # Bytes of an argument that were not UTF-8 reach Python as lone surrogates: back to
        # those bytes, which the decoder names; any other lone surrogate stays invalid too.
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    try:
        value = decode(raw)
    except MessageRejected as exc:
        detail = exc.detail
        raise ValueError(f"{option} {detail[len('message '):]}" if detail.startswith("message ")
                         else f"{option}: {detail}") from None
    if value is NO_BODY:
        raise ValueError(f"{option} is empty; give a JSON value")
    return value


# --- reactor jobs ---------------------------------------------------------------------------
@click.group()
def jobs() -> None:
    """Create and inspect pipeline jobs."""


@jobs.command("create")
@click.option("--pipeline", "pipeline_uuid", required=True, metavar="106…",
              help="Uuid of a registered pipeline.")
@click.option("--data", "data_text", default="{}", show_default=True, metavar="JSON",
              help="The job's data: a JSON object (part of the job's identity).")
@click.option("--uuid", "uuid_", metavar="107…", help="Use this job uuid instead of the "
              "derived one.")
@click.option("--child-of", multiple=True, metavar="UUID", help="Uuid this job is a child of "
              "(repeatable).")
@click.option("--archive-path", default="", help="Where the job's outputs are archived.")
@click.option("--json", "as_json", is_flag=True, help="Print uuid, token and state as JSON.")
@one_line_errors
def jobs_create(pipeline_uuid: str, data_text: str, uuid_: str | None, child_of: tuple,
                archive_path: str, as_json: bool) -> None:
    """Create a job (or find the one with the same identity); print its uuid and token."""
    data = decode_option("--data", data_text)
    if not isinstance(data, dict):
        raise ValueError(f"--data must be a JSON object, e.g. '{{\"sample\": \"A\"}}', not "
                         f"{type(data).__name__}")
    app = app_from_context()
    try:
        record, created = app.jobs.create(pipeline_uuid, data=data, child_of=list(child_of),
                                          uuid=uuid_, archive_path=archive_path)
        token = app.authority.job_token(record["uuid"])
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps({"uuid": record["uuid"], "token": token, "state": record["state"],
                               "created": created}, sort_keys=True))
        return
    if not created:
        click.echo(f"a job with this identity already exists (state {record['state']})",
                   err=True)
    click.echo(f"uuid   {record['uuid']}")
    click.echo(f"token  {token}")


@jobs.command("list")
@click.option("--state", type=click.Choice(STATE_NAMES, case_sensitive=False),
              help="Only jobs in this state.")
@click.option("--pipeline", "pipeline_uuid", metavar="106…", help="Only jobs of this pipeline.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--hidden", is_flag=True, help="Include soft-deleted (hidden) jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of job records.")
@one_line_errors
def jobs_list(state: str | None, pipeline_uuid: str | None, limit: int, hidden: bool,
              as_json: bool) -> None:
    """List jobs, newest first."""
    app = app_from_context()
    try:
        found = app.store.list_jobs(state=state.upper() if state else None,
                                    pipeline_uuid=pipeline_uuid, limit=limit,
                                    include_hidden=hidden)
    finally:
        app.close()
    if as_json:
        click.echo(_dump([_record_shown(j) for j in found]))
        return
    if not found:
        click.echo("no jobs found", err=True)
        return
    rows = [(j["uuid"], j["state"], j.get("last_event"), j.get("updated"), j.get("revision"),
             j.get("pipeline_uuid")) for j in found]
    click.echo(_table(rows, ("UUID", "STATE", "LAST EVENT", "UPDATED", "REV", "PIPELINE")))


def _get_job(app, uuid: str, hidden: bool = True) -> dict:
    from ..domain.errors import UnknownJob
    from ..domain.identifiers import check_typed

    check_typed(uuid, "pipelinejob")
    record = app.store.get_job(uuid, include_hidden=hidden)
    if record is None:
        raise UnknownJob(f"no job with uuid {uuid}")
    return record


@jobs.command("show")
@click.argument("uuid")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@one_line_errors
def jobs_show(uuid: str, as_json: bool) -> None:
    """Show one job."""
    app = app_from_context()
    try:
        record = _get_job(app, uuid)
    finally:
        app.close()
    if as_json:
        click.echo(_dump(_record_shown(record)))
        return
    fields = ("uuid", "state", "last_event", "pipeline_uuid", "archive_system", "archive_path",
              "session", "agent", "task", "created", "updated", "revision")
    rows = [(f, record.get(f)) for f in fields]
    rows.append(("visible", record.get("_visible", True)))
    rows += [(f, ", ".join(record.get(f) or []) or "-")
             for f in ("child_of", "generated_by", "acted_on", "acted_using")]
    rows.append(("data", _short(record.get("data"), 100) or "{}"))
    rows.append(("history", f"{len(record.get('history', []))} entries "
                            f"(`reactor jobs history {uuid}`)"))
    click.echo(_table(rows, ("FIELD", "VALUE")))


@jobs.command("history")
@click.argument("uuid")
@click.option("--json", "as_json", is_flag=True, help="Print the history entries as JSON.")
@one_line_errors
def jobs_history(uuid: str, as_json: bool) -> None:
    """Show one job's history, oldest first, with the state each event led to."""
    from ..ops.demo import states_after

    app = app_from_context()
    try:
        record = _get_job(app, uuid)
    finally:
        app.close()
    history = record.get("history", [])
    if as_json:
        click.echo(_dump(_entries_shown(history)))
        return
    rows = [(i, h.get("date"), h.get("name"), s, _short(h.get("data")))
            for i, (h, s) in enumerate(zip(history, states_after(history)), 1)]
    click.echo(_table(rows, ("#", "DATE", "EVENT", "STATE", "DATA")))


# --- reactor fsm ----------------------------------------------------------------------------
@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "mermaid", "dot"]),
              default="table", show_default=True, help="The table, or a diagram.")
@one_line_errors
def fsm(fmt: str) -> None:
    """Print the job lifecycle: the transition table, or a Mermaid/Graphviz diagram."""
    from ..docgen.lifecycle_text import fsm_dot, fsm_mermaid

    click.echo({"table": fsm_table, "mermaid": fsm_mermaid, "dot": fsm_dot}[fmt]())


def fsm_table() -> str:
    """The transition table as text, one row per event."""
    from ..docgen.lifecycle_text import sources_text
    from ..domain.lifecycle import SAME, STATES, TRANSITIONS

    rows = [(t.event, sources_text(t), "same state" if t.dest == SAME else t.dest,
             "admin" if t.admin else "", t.description) for t in TRANSITIONS]
    states = [(s.name, s.description) for s in STATES]
    return (_table(rows, ("EVENT", "FROM", "TO", "TOKEN", "DESCRIPTION")) + "\n\n"
            + _table(states, ("STATE", "MEANING")))


# --- reactor invoke ------------------------------------------------------------------------
@click.command()
@click.pass_context
def invoke(ctx: click.Context) -> None:
    """Process one message from $MSG (Abaco actor mode); print one JSON outcome line.

    Parameters come from the environment variables uuid, token, event, status and note;
    message_id (optional) is the duplicate key. Exit 0 for applied or duplicate, 1 otherwise,
    2 when the reactor is misconfigured.
    """
    from ..ingress import invoke as actor
    from ..obs.logs import setup_logging

    debug = bool(ctx.find_root().params.get("debug"))
    app = app_from_context()
    try:
        # Readable lines on stderr, tokens masked: stdout carries only the outcome line.
        setup_logging(app.settings.log_level, "console", sys.stderr)
        invocation = actor.from_environment()
        outcome = actor.invoke(lambda: _pipeline_or_config_error(app), invocation, debug)
    finally:
        app.close()
    actor.emit(outcome)
    ctx.exit(outcome.exit_code)


def _pipeline_or_config_error(app):
    # A configuration problem (say, no secret) is not an outcome of the message: exit 2.
    from ..domain.errors import ConfigError

    try:
        app.authority
    except ConfigError as exc:
        handle_error(exc)
    return app.pipeline()


# --- reactor replay ------------------------------------------------------------------------
@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--store", "store_uri", metavar="URI", help="Replay into this store (mongodb://… "
              "or sqlite:///…) instead of a fresh embedded one. Replayed jobs are new jobs.")
@click.option("--failures-only", is_flag=True, help="List only the steps that mismatched.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per step.")
@one_line_errors
def replay(paths: tuple[str, ...], store_uri: str | None, failures_only: bool,
           as_json: bool) -> None:
    """Replay message fixtures (files or folders) and compare outcomes with expectations."""
    from ..ops import replay as rp

    app = app_from_context()
    max_bytes = app.settings.max_message_bytes
    examples = rp.load(paths)
    total = sum(len(e.steps) for e in examples)
    store, tmp = rp.open_replay_store(store_uri)
    try:
        import secrets

        from ..engine.jobs import Jobs
        from ..domain.tokens import Authority

        replayer = rp.Replayer(Jobs(store, Authority(secrets.token_hex(32))), max_bytes)
        results = _run_with_progress(examples, replayer, total)
    finally:
        store.close()
        if tmp is not None:
            tmp.cleanup()
    if as_json:
        for r in results:
            if failures_only and r.ok:
                continue
            click.echo(json.dumps({"step": r.step, "expected": r.expected, "got": r.got,
                                   "expected_state": r.expected_state, "state": r.got_state,
                                   "ok": r.ok, "problems": list(r.problems),
                                   "detail": r.outcome.detail if r.outcome else ""},
                                  sort_keys=True))
    else:
        click.echo(rp.format_table(results, failures_only))
    if not all(r.ok for r in results):
        sys.exit(1)


def _run_with_progress(examples: list, replayer, total: int) -> list:
    from ..ops.replay import iter_results

    if total < PROGRESS_MIN_STEPS:
        return list(iter_results(examples, replayer))
    with click.progressbar(length=total, label="replaying", file=sys.stderr,
                           show_pos=True) as bar:
        return list(iter_results(examples, replayer, lambda: bar.update(1)))


# --- reactor demo --------------------------------------------------------------------------
@click.command()
@one_line_errors
def demo() -> None:
    """Run the scenario examples through the pipeline in-process and print job timelines."""
    from ..ops.demo import run_demo

    app = app_from_context()
    try:
        ok = run_demo(app, click.echo)
    finally:
        app.close()
    if not ok:
        sys.exit(1)


__all__ = ["jobs", "fsm", "invoke", "replay", "demo"]
