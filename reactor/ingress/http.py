"""HTTP ingress (``reactor serve``): job-status callbacks and events in, onto the queue.

Endpoints (Starlette, served by uvicorn):

- ``POST /callbacks?uuid=…&token=…&status=…`` with the HPC job JSON as body (Agave/Tapis);
- ``POST /events`` with an event body (or a delete action), or no body and ``uuid``,
  ``event``, ``token``, ``note`` query parameters (a parameter-only event);
- ``GET /jobs/{uuid}`` with the token in ``?token=`` or ``Authorization: Bearer``: state and
  history;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (broker and store answer),
  ``GET /metrics`` (Prometheus).

A POST goes through the same message contract as every other path (``reactor.contract.messages.parse``:
size, decode, classify, validate), then the token is checked, then the job is looked up, and
only then is one self-contained event message published to the exchange with a publisher
confirm. ``202`` is answered after the confirm, never before: a ``202`` means the message is
in a durable queue. Anything else means nothing was published, so the sender may simply try
again; a retried request gets the same message id (a digest of body and parameters), so a
copy that did reach the queue is a ``duplicate`` for the consumer, never a second event.

Errors are JSON ``{"error": <reason>, "detail": <what was wrong>}``: 400 (decode, schema,
bad parameter; ``client_disconnected`` for a body cut short, counted but answered to nobody),
401 (no token), 403 (token does not authorise), 404 (no such job), 413 (too
large), 422 (unknown event), 503 (broker or store unavailable). Tokens are never echoed: the
request's tokens are masked in every detail and log line, a caller's value is echoed only as
``reactor.domain.tokens.shown`` allows, and the access log names the route, not the raw path.

This module is the application: routes, the one error and log path every request takes, and
the server. The handlers are ``handlers.Ingress``, request reading is ``request``, and the
publisher shared by the request threads is ``broker_link.BrokerLink``.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..domain.errors import BrokerError
from ..obs.logs import FIELDS_ATTR
from ..obs.metrics import Metrics
from ..domain.tokens import scrub, shown
from ..broker.topology import Topology
from .broker_link import KEEPALIVE_S, BrokerLink
from .handlers import Ingress
from .request import HttpError

log = logging.getLogger(__name__)


Handler = Callable[[Request, dict], Awaitable[Response]]


def _instrument(name: str, handler: Handler, metrics: Metrics, path: str) -> Callable:
    """Wrap ``handler``: errors become JSON bodies; every request is counted and logged once."""

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        info: dict[str, Any] = {"secrets": []}
        try:
            response = await handler(request, info)
        except HttpError as exc:
            info["error"] = exc.error
            info["detail"] = scrub(exc.detail, info["secrets"])
            response = JSONResponse({"error": exc.error, "detail": info["detail"]},
                                    status_code=exc.status, headers=exc.headers)
        except Exception as exc:  # noqa: BLE001 - a bug must not leak details or a token
            info["error"] = "internal_error"
            info["detail"] = "an internal error occurred (logged above); nothing was queued"
            log.error("internal error answering %s %s: %s", request.method,
                      _logged_path(path, info),
                      scrub(f"{type(exc).__name__}: {exc}", info["secrets"]), exc_info=True)
            response = JSONResponse({"error": "internal_error", "detail": "an internal error "
                                     "occurred; nothing was queued"}, status_code=500)
        metrics.http_request(name, response.status_code)
        if name not in ("healthz", "metrics"):  # probes and scrapes would drown the log
            _log_request(request, name, _logged_path(path, info), response.status_code, info,
                         time.perf_counter() - start)
        return response

    endpoint.__name__ = name
    return endpoint


def _logged_path(template: str, info: dict) -> str:
    """The request's path for the log: the route, with the job uuid only once it is valid."""
    # Not the raw path: "/jobs/<anything>" may hold a token sent in the uuid's place.
    return template.replace("{uuid}", info.get("job_uuid") or "{uuid}")


def _log_request(request: Request, name: str, path: str, status: int, info: dict,
                 seconds: float) -> None:
    """The one access log line of a request: route, status and, for an error, its detail."""
    # The path only: the query string carries tokens.
    fields = {"endpoint": name, "method": request.method, "status": status,
              "job_uuid": info.get("job_uuid"), "event": info.get("event"),
              "error": info.get("error"), "message_id": info.get("message_id"),
              "latency_ms": round(seconds * 1000, 3)}
    level = logging.WARNING if status >= 500 else logging.INFO
    text = f"{request.method} {path} {status}"
    if info.get("error"):
        text += f" {info['error']}: {info.get('detail') or ''}"  # the detail was scrubbed
    text = scrub(text, info.get("secrets", []))
    log.log(level, "%s", text, extra={FIELDS_ATTR: fields})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods get JSON errors too."""
    status = getattr(exc, "status_code", 500)
    names = {404: "not_found", 405: "method_not_allowed"}
    # The path is the caller's text (it may hold a token): echoed only as ``shown`` allows.
    return JSONResponse({"error": names.get(status, "http_error"),
                         "detail": f"{request.method} {shown(request.url.path)}: "
                                   f"{getattr(exc, 'detail', '')}"},
                        status_code=status, headers=getattr(exc, "headers", None))


def create_app(app: Any, link: BrokerLink | None = None, metrics: Metrics | None = None,
               keepalive_s: float = KEEPALIVE_S) -> Starlette:
    """The ASGI application over ``app`` (an ``App``); publishes through ``link``."""
    metrics = metrics or Metrics()
    if link is None:
        link = BrokerLink(app.settings.broker_url, Topology.from_settings(app.settings),
                          metrics)
    ingress = Ingress(app, link, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_asgi: Starlette):
        stop = threading.Event()

        def keep_alive() -> None:
            while not stop.wait(keepalive_s):
                link.keepalive()

        try:
            await run_in_threadpool(link.check)
            log.info("broker %s answers", link.url)
        except BrokerError as exc:
            # Not fatal: callbacks get 503 until the broker is back, /readyz says why.
            log.warning("broker not available yet: %s", exc)
        thread = threading.Thread(target=keep_alive, name="reactor-keepalive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            link.close()

    def route(path: str, name: str, handler: Handler, method: str) -> Route:
        return Route(path, _instrument(name, handler, metrics, path), methods=[method],
                     name=name)

    routes = [
        route("/callbacks", "callbacks", ingress.accept, "POST"),
        route("/events", "events", ingress.accept, "POST"),
        route("/jobs/{uuid}", "jobs", ingress.job, "GET"),
        route("/healthz", "healthz", ingress.healthz, "GET"),
        route("/readyz", "readyz", ingress.readyz, "GET"),
        route("/metrics", "metrics", ingress.metrics_page, "GET"),
    ]
    asgi = Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: _http_error})
    asgi.state.metrics = metrics
    asgi.state.link = link
    return asgi


def _ignore(_signum: int, _frame: Any) -> None:
    """A signal handler that does nothing (see ``run``)."""


def run(app: Any, host: str = "127.0.0.1", port: int = 8080, grace_s: int = 30) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn finishes requests in progress, up to ``grace_s``)."""
    import uvicorn

    config = uvicorn.Config(create_app(app), host=host, port=port, log_config=None,
                            access_log=False, server_header=False, lifespan="on",
                            timeout_graceful_shutdown=grace_s)
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM/SIGINT and then re-raises the signal into the handlers that
    # were installed before it; ours are no-ops, so a graceful stop ends with exit code 0
    # (like `reactor consume`) instead of death by signal.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    except SystemExit:
        # uvicorn exits (code 3) when it cannot bind or start: one error line of ours instead.
        server.started = False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise OSError(f"could not serve on {host}:{port} (see the log above)")
