"""The request handlers of ``reactor serve``: what each endpoint does with a request.

A POST is parsed by the message contract, its token checked, its job looked up, and then the
self-contained queue message is published with a confirm (``accept``); ``job`` shows a job to a
holder of its token; ``healthz``, ``readyz`` and ``metrics_page`` are the probes. Each handler
ends a request it refuses with ``HttpError``; ``http`` turns that into the JSON answer.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Mapping

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..contract import messages
from ..domain.errors import AuthError, BrokerError, StoreUnavailable
from ..domain.identifiers import check_typed
from ..engine.jobs import authorize, authorize_delete
from ..contract.messages import DeleteMessage, EventMessage, MessageRejected
from ..obs.metrics import Metrics
from ..domain.tokens import mask, mask_text
from .broker_link import APP_ID, BrokerLink
from .request import HttpError, bearer_token, query_params, read_body, request_tokens

log = logging.getLogger(__name__)

# Status code of each rejection the message contract can raise before the store is touched.
STATUS_BY_REASON = {"too_large": 413, "decode_error": 400, "schema_invalid": 400,
                    "unknown_event": 422}
# History fields a token holder may read; duplicate keys stay internal.
_HISTORY_FIELDS = ("uuid", "name", "date", "data")
_JOB_FIELDS = ("uuid", "pipeline_uuid", "state", "last_event", "created", "updated",
               "revision", "archive_system", "archive_path", "child_of", "generated_by",
               "acted_on", "acted_using")


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
        info["secrets"] = request_tokens(request)
        params = query_params(request)
        body = await read_body(request, self.max_bytes)
        info["secrets"] = request_tokens(request, body)
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
        info["secrets"] = request_tokens(request)
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
        header = bearer_token(request)
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
