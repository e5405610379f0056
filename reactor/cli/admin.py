"""Admin commands: ``reactor pipelines add|list`` and ``reactor token job|admin``.

They run on the configured store and secret (config.yml + REACTOR_* variables). Tokens go to
stdout alone, so ``$(reactor token admin)`` works; errors are one line on stderr, non-zero exit.
"""
from __future__ import annotations

import json

import click

from .main import app_from_context, handle_error
from ..domain.errors import ReactorError

# Expected failures become one error line; anything else is a bug and keeps its traceback.
_EXPECTED = (ReactorError, ValueError, TypeError)


@click.group()
def pipelines() -> None:
    """Register and list pipelines (jobs must name a registered pipeline)."""


@pipelines.command("add")
@click.option("--name", required=True, help="Pipeline name (its default uuid derives from it).")
@click.option("--uuid", "uuid_", metavar="106…", help="Pipeline uuid (default: derived from the "
              "name, so the same name always gives the same uuid).")
def pipelines_add(name: str, uuid_: str | None) -> None:
    """Register a pipeline and print its uuid (idempotent)."""
    from ..domain.identifiers import check_typed, pipeline_uuid
    from ..domain.jsonvalues import check_text
    from ..domain.records import now_iso

    app = app_from_context()
    try:
        check_text(name, "--name")
        if not name.strip() or name != name.strip():
            raise ValueError(f"--name must be non-empty without leading or trailing spaces, "
                             f"got {name!r}")
        uid = check_typed(uuid_, "pipeline") if uuid_ is not None else pipeline_uuid(name)
        stored, created = app.store.add_pipeline({"uuid": uid, "name": name,
                                                  "created": now_iso()})
        if not created and stored.get("name") != name:
            raise ValueError(f"pipeline {uid} is already registered as {stored.get('name')!r}, "
                             f"not {name!r}")
    except _EXPECTED as exc:
        handle_error(exc)
    finally:
        app.close()
    if not created:
        click.echo(f"pipeline {name!r} was already registered", err=True)
    click.echo(uid)


@pipelines.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def pipelines_list(as_json: bool) -> None:
    """List the registered pipelines."""
    app = app_from_context()
    try:
        found = app.store.list_pipelines()
    except _EXPECTED as exc:
        handle_error(exc)
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    if not found:
        click.echo("no pipelines registered (add one with `reactor pipelines add --name NAME`)",
                   err=True)
        return
    rows = [("UUID", "NAME", "CREATED")] + [
        (p.get("uuid", ""), p.get("name", ""), p.get("created", "")) for p in found]
    widths = [max(len(str(r[i])) for r in rows) for i in range(2)]
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip())


@click.group()
def token() -> None:
    """Print job and administrative tokens (derived from the configured secret)."""


@token.command("job")
@click.argument("job_uuid", metavar="UUID")
def token_job(job_uuid: str) -> None:
    """Print the token that authorises events for job UUID."""
    from ..domain.identifiers import check_typed

    app = app_from_context()
    try:
        check_typed(job_uuid, "pipelinejob")
        value = app.authority.job_token(job_uuid)
    except _EXPECTED as exc:
        handle_error(exc)
    click.echo(value)


@token.command("admin")
def token_admin() -> None:
    """Print the current administrative token (it expires by itself)."""
    app = app_from_context()
    try:
        value = app.authority.admin_token()
    except _EXPECTED as exc:
        handle_error(exc)
    click.echo(value)
