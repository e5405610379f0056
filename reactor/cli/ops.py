"""Operations commands: ``reactor serve`` (HTTP callbacks) and ``reactor deadletters``."""
from __future__ import annotations

import json
import sys

import click

from .main import app_from_context, broker_url, handle_error
from ..domain.errors import ReactorError
from ..domain.outcomes import DEAD_LETTER_REASONS

# Expected failures become one error line; anything else is a bug and keeps its traceback.
_EXPECTED = (ReactorError, ValueError, OSError)


def _setup_logging(app) -> None:
    from ..obs.logs import setup_logging

    setup_logging(app.settings.log_level, app.settings.log_format,
                  loggers=("reactor", "uvicorn"))


# --- reactor serve ----------------------------------------------------------------------------
@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface, e.g. in a container).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port to listen on.")
@click.option("--grace", default=30, show_default=True, type=click.IntRange(min=0),
              metavar="SECONDS", help="On SIGTERM/SIGINT, how long requests in progress may "
              "take before the server stops anyway.")
def serve(host: str, port: int, grace: int) -> None:
    """Accept job-status callbacks and events over HTTP and queue them with publisher confirms.

    POST /callbacks?uuid=…&token=…&status=… (job JSON body), POST /events (event body, or
    uuid/event/token/note query parameters); GET /jobs/UUID (token-protected), /healthz,
    /readyz, /metrics. 202 only after the broker confirmed the message.
    """
    from ..ingress.http import run

    app = app_from_context()
    try:
        broker_url(app)
        _setup_logging(app)
        app.authority  # noqa: B018 - a missing or weak secret is a start-up error, not a 500
        run(app, host, port, grace)
    except _EXPECTED as exc:
        handle_error(exc)
    finally:
        app.close()


# --- reactor deadletters ----------------------------------------------------------------------
@click.group()
def deadletters() -> None:
    """Inspect the dead-letter queue and re-drive chosen messages after a fix."""


def _topology(app):
    from ..broker.topology import Topology

    return Topology.from_settings(app.settings)


_REASON = click.option("--reason", type=click.Choice(DEAD_LETTER_REASONS),
                       help="Only dead letters with this reason.")
_LIMIT = click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1),
                      help="Look at no more than this many messages from the head of the queue.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


@deadletters.command("list")
@_REASON
@_LIMIT
@_JSON
def deadletters_list(reason: str | None, limit: int, as_json: bool) -> None:
    """List dead letters, oldest first: message id, reason, attempts, first seen, detail.

    Nothing is removed: every message stays where it is."""
    from ..ops.deadletters import list_dead_letters

    app = app_from_context()
    try:
        url = broker_url(app)
        topology = _topology(app)
        letters, depth = list_dead_letters(url, topology, limit, reason)
    except _EXPECTED as exc:
        handle_error(exc)
    if as_json:
        click.echo(json.dumps([d.to_dict(with_body=False) for d in letters], indent=2,
                              ensure_ascii=False))
        return
    from .jobs import _table

    rows = [(d.message_id, d.reason, d.attempts, d.first_seen, _clip(d.detail, 70))
            for d in letters]
    if rows:
        click.echo(_table(rows, ("MESSAGE ID", "REASON", "ATTEMPTS", "FIRST SEEN", "DETAIL")))
    shown = f"{len(letters)} shown" + (f" (reason {reason})" if reason else "")
    click.echo(f"{depth} message(s) in {topology.dead_letter_queue!r}; {shown}"
               + (f"; only the first {limit} looked at" if depth > limit else ""), err=True)


@deadletters.command("show")
@click.argument("message_id")
@_LIMIT
@_JSON
def deadletters_show(message_id: str, limit: int, as_json: bool) -> None:
    """Show one dead letter in full: headers and body (tokens masked). It stays in the queue."""
    from ..ops.deadletters import show

    app = app_from_context()
    try:
        letters = show(broker_url(app), _topology(app), message_id, limit)
    except _EXPECTED as exc:
        handle_error(exc)
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in letters], indent=2, ensure_ascii=False))
        return
    for n, d in enumerate(letters):
        if n:
            click.echo("")
        fields = [("message id", d.message_id), ("reason", d.reason),
                  ("outcome", d.outcome), ("attempts", d.attempts),
                  ("first seen", d.first_seen), ("dead-lettered at", d.dead_lettered_at),
                  ("routing key", d.routing_key), ("position", d.position),
                  ("size", f"{d.size} bytes"), ("detail", d.detail)]
        width = max(len(k) for k, _ in fields)
        for k, v in fields:
            click.echo(f"{k.ljust(width)}  {'' if v is None else v}")
        click.echo("headers:")
        for k, v in sorted(d.headers.items()):
            click.echo(f"  {k}: {v}")
        click.echo("body:")
        click.echo(d.body)


@deadletters.command("requeue")
@click.argument("message_ids", nargs=-1, metavar="[MESSAGE_ID]…")
@_REASON
@_LIMIT
def deadletters_requeue(message_ids: tuple[str, ...], reason: str | None, limit: int) -> None:
    """Re-drive chosen dead letters to the exchange (by message id and/or --reason).

    Each is published with a publisher confirm and only then removed from the dead-letter
    queue, with a fresh attempt count; everything else stays untouched. An id that is not in
    the queue is an error and nothing is requeued (exit 2); exit 1 if a message could not be
    re-driven (it stays in the dead-letter queue)."""
    from ..ops.deadletters import requeue

    app = app_from_context()
    try:
        topology = _topology(app)
        report = requeue(broker_url(app), topology, message_ids, reason, limit)
    except _EXPECTED as exc:
        handle_error(exc)
    for d in report.redriven:
        click.echo(f"requeued {d.message_id} ({d.reason})")
    for d, why in report.failed:
        click.echo(f"reactor: not requeued: {d.message_id} ({d.reason}): {why}", err=True)
    click.echo(f"requeued {len(report.redriven)} message(s) to exchange "
               f"{topology.exchange!r}; {len(report.failed)} failed; "
               f"{report.looked_at} looked at", err=True)
    sys.exit(0 if report.ok else 1)
