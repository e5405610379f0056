"""Queue commands: ``reactor consume`` (the long-running consumer) and ``reactor publish``."""
from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Callable

import click

from .main import app_from_context, broker_url, handle_error
from ..domain.errors import ReactorError

if TYPE_CHECKING:
    from ..app import App
    from ..broker.base import ConnectionFactory
    from ..broker.topology import Topology
    from ..engine.runner import Runner

# Expected failures become one error line; anything else is a bug and keeps its traceback.
_EXPECTED = (ReactorError, ValueError, OSError)


def _member(value: str) -> tuple[int, int]:
    try:
        index, members = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected INDEX/COUNT such as 0/3, got {value!r}") from None
    if members < 1 or not 0 <= index < members:
        raise click.BadParameter(f"INDEX must be in 0..COUNT-1 and COUNT >= 1, got {value!r}")
    return index, members


@click.command()
@click.option("--health-file", metavar="PATH", help="Rewrite this JSON file every "
              "--health-interval seconds while running ({status, pid, updated, counts}); "
              "fresh mtime = alive, status 'consuming' = ready. Removed on exit.")
@click.option("--health-interval", default=5.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0.1), help="Seconds between health-file writes.")
@click.option("--grace", default=30.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0), help="On SIGTERM/SIGINT, how long the message in "
              "progress may take before the connection is closed anyway (it is then "
              "redelivered, never lost).")
@click.option("--partitions", type=click.IntRange(min=0), metavar="N", help="Consume the "
              "partitioned layout: N single-active-consumer queues behind a consistent-hash "
              "exchange keyed on the job uuid (0 = one main queue). Every consumer and "
              "publisher of one exchange must use the same N.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (default: off).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, metavar="HOST",
              help="Address of the metrics endpoint.")
@click.option("--member", default="0/1", show_default=True, metavar="INDEX/COUNT",
              help="With --partitions: consume the partitions p with p % COUNT == INDEX.")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(min=1),
              metavar="N", help="Run N consumer processes, member I/N each (needs N or more "
              "partitions); one process, with its pipeline process, uses up to about 1.5 "
              "cores. With --health-file, each writes "
              "PATH.memberI and PATH sums them up; with --metrics-port P, process I serves P+I.")
def consume(health_file: str | None, health_interval: float, grace: float,
            partitions: int | None, member: str, metrics_port: int | None,
            metrics_host: str, processes: int) -> None:
    """Consume events from RabbitMQ until SIGTERM/SIGINT; ack each only after its commit."""
    from ..broker.topology import Topology
    from ..consume.consumer import Consumer
    from ..consume.health import HealthFile
    from ..consume.settle import Limits
    from ..obs.logs import setup_logging
    from ..obs.metrics import Metrics

    index, members = _member(member)
    if processes > 1:
        if members != 1:
            raise click.UsageError("--processes and --member cannot be combined: --processes N "
                                   "starts members 0/N … N-1/N itself")
        _supervise(processes, partitions, health_file, health_interval, grace, metrics_port,
                   metrics_host)
    app = app_from_context()
    metrics = Metrics()
    runner = None
    try:
        url = broker_url(app)
        settings = app.settings
        setup_logging(settings.log_level, settings.log_format)
        if metrics_port is not None:
            bound = metrics.serve_http(metrics_port, metrics_host)
            logging.getLogger("reactor.obs.metrics").info(
                "serving metrics at http://%s:%d/metrics", metrics_host, bound)
        topology = Topology.from_settings(settings, partitions)
        queues = topology.member_queues(index, members)
        runner = _runner(app)
        consumer = Consumer(runner, app.store.ping, _connection_factory(url, topology), topology,
                            settings.prefetch, Limits.from_settings(settings), queues=queues,
                            grace_s=grace, health=HealthFile(health_file) if health_file else None,
                            health_interval_s=health_interval,
                            batch_size=settings.batch_size,
                            batch_wait_s=settings.batch_wait_ms / 1000,
                            # Counting costs a few µs per message: not when nobody can read it.
                            metrics=metrics if metrics_port is not None else None)
        code = consumer.run()
    except _EXPECTED as exc:
        handle_error(exc)
    finally:
        if runner is not None:
            runner.close()
        metrics.close()
        app.close()
    if consumer.connection.error:
        click.echo(f"reactor: error: {consumer.connection.error}", err=True)
    sys.exit(code)


def _runner(app: "App") -> "Runner":
    """Where the pipeline runs: in a child process (``pipeline_process``) or in this one."""
    from ..app import ChildPipeline
    from ..engine.pipeline_process import ChildProcessRunner
    from ..engine.runner import InProcessRunner

    settings = app.settings
    if settings.pipeline_process:
        # The child commits a list's events one by one unless group commit is on.
        return ChildProcessRunner(ChildPipeline(settings, settings.batch_size == 1))
    return InProcessRunner(app.pipeline())


def _connection_factory(url: str, topology: "Topology") -> "ConnectionFactory":
    """The consumer's connection: the RabbitMQ transport on ``url``."""
    from ..broker.base import Delivery
    from ..broker.consumer_transport import ConsumerTransport

    def connect(queues: list[str], prefetch: int,
                on_delivery: Callable[[Delivery], None]) -> ConsumerTransport:
        return ConsumerTransport(url, topology, queues, prefetch, on_delivery)
    return connect


def _supervise(processes: int, partitions: int | None, health_file: str | None,
               health_interval: float, grace: float, metrics_port: int | None,
               metrics_host: str) -> None:
    """``consume --processes N``: start and watch N members; exits with their outcome."""
    from ..consume.health import HealthFile
    from ..obs.logs import setup_logging
    from ..consume.supervisor import Supervisor, plan

    root = click.get_current_context().find_root().params
    root_args = (["--config", root["config_path"]] if root.get("config_path") else []) + \
        (["--debug"] if root.get("debug") else [])
    app = app_from_context()  # the configuration is checked here, before anything starts
    try:
        broker_url(app)
        settings = app.settings
        setup_logging(settings.log_level, settings.log_format)
        children = plan(processes, settings.partitions if partitions is None else partitions,
                        grace_s=grace, health_file=health_file,
                        health_interval_s=health_interval, metrics_port=metrics_port,
                        metrics_host=metrics_host, root_args=root_args)
    except _EXPECTED as exc:
        handle_error(exc)
    finally:
        app.close()
    supervisor = Supervisor(children, grace, HealthFile(health_file) if health_file else None,
                            health_interval)
    sys.exit(supervisor.run())


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="FILE…|-")
@click.option("--raw", is_flag=True, help="Send each file's bytes as one message, unparsed "
              "(for deliberately malformed input).")
@click.option("--unique-ids", is_flag=True, help="Give every message a fresh message id "
              "(default: a digest of the body, so re-publishing a file is a no-op).")
@click.option("--partitions", type=click.IntRange(min=0), metavar="N",
              help="Declare the partitioned layout with N partitions (as `consume` does).")
def publish(sources: tuple[str, ...], raw: bool, unique_ids: bool,
            partitions: int | None) -> None:
    """Publish message files (or - for stdin) as persistent messages with publisher confirms.

    A file holds one JSON object, a JSON array of objects, or JSON lines. Prints how many the
    broker confirmed; exits 1 if any was not confirmed, 2 on bad input (nothing published).
    """
    from ..broker.publisher import parse_messages, publish as publish_all
    from ..broker.topology import Topology

    app = app_from_context()
    try:
        url = broker_url(app)
        topology = Topology.from_settings(app.settings, partitions)
        messages = []
        for source in sources:
            if source == "-":
                data, name = sys.stdin.buffer.read(), "<stdin>"
            else:
                with open(source, "rb") as f:
                    data, name = f.read(), source
            messages += parse_messages(name, data, raw=raw, unique_ids=unique_ids)
        report = publish_all(url, topology, messages)
    except _EXPECTED as exc:
        handle_error(exc)
    for note in report.reconnects:
        click.echo(f"reactor: {note}", err=True)
    for source, why in report.failed:
        click.echo(f"reactor: not confirmed: {source}: {why}", err=True)
    click.echo(f"confirmed {report.confirmed} of {report.total} message(s) to exchange "
               f"{topology.exchange!r}")
    sys.exit(0 if report.ok else 1)
