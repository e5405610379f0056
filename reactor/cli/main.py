"""The ``reactor`` command. Subcommands live in the small modules beside this one and are
imported only when run, so one-shot modes (``reactor invoke``) start fast."""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from ..app import App

# name -> "module:attribute" of a click command; imported on first use.
COMMANDS = {
    "pipelines": "reactor.cli.admin:pipelines",
    "token": "reactor.cli.admin:token",
    "jobs": "reactor.cli.jobs:jobs",
    "fsm": "reactor.cli.jobs:fsm",
    "invoke": "reactor.cli.jobs:invoke",
    "replay": "reactor.cli.jobs:replay",
    "demo": "reactor.cli.jobs:demo",
    "consume": "reactor.cli.queue:consume",
    "publish": "reactor.cli.queue:publish",
    "serve": "reactor.cli.ops:serve",
    "deadletters": "reactor.cli.ops:deadletters",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand's name, without importing any."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The subcommand ``name``, imported now (None for an unknown name)."""
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(f"command {name!r} is not available: {exc}") from None

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; a usage error quoting an argument has its tokens masked."""
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            # click's own texts quote the offending value ("'…' is not one of …") whole.
            from ..domain.tokens import mask_quoted

            exc.message = mask_quoted(exc.message)
            raise



@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--config", "config_path", metavar="PATH", envvar="REACTOR_CONFIG",
              help="Configuration file (default: ./config.yml; env REACTOR_CONFIG).")
@click.pass_context
def main(ctx: click.Context, debug: bool, config_path: str | None) -> None:
    """PipelineJobs Reactor: the auditable record of every pipeline job."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["config_path"] = config_path


def app_from_context(**overrides: Any) -> "App":
    """Build the App for the current command (errors become one clear line)."""
    from ..app import App
    from ..domain.errors import ReactorError
    from .. import config as _config

    ctx = click.get_current_context()
    path = ctx.find_root().params.get("config_path")
    try:
        settings = _config.load(path=path) if path else _config.load()
        if overrides:
            settings = settings.with_overrides(**overrides)
        return App(settings)
    except ReactorError as exc:
        handle_error(exc)


def broker_url(app: "App") -> str:
    """The configured broker URL, or a usage error saying how to set it."""
    url = app.settings.broker_url
    if not url:
        raise click.UsageError("no broker configured: set REACTOR_BROKER_URL (or broker_url in "
                               "config.yml) to an amqp:// URL")
    return url


def handle_error(exc: BaseException) -> NoReturn:
    """Turn an expected exception into one error line and exit 2; re-raise with --debug."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("debug"):
        raise exc
    from ..domain.tokens import mask_text

    # An error text may quote what the caller gave: tokens masked, and text that cannot be
    # written (a lone surrogate from a bad argument) escaped rather than crashing the write.
    text = mask_text(str(exc)).encode("utf-8", "backslashreplace").decode("utf-8")
    click.echo(f"reactor: error: {text}", err=True)
    sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
