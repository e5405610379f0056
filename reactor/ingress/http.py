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
"""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..contract import messages
from ..domain.errors import AuthError, BrokerError, StoreUnavailable
from ..domain.identifiers import check_typed
from ..engine.jobs import authorize, authorize_delete
from ..obs.logs import FIELDS_ATTR
from ..contract.messages import DeleteMessage, EventMessage, MessageRejected
from ..obs.metrics import Metrics
from ..domain.tokens import body_token, harmless, mask, mask_text, scrub, shown
from ..broker.topology import Topology
from ..domain.tokens import mask_url as redact_url

log = logging.getLogger(__name__)

# Status code of each rejection the message contract can raise before the store is touched.
STATUS_BY_REASON = {"too_large": 413, "decode_error": 400, "schema_invalid": 400,
                    "unknown_event": 422}
KEEPALIVE_S = 10.0  # well inside the 30 s heartbeat: an idle connection stays open
APP_ID = "reactor serve"
# History fields a token holder may read; duplicate keys stay internal.
_HISTORY_FIELDS = ("uuid", "name", "date", "data")
_JOB_FIELDS = ("uuid", "pipeline_uuid", "state", "last_event", "created", "updated",
               "revision", "archive_system", "archive_path", "child_of", "generated_by",
               "acted_on", "acted_using")


class HttpError(Exception):
    """A request that ends with an error status and a JSON body naming the problem."""

    def __init__(self, status: int, error: str, detail: str,
                 headers: Mapping[str, str] | None = None):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------------- broker
class BrokerLink:
    """One confirming publisher shared by all request threads.

    pika connections are not thread-safe, so every use of the publisher holds one lock; the
    publisher is created on first use and again after the connection was lost."""

    def __init__(self, url: str, topology: Topology, metrics: Metrics | None = None,
                 factory: Callable[[], Any] | None = None):
        from ..broker.confirming import ConfirmingPublisher
        from ..broker.endpoints import Endpoints

        self.url = redact_url(url)
        self.topology = topology
        self.metrics = metrics
        # Shared by the publishers that replace one another: one URL or one per cluster node,
        # in a shuffled order; after a lost connection the next one is tried first.
        endpoints = Endpoints(url, APP_ID) if factory is None else None
        self._factory = factory or (lambda: ConfirmingPublisher(endpoints, topology, APP_ID))
        self._publisher: Any = None
        self._lock = threading.Lock()

    def _connected(self) -> Any:
        if self._publisher is not None and not self._publisher.is_open:
            self._drop()
        if self._publisher is None:
            try:
                self._publisher = self._factory()
            except BrokerError:
                self._state(False)
                raise
            self._state(True)
        return self._publisher

    def _drop(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()
        self._state(False)

    def _state(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.set_broker_connected(up)

    def publish(self, routing_key: str, body: bytes, properties: Mapping[str, Any]) -> None:
        """Publish to the exchange and wait for the confirm; BrokerError if not confirmed."""
        with self._lock:
            for attempt in (1, 2):
                publisher = self._connected()
                try:
                    publisher.publish(self.topology.exchange, routing_key, body, properties)
                    return
                except BrokerError:
                    if publisher.is_open or attempt == 2:
                        raise  # refused or unroutable on a live connection: a real answer
                    # The connection died while idle (broker restart, a missed heartbeat):
                    # once more on a fresh one. Should the first copy have arrived after all,
                    # its message id makes the second a duplicate.
                    self._drop()

    def check(self) -> None:
        """Raise BrokerError unless the broker answers on our connection."""
        with self._lock:
            try:
                self._connected().ping()
            except BrokerError:
                self._drop()
                raise

    def keepalive(self) -> None:
        """Service heartbeats of an idle connection (called every few seconds)."""
        with self._lock:
            if self._publisher is None:
                return
            try:
                self._publisher.ping()
            except BrokerError as exc:
                log.warning("broker connection lost while idle: %s; reconnecting on the next "
                            "request", exc)
                self._drop()

    def close(self) -> None:
        """Close the connection, if any."""
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None


# --------------------------------------------------------------------------------- helpers
def _request_tokens(request: Request, body: bytes = b"") -> list[str | None]:
    """Every token the request carries, so none of them is ever echoed."""
    found = list(request.query_params.getlist("token"))
    # A token sent in another parameter or in the path (say in the uuid's place) is masked
    # as well, whatever the texts that might echo it do.
    found += [v for v in request.query_params.values() if isinstance(v, str) and not harmless(v)]
    found += [v for v in request.path_params.values() if isinstance(v, str) and not harmless(v)]
    credentials = request.headers.get("authorization", "").split(None, 1)
    # The value after the scheme; a lone word may be a bare token, unless it is the scheme
    # (masking "Bearer" would garble the answer that says how to send one).
    if credentials and (len(credentials) == 2 or credentials[0].lower() != "bearer"):
        found.append(credentials[-1])
    if body:
        found.append(body_token(body))
    return found


def _params(request: Request) -> dict[str, str]:
    """The recognised query parameters; a parameter given twice is ambiguous (400)."""
    # Parsed from the raw query string, not ``request.query_params``, which turns bytes that
    # are not UTF-8 into U+FFFD: kept as lone surrogates, the message contract refuses them
    # (decode_error), as it does for ``reactor invoke``, instead of storing altered text.
    # Latin-1 maps bytes to characters one to one, so the unquoted bytes come back exactly.
    raw = [(_utf8(key), _utf8(value)) for key, value in parse_qsl(
        request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
        encoding="latin-1")]
    out = {}
    for name in messages.PARAM_NAMES:
        values = [value for key, value in raw if key == name]
        if len(values) > 1:
            raise HttpError(400, "bad_request", f"query parameter {name!r} is given "
                            f"{len(values)} times; give it once")
        if values:
            out[name] = values[0]
    return out


def _utf8(latin1: str) -> str:
    """The UTF-8 text of bytes held as Latin-1 characters; bytes that are not UTF-8 stay as
    lone surrogates (surrogateescape), for the message contract to refuse."""
    return latin1.encode("latin-1").decode("utf-8", "surrogateescape")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HttpError(400, "bad_request", "the Content-Length header is not a "
                            "number") from None
        if size > limit:
            raise HttpError(413, "too_large", f"request body is {size} bytes; the limit is "
                            f"{limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "too_large", f"request body is more than {limit} bytes; "
                                f"the limit is {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client's doing, not ours: a 4xx nobody reads, counted and logged as such.
        expected = f"of {declared} " if declared is not None else ""
        raise HttpError(400, "client_disconnected", f"the client disconnected before sending "
                        f"the whole body ({size} {expected}bytes received); nothing was "
                        "queued") from None
    return b"".join(chunks)


def outgoing_body(message: EventMessage | DeleteMessage) -> bytes:
    """The self-contained queue message for a parsed request (the consumer needs no params)."""
    if isinstance(message, DeleteMessage):
        doc: dict[str, Any] = {"uuid": message.uuid, "action": "delete",
                               "force": message.force, "token": message.token}
    else:
        doc = {"uuid": message.uuid, "name": message.event, "token": message.token}
        if message.data is not None:
            doc["data"] = message.data
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def public_job(record: Mapping[str, Any]) -> dict:
    """What ``GET /jobs/{uuid}`` shows: the job's fields and history, no internal keys."""
    out = {k: record.get(k) for k in _JOB_FIELDS if k in record}
    out["history"] = [{k: h.get(k) for k in _HISTORY_FIELDS} for h in record.get("history", ())]
    return out


def read_token_hint(uuid: str) -> str:
    """The 401 detail of ``GET /jobs/{uuid}`` without a token."""
    # Worded so token masking leaves it intact: no "token" right before a ":" or "=", which
    # would read as a token value and be cut (once "'Aut…" of "its token: 'Authorization…").
    return (f"reading job {uuid} needs the job's token; send it as 'Authorization: Bearer …' "
            "or as the query parameter 'token'")


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth is None:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise HttpError(401, "token_required", "the Authorization header must be "
                        "'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
    return value.strip()


# --------------------------------------------------------------------------------- the app
class Ingress:
    """The request handlers, over one App (store, authority, settings) and one BrokerLink."""

    def __init__(self, app: Any, link: BrokerLink, metrics: Metrics):
        self.app = app
        self.link = link
        self.metrics = metrics
        self.max_bytes = app.settings.max_message_bytes
        self.authority = app.authority
        self._store_lock = threading.Lock()

    def _open_store(self) -> Any:
        # Opened on first use, not at start-up: a store that is down at start makes requests
        # answer 503 and /readyz say why, and the server recovers when the store does.
        with self._store_lock:
            return self.app.store

    # --- POST ---------------------------------------------------------------------------------
    async def accept(self, request: Request, info: dict) -> Response:
        """Parse, authorise, find the job, publish with a confirm; 202 after the confirm."""
        info["secrets"] = _request_tokens(request)
        params = _params(request)
        body = await _read_body(request, self.max_bytes)
        info["secrets"] = _request_tokens(request, body)
        try:
            message = messages.parse(body, params, self.max_bytes)
        except MessageRejected as exc:
            info.update(job_uuid=exc.job_uuid, event=exc.event)
            raise HttpError(STATUS_BY_REASON.get(exc.reason, 400), exc.reason,
                            exc.detail) from None
        event = message.event if isinstance(message, EventMessage) else "delete"
        info.update(job_uuid=message.uuid, event=event)
        self._authorise(message, event)
        await self._find_job(message)
        out = outgoing_body(message)
        self._check_outgoing(out, message)
        message_id = messages.duplicate_key(body, None, params)
        props = {"message_id": message_id, "content_type": "application/json",
                 "delivery_mode": 2, "timestamp": int(time.time()), "app_id": APP_ID}
        try:
            with self.metrics.timing_publish():
                await run_in_threadpool(self.link.publish, message.uuid, out, props)
        except BrokerError as exc:
            raise HttpError(503, "broker_unavailable", f"the message was not accepted: {exc}; "
                            "nothing was queued, send it again later",
                            {"Retry-After": "5"}) from None
        info["message_id"] = message_id
        return JSONResponse({"accepted": True, "message_id": message_id, "uuid": message.uuid,
                             "event": event}, status_code=202)

    def _authorise(self, message: EventMessage | DeleteMessage, event: str) -> None:
        # Before the store lookup, so a caller without a valid token learns nothing about
        # which jobs exist. The 401 is worded so token masking leaves it intact: no "token"
        # right before a ":" or "=".
        if not message.token:
            raise HttpError(401, "token_required", f"{event!r} on job {message.uuid} needs the "
                            "job's token; send it as the query parameter 'token', or as "
                            "'token' in an event body", {"WWW-Authenticate": "Bearer"})
        try:
            # The job operations' own checks, which need no store.
            if isinstance(message, DeleteMessage):
                authorize_delete(self.authority, message.token)
            else:
                authorize(self.authority, message.uuid, event, message.token)
        except AuthError as exc:
            raise HttpError(403, "auth_failed", str(exc)) from None

    async def _find_job(self, message: EventMessage | DeleteMessage) -> None:
        hidden = isinstance(message, DeleteMessage)
        record = await self._store("get_job", message.uuid, include_hidden=hidden)
        if record is None:
            raise HttpError(404, "unknown_job", f"no job with uuid {message.uuid}")

    def _check_outgoing(self, out: bytes, message: EventMessage | DeleteMessage) -> None:
        """Refuse (4xx, never 5xx) a request whose queue message the consumer would refuse."""
        # The queue message must pass the consumer's own checks, or 202 would be a lie. What
        # fails here came from the request (say a callback whose job JSON, put under "data",
        # is one level too deep), so it is answered like the same rejection of the request.
        if len(out) > self.max_bytes:
            raise HttpError(413, "too_large", f"the event built from this request is "
                            f"{len(out)} bytes; the limit is {self.max_bytes} bytes")
        try:
            again = messages.parse(out, None, self.max_bytes)
        except MessageRejected as exc:
            raise HttpError(STATUS_BY_REASON.get(exc.reason, 400), exc.reason,
                            "the event built from this request (a callback's job JSON goes "
                            f"under 'data') is refused by the message contract: {exc.detail}; "
                            "nothing was queued") from None
        if (again.uuid, getattr(again, "event", None), getattr(again, "data", None)) != \
                (message.uuid, getattr(message, "event", None), getattr(message, "data", None)):
            # A gap in the contract, not a broken server: refuse rather than queue an event
            # that says something else, and say so once for whoever maintains the contract.
            log.warning("the event built for job %s does not read back unchanged through the "
                        "message contract; refused", message.uuid)
            raise HttpError(400, "schema_invalid", "the event built from this request does "
                            "not read back unchanged through the message contract; nothing "
                            "was queued")

    async def _call_store(self, method: str, *args, **kwargs) -> Any:
        """Call a store method in a worker thread, keeping the store gauge current."""
        def call() -> Any:
            return getattr(self._open_store(), method)(*args, **kwargs)

        try:
            result = await run_in_threadpool(call)
        except (StoreUnavailable, TimeoutError):
            self.metrics.set_store_connected(False)
            raise
        self.metrics.set_store_connected(True)
        return result

    async def _store(self, method: str, *args, **kwargs) -> Any:
        """``_call_store``, with a store that does not answer turned into a 503."""
        try:
            return await self._call_store(method, *args, **kwargs)
        except (StoreUnavailable, TimeoutError) as exc:
            raise HttpError(503, "store_unavailable", f"the store does not answer: {exc}; "
                            "nothing was queued, send it again later",
                            {"Retry-After": "5"}) from None

    # --- GET ----------------------------------------------------------------------------------
    async def job(self, request: Request, info: dict) -> Response:
        """State and history of one job, for a holder of its token (or an admin token)."""
        info["secrets"] = _request_tokens(request)
        uuid = request.path_params["uuid"]
        try:
            check_typed(uuid, "pipelinejob")
        except ValueError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        info["job_uuid"] = uuid
        query = request.query_params.getlist("token")
        if len(query) > 1:
            raise HttpError(400, "bad_request", "query parameter 'token' is given "
                            f"{len(query)} times; give it once")
        header = _bearer(request)
        if query and header is not None and query[0] != header:
            raise HttpError(400, "bad_request", "two different tokens (query parameter and "
                            "Authorization header); give one")
        token = header if header is not None else (query[0] if query else None)
        if not token:
            raise HttpError(401, "token_required", read_token_hint(uuid),
                            {"WWW-Authenticate": "Bearer"})
        if not self.authority.allows(uuid, token):
            raise HttpError(403, "auth_failed", f"token {mask(token)} does not authorise "
                            f"reading job {uuid}")
        record = await self._store("get_job", uuid)
        if record is None:
            raise HttpError(404, "unknown_job", f"no job with uuid {uuid}")
        return JSONResponse(public_job(record), headers={"Cache-Control": "no-store"})

    async def healthz(self, request: Request, info: dict) -> Response:
        """Liveness: the process answers HTTP."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request, info: dict) -> Response:
        """Readiness: the broker and the store both answer."""
        checks = {}
        try:
            await run_in_threadpool(self.link.check)
            checks["broker"] = "ok"
        except BrokerError as exc:
            checks["broker"] = mask_text(str(exc))
        try:
            await self._call_store("ping")
            checks["store"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            checks["store"] = mask_text(f"{type(exc).__name__}: {exc}")
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", **checks},
                            status_code=200 if ready else 503)

    async def metrics_page(self, request: Request, info: dict) -> Response:
        """The Prometheus exposition of this process."""
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)


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
