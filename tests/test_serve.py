"""``reactor serve`` through a real HTTP client (httpx) against a real uvicorn server process,
a real RabbitMQ and a real store: good callbacks reach the queue and a running consumer applies
them; every kind of bad input gets its status and JSON body and publishes nothing; a broker
outage answers 503 and loses nothing."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pika
import pytest

from queue_helpers import QueueSetup, free_port, make_jobs, queue_depth, stop, wait_until
from reactor.domain.identifiers import job_uuid, pipeline_uuid

pytestmark = [pytest.mark.rabbitmq]


# --------------------------------------------------------------------------------- helpers
class ServeProcess:
    """``reactor serve`` as a subprocess on a free port; its stderr goes to ``log_path``."""

    def __init__(self, setup: QueueSetup, name: str = "serve", **overrides):
        self.setup = setup
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = setup.workdir / f"{name}.log"
        env = setup.env(log_format="json", **overrides)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reactor.cli.main", "serve", "--port", str(self.port),
                 "--grace", "5"], cwd=setup.workdir, env=env, stdout=log, stderr=log)
        wait_until(self._answers, 60, f"reactor serve on port {self.port} to answer /healthz")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"reactor serve exited:\n{self.log()}"
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def json_log_lines(text: str) -> list[dict]:
    """Every line of a log, parsed as JSON (fails on a line that is not)."""
    lines = [line for line in text.splitlines() if line.strip()]
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"log line is not JSON: {line!r}") from None
    return out


class CuttableProxy:
    """A TCP forwarder to the broker that the test can cut (every connection dropped, new ones
    closed at once) and restore: a broker outage without touching the shared broker."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # listener closed
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def broker_via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by 127.0.0.1:``port``."""
    params = pika.URLParameters(url)
    creds = params.credentials
    vhost = "%2F" if params.virtual_host == "/" else params.virtual_host
    return f"amqp://{creds.username}:{creds.password}@127.0.0.1:{port}/{vhost}"


def peek(url: str, queue: str) -> list[tuple[bytes, dict]]:
    """Bodies and properties of every message in ``queue``, all left in place."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        out = []
        while True:
            method, props, body = ch.basic_get(queue)
            if method is None:
                break
            out.append((body, {"message_id": props.message_id, "app_id": props.app_id,
                               "delivery_mode": props.delivery_mode,
                               "routing_key": method.routing_key}))
        return out
    finally:
        conn.close()  # unacked messages return to the queue


def http_counts(http: httpx.Client, endpoint: str) -> dict[str, float]:
    """``reactor_http_requests_total`` of one endpoint, by status code, from ``/metrics``."""
    prefix = f'reactor_http_requests_total{{endpoint="{endpoint}",status="'
    out = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            status, _, value = line[len(prefix):].partition('"} ')
            out[status] = float(value)
    return out


def loud_lines(log_text: str) -> list[str]:
    """The lines of a JSON log that an operator would be alerted by: WARNING and above, and
    any line holding a traceback."""
    return [json.dumps(line) for line in json_log_lines(log_text)
            if line["level"] in ("WARNING", "ERROR", "CRITICAL") or "exc" in line
            or "Traceback" in json.dumps(line)]


def nested(levels: int) -> dict:
    """A JSON object nested ``levels`` deep (1 is a flat object)."""
    doc: dict = {"leaf": 1}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


@pytest.fixture
def sqlite_setup(amqp_url, sqlite_uri, tmp_path):
    s = QueueSetup(amqp_url, sqlite_uri, tmp_path)
    yield s
    s.close()


# --------------------------------------------------------------------------------- good input
@pytest.mark.mongo
def test_callbacks_and_events_are_queued_and_applied_by_a_running_consumer(
        amqp_url, mongo_store_uri, tmp_path):
    setup = QueueSetup(amqp_url, mongo_store_uri, tmp_path)
    try:
        ((job, token),) = make_jobs(setup.app, 1, "serve")
        running = {"id": "hpc-1", "appId": "app-0.1", "status": "RUNNING",
                   "_links": {"self": {"href": "https://hpc.invalid/jobs/hpc-1"}}}
        finished = {"id": "hpc-1", "status": "FINISHED", "lastStatusMessage": "done"}
        with ServeProcess(setup) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
            answers = [
                http.post("/callbacks", params={"uuid": job, "token": token,
                                                "status": "RUNNING"}, json=running),
                http.post("/events", params={"uuid": job, "token": token, "event": "update",
                                             "note": "halfway"}),
                http.post("/events", json={"uuid": job, "name": "UPDATE", "token": token,
                                           "data": {"step": 2}}),
                http.post("/callbacks", params={"uuid": job, "token": token}, json=finished),
                # The sender retries the same callback: the same message, queued again.
                http.post("/callbacks", params={"uuid": job, "token": token}, json=finished),
            ]
            for r in answers:
                assert r.status_code == 202, r.text
                assert token not in r.text
            bodies = [r.json() for r in answers]
            assert [b["event"] for b in bodies] == ["run", "update", "update", "finish",
                                                    "finish"]
            assert bodies[3]["message_id"] == bodies[4]["message_id"]
            assert len({b["message_id"] for b in bodies}) == 4

            # 202 means "in the durable queue": all five are there before any consumer runs,
            # persistent, routed by the job uuid, self-contained event messages.
            queued = peek(setup.amqp_url, setup.names["queue"])
            assert len(queued) == 5
            for (body, props), answer in zip(queued, bodies):
                assert props["message_id"] == answer["message_id"]
                assert props["delivery_mode"] == 2 and props["routing_key"] == job
                doc = json.loads(body)
                assert doc["uuid"] == job and doc["name"] == answer["event"]

            health = tmp_path / "health.json"
            consumer = setup.start_consumer("--health-file", str(health),
                                            "--health-interval", "0.2")
            counts = wait_until(
                lambda: health.exists() and (c := json.loads(health.read_text())["counts"])
                and sum(c.values()) == 5 and c, 120, "the consumer to settle five messages")
            assert counts == {"applied": 4, "duplicate": 1}, counts
            assert stop(consumer) == 0, setup.logs()
            assert queue_depth(setup.amqp_url, setup.names["queue"]) == 0

            record = setup.app.store.get_job(job)
            assert record["state"] == "FINISHED"
            history = record["history"]
            assert [h["name"] for h in history] == ["create", "run", "update", "update",
                                                    "finish"]
            assert history[1]["data"] == {"id": "hpc-1", "appId": "app-0.1",
                                          "status": "RUNNING"}
            assert history[2]["data"] == {"note": "halfway"}
            assert history[3]["data"] == {"step": 2}
            assert history[4]["data"] == {"status": "FINISHED", "id": "hpc-1",
                                          "message": "done"}

            # The token-protected read: state and history, by header or query parameter.
            r = http.get(f"/jobs/{job}", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            shown = r.json()
            assert shown["state"] == "FINISHED" and shown["revision"] == 5
            assert [h["name"] for h in shown["history"]] == [h["name"] for h in history]
            assert all("key" not in h for h in shown["history"])
            admin = setup.app.authority.admin_token()
            r = http.get(f"/jobs/{job}", params={"token": admin})
            assert r.status_code == 200 and r.json()["state"] == "FINISHED"
            assert srv.stop() == 0, srv.log()
        for line in json_log_lines(srv.log()):
            assert token not in json.dumps(line)
    finally:
        setup.close()


# --------------------------------------------------------------------------------- bad input
def test_each_kind_of_bad_input_gets_its_status_and_json_error_and_publishes_nothing(
        sqlite_setup):
    setup = sqlite_setup
    ((job, token), (other, other_token)) = make_jobs(setup.app, 2, "bad")
    missing = job_uuid(pipeline_uuid("serve-tests-none"), [], {"never": "created"})
    missing_token = setup.app.authority.job_token(missing)
    limit = 4096
    big = {"id": "x", "status": "HEARTBEAT", "pad": "p" * limit}
    cases = [
        # (what, method, path, kwargs, status, error)
        ("body over the limit", "POST", "/callbacks",
         dict(params={"uuid": job, "token": token}, json=big), 413, "too_large"),
        ("not JSON", "POST", "/events",
         dict(params={"token": token}, content=b'{"uuid": "' + job.encode() + b'", '),
         400, "decode_error"),
        ("not UTF-8", "POST", "/events", dict(content=b'\xff\xfe{}'), 400, "decode_error"),
        ("empty, no parameters", "POST", "/events", dict(content=b""), 400, "decode_error"),
        ("a JSON array", "POST", "/events", dict(json=[{"uuid": job}]), 400, "schema_invalid"),
        ("extra field", "POST", "/events",
         dict(json={"uuid": job, "name": "run", "token": token, "colour": "red"}),
         400, "schema_invalid"),
        ("bad uuid", "POST", "/callbacks",
         dict(params={"uuid": "107-not-a-uuid", "token": token, "status": "RUNNING"}, json={}),
         400, "schema_invalid"),
        ("token given twice", "POST", "/events",
         dict(params=[("uuid", job), ("event", "run"), ("token", token),
                      ("token", other_token)]), 400, "bad_request"),
        ("unknown event", "POST", "/events",
         dict(params={"uuid": job, "event": "explode", "token": token}), 422, "unknown_event"),
        ("unknown event in a body", "POST", "/events",
         dict(json={"uuid": job, "name": "explode", "token": token}), 422, "unknown_event"),
        ("no token", "POST", "/callbacks",
         dict(params={"uuid": job, "status": "RUNNING"}, json={"id": "1"}), 401,
         "token_required"),
        ("another job's token", "POST", "/callbacks",
         dict(params={"uuid": job, "token": other_token, "status": "RUNNING"}, json={"id": "1"}),
         403, "auth_failed"),
        ("a job token for an admin event", "POST", "/events",
         dict(params={"uuid": job, "event": "reset", "token": token}), 403, "auth_failed"),
        ("a job token for a delete", "POST", "/events",
         dict(json={"uuid": job, "action": "delete", "token": token}), 403, "auth_failed"),
        ("unknown job", "POST", "/events",
         dict(params={"uuid": missing, "event": "run", "token": missing_token}), 404,
         "unknown_job"),
        ("read without a token", "GET", f"/jobs/{job}", {}, 401, "token_required"),
        ("read with another job's token", "GET", f"/jobs/{job}",
         dict(headers={"Authorization": f"Bearer {other_token}"}), 403, "auth_failed"),
        ("read with a malformed header", "GET", f"/jobs/{job}",
         dict(headers={"Authorization": f"Token {token}"}), 401, "token_required"),
        ("read a bad uuid", "GET", "/jobs/not-a-uuid", dict(params={"token": token}), 400,
         "bad_request"),
        ("read an unknown job", "GET", f"/jobs/{missing}", dict(params={"token": missing_token}),
         404, "unknown_job"),
        ("wrong method", "GET", "/callbacks", dict(params={"token": token}), 405,
         "method_not_allowed"),
        ("unknown path", "POST", "/callback", dict(params={"token": token}), 404, "not_found"),
    ]
    secrets = (token, other_token, missing_token)
    with ServeProcess(setup, max_message_bytes=limit) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        problems = []
        for what, method, path, kwargs, status, error in cases:
            r = http.request(method, path, **kwargs)
            try:
                body = r.json()
            except ValueError:
                problems.append(f"{what}: body is not JSON: {r.text[:200]!r}")
                continue
            if (r.status_code, body.get("error")) != (status, error):
                problems.append(f"{what}: got {r.status_code} {body}, expected {status} {error}")
            if not isinstance(body.get("detail"), str) or not body["detail"]:
                problems.append(f"{what}: no detail: {body}")
            if any(s in r.text or s in str(r.headers) for s in secrets):
                problems.append(f"{what}: a token was echoed: {r.text[:300]}")
        assert not problems, "\n".join(problems)

        # The details name the problem.
        r = http.post("/events", json={"uuid": job, "name": "run", "token": token,
                                       "colour": "red"})
        assert "colour" in r.json()["detail"]
        r = http.post("/events", params={"uuid": missing, "event": "run",
                                         "token": missing_token})
        assert missing in r.json()["detail"]
        r = http.post("/callbacks", params={"uuid": job, "token": token}, json=big)
        assert str(limit) in r.json()["detail"]

        # Nothing was published, and nothing changed in the store.
        assert queue_depth(setup.amqp_url, setup.names["queue"]) == 0
        for uuid in (job, other):
            assert setup.app.store.get_job(uuid)["revision"] == 1
        assert srv.stop() == 0, srv.log()

    lines = json_log_lines(srv.log())
    requests = [line for line in lines if line["logger"] == "reactor.ingress.http" and "status" in line]
    assert len(requests) >= len(cases) - 2  # wrong method/unknown path never reach a route
    log_text = srv.log()
    for s in secrets:
        assert s not in log_text


# --------------------------------------------------------------------------------- hostile input
def test_a_client_that_disconnects_mid_body_is_a_4xx_logged_once_at_info(sqlite_setup):
    setup = sqlite_setup
    ((job, token),) = make_jobs(setup.app, 1, "cut")
    with ServeProcess(setup) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        # Valid parameters: had the body arrived whole, the callback would have been queued.
        head = (f"POST /callbacks?uuid={job}&token={token}&status=RUNNING HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nContent-Type: application/json\r\n")
        with socket.create_connection(("127.0.0.1", srv.port)) as raw:
            raw.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode() + b'{"id": "hp')
        # Without a Content-Length: a chunked body that stops after its first chunk.
        head = head.replace("/callbacks", "/events")
        with socket.create_connection(("127.0.0.1", srv.port)) as raw:
            raw.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() +
                        b'5\r\n{"uui\r\n')
        wait_until(lambda: http_counts(http, "callbacks").get("400") and
                   http_counts(http, "events").get("400"), 60,
                   "serve to count both cut-short requests")
        for endpoint in ("callbacks", "events"):
            counts = http_counts(http, endpoint)
            assert counts == {"400": 1.0}, (endpoint, counts)  # no 5xx, nothing else
        assert srv.stop() == 0, srv.log()

    assert queue_depth(setup.amqp_url, setup.names["queue"]) == 0
    log_text = srv.log()
    assert not loud_lines(log_text), log_text
    assert "Traceback" not in log_text and token not in log_text
    cut = [line for line in json_log_lines(log_text) if line.get("error") == "client_disconnected"]
    assert [(line["level"], line["endpoint"], line["status"]) for line in cut] == \
        [("INFO", "callbacks", 400), ("INFO", "events", 400)], log_text
    assert "the client disconnected before sending the whole body (10 of 1000 bytes " \
        "received); nothing was queued" in cut[0]["message"]
    assert "the client disconnected before sending the whole body" in cut[1]["message"]


def test_a_callback_too_deep_to_become_an_event_is_a_4xx_and_publishes_nothing(sqlite_setup):
    from reactor.domain.jsonvalues import MESSAGE_MAX_DEPTH

    setup = sqlite_setup
    ((job, token),) = make_jobs(setup.app, 1, "deep")
    # The body itself is one level, so "deep" adds MESSAGE_MAX_DEPTH - 1 (at the limit) or
    # MESSAGE_MAX_DEPTH (beyond it); as an event the job JSON sits one level deeper still, under
    # "data".
    bodies = {"at the limit": {"id": "hpc-1", "status": "RUNNING",
                               "deep": nested(MESSAGE_MAX_DEPTH - 1)},
              "beyond it": {"id": "hpc-1", "status": "RUNNING", "deep": nested(MESSAGE_MAX_DEPTH)}}
    with ServeProcess(setup) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        for what, body in bodies.items():
            r = http.post("/callbacks", params={"uuid": job, "token": token,
                                                "status": "RUNNING"}, json=body)
            assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
            answer = r.json()
            assert answer["error"] in ("decode_error", "schema_invalid"), (what, answer)
            assert "nest" in answer["detail"] or "deep" in answer["detail"], (what, answer)
        assert not [s for s in http_counts(http, "callbacks") if s.startswith("5")]
        assert srv.stop() == 0, srv.log()
    assert queue_depth(setup.amqp_url, setup.names["queue"]) == 0
    assert not loud_lines(srv.log()), srv.log()


def test_a_token_sent_in_the_wrong_place_is_never_echoed(sqlite_setup):
    setup = sqlite_setup
    ((job, token),) = make_jobs(setup.app, 1, "echo")
    requests = [
        # (what, method, path, kwargs, status)
        ("a job token in the path", "GET", f"/jobs/{token}", {}, 400),
        ("uuid and token swapped in a callback", "POST", "/callbacks",
         dict(params={"uuid": token, "token": job, "status": "RUNNING"},
              json={"id": "hpc-1", "status": "RUNNING"}), 400),
        ("uuid and token swapped in an event", "POST", "/events",
         dict(json={"uuid": token, "name": "run", "token": job}), 400),
        ("a job token in an unknown path", "POST", f"/callbacks/{token}", {}, 404),
    ]
    with ServeProcess(setup) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        for what, method, path, kwargs, status in requests:
            r = http.request(method, path, **kwargs)
            assert r.status_code == status, (what, r.status_code, r.text)
            assert r.json()["detail"], (what, r.text)
            assert token not in r.text and token not in str(r.headers), (what, r.text)
        assert srv.stop() == 0, srv.log()
    assert queue_depth(setup.amqp_url, setup.names["queue"]) == 0
    log_text = srv.log()
    assert token not in log_text
    served = [line for line in json_log_lines(log_text)
              if line["logger"] == "reactor.ingress.http" and "status" in line]
    # The access log names the route where the path held no valid job uuid.
    assert served[0]["message"].startswith("GET /jobs/{uuid} 400 bad_request: "), served[0]
    assert [line["status"] for line in served] == [400, 400, 400]  # the 404 reaches no route


def test_the_401_of_a_read_without_a_token_says_how_to_send_it_intact(sqlite_setup):
    setup = sqlite_setup
    ((job, token),) = make_jobs(setup.app, 1, "hint")
    read_hint = (f"reading job {job} needs the job's token; send it as 'Authorization: "
                 "Bearer …' or as the query parameter 'token'")
    post_hint = (f"'run' on job {job} needs the job's token; send it as the query parameter "
                 "'token', or as 'token' in an event body")
    with ServeProcess(setup) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        r = http.get(f"/jobs/{job}")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"error": "token_required", "detail": read_hint}
        r = http.post("/events", params={"uuid": job, "event": "run"})
        assert r.status_code == 401
        assert r.json() == {"error": "token_required", "detail": post_hint}
        # A scheme with no token after it: the hint is not masked as if "Bearer" were one.
        r = http.get(f"/jobs/{job}", headers={"Authorization": "Bearer"})
        assert r.status_code == 401
        assert r.json()["detail"] == "the Authorization header must be 'Bearer <token>'"
        assert srv.stop() == 0, srv.log()
    messages = [line["message"] for line in json_log_lines(srv.log())
                if line.get("error") == "token_required"]
    # The log line carries the same detail, untouched by the masking every line goes through.
    assert messages[:2] == [f"GET /jobs/{job} 401 token_required: {read_hint}",
                            f"POST /events 401 token_required: {post_hint}"]


# --------------------------------------------------------------------------------- outages
def test_broker_outage_answers_503_and_nothing_is_lost(sqlite_setup):
    setup = sqlite_setup
    ((job, token),) = make_jobs(setup.app, 1, "outage")
    params = pika.URLParameters(setup.amqp_url)
    proxy = CuttableProxy(params.host, params.port)
    try:
        via = broker_via(setup.amqp_url, proxy.port)
        with ServeProcess(setup, broker_url=via) as srv, \
                httpx.Client(base_url=srv.url, timeout=60) as http:
            def event(n: int) -> httpx.Response:
                return http.post("/events", json={"uuid": job, "name": "update", "token": token,
                                                  "data": {"n": n}})

            assert http.get("/readyz").status_code == 200
            first = event(1)
            assert first.status_code == 202, first.text

            proxy.cut()
            refused = event(2)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "broker_unavailable"
            assert refused.headers.get("retry-after")
            assert token not in refused.text
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["broker"] != "ok"
            assert ready.json()["store"] == "ok"

            proxy.restore()
            # The sender tries again; the server reconnects by itself.
            again = event(2)
            assert again.status_code == 202, again.text
            assert http.get("/readyz").status_code == 200
            assert srv.stop() == 0, srv.log()

        # Every 202 is in the queue, exactly once; the 503 left nothing behind.
        queued = peek(setup.amqp_url, setup.names["queue"])
        assert [json.loads(body)["data"] for body, _ in queued] == [{"n": 1}, {"n": 2}]
        assert [p["message_id"] for _, p in queued] == [first.json()["message_id"],
                                                        again.json()["message_id"]]
    finally:
        proxy.close()


def test_store_outage_answers_503_and_publishes_nothing(sqlite_setup):
    setup = sqlite_setup
    job = job_uuid(pipeline_uuid("serve-tests-outage"), [], {"n": 1})
    token = setup.app.authority.job_token(job)
    dead_store = f"mongodb://127.0.0.1:{free_port()}/nothing"
    with ServeProcess(setup, store_uri=dead_store, server_selection_timeout_ms=300) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        r = http.post("/events", params={"uuid": job, "event": "run", "token": token})
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "store_unavailable" and token not in r.text
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["broker"] == "ok"
        assert ready.json()["store"] != "ok"
        assert srv.stop() == 0, srv.log()
    # Declare the topology the server would have used, then look: nothing was queued.
    from reactor.broker.publisher import publish

    publish(setup.amqp_url, setup.topology, [])
    assert queue_depth(setup.amqp_url, setup.names["queue"]) == 0


def test_serve_refuses_to_start_without_a_broker_or_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REACTOR_")}
    env["REACTOR_STATE_DIR"] = str(tmp_path / ".reactor")
    out = subprocess.run([sys.executable, "-m", "reactor.cli.main", "serve", "--port", "0"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "REACTOR_BROKER_URL" in out.stderr
    env.update(REACTOR_BROKER_URL="amqp://guest:guest@127.0.0.1:1/%2F",
               REACTOR_STORE_URI="mongodb://127.0.0.1:1/x")
    out = subprocess.run([sys.executable, "-m", "reactor.cli.main", "serve", "--port", "0"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "secret" in out.stderr
    env.update(REACTOR_SECRET="serve-test-secret-" + "z" * 16,
               REACTOR_STORE_URI=f"sqlite:///{tmp_path / 'reactor.db'}")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "reactor.cli.main", "serve", "--port", str(port)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"could not serve on 127.0.0.1:{port}" in out.stderr


# --------------------------------------------------------------------------------- contract
def test_the_queue_message_is_self_contained_and_round_trips_through_the_contract():
    from reactor.contract import messages
    from reactor.ingress.handlers import outgoing_body

    job = job_uuid(pipeline_uuid("serve-tests-contract"), [], {})
    token = "t" * 32
    cases = [
        (b'{"id": "h1", "status": "RUNNING", "_links": {"self": {}}}',
         {"uuid": job, "token": token}),
        (b'{"id": "h1", "status": "KILLED"}', {"uuid": job, "token": token, "note": "oom"}),
        (b"", {"uuid": job, "event": "UPDATE", "note": "halfway", "token": token}),
        (json.dumps({"uuid": job, "name": "Finish", "token": token, "data": {"a": [1]}}).encode(),
         {}),
        (json.dumps({"uuid": job, "action": "delete", "force": True, "token": token}).encode(),
         {}),
    ]
    for body, params in cases:
        message = messages.parse(body, params)
        out = outgoing_body(message)
        again = messages.parse(out)  # no parameters: the consumer has none
        assert (type(again), again.uuid, again.token) == (type(message), message.uuid, token)
        if isinstance(message, messages.DeleteMessage):
            assert again.force is True
        else:
            assert (again.event, again.data) == (message.event, message.data)
    running = messages.parse(outgoing_body(messages.parse(*cases[0])))
    assert running.event == "run" and "_links" not in running.data


def test_a_queue_message_the_contract_refuses_or_changes_is_a_4xx_never_a_500():
    from types import SimpleNamespace

    from reactor.contract import messages
    from reactor.domain.jsonvalues import MESSAGE_MAX_DEPTH
    from reactor.ingress.handlers import Ingress, outgoing_body
    from reactor.ingress.request import HttpError

    job = job_uuid(pipeline_uuid("serve-tests-outgoing"), [], {})
    ingress = SimpleNamespace(max_bytes=262144)  # all _check_outgoing reads of the Ingress
    message = messages.EventMessage("callback", job, "run", {"status": "RUNNING"}, "t" * 32)
    # Refused on re-reading (nested too deep under "data"): the reason's own status.
    deep = messages.EventMessage("callback", job, "run",
                                 nested(MESSAGE_MAX_DEPTH), "t" * 32)
    with pytest.raises(HttpError) as refused:
        Ingress._check_outgoing(ingress, outgoing_body(deep), deep)
    assert (refused.value.status, refused.value.error) == (400, "decode_error")
    assert "nothing was queued" in refused.value.detail
    # Read back as something else: refused, not queued, and not a 500.
    other = messages.EventMessage("callback", job, "run", {"status": "FAILED"}, "t" * 32)
    with pytest.raises(HttpError) as changed:
        Ingress._check_outgoing(ingress, outgoing_body(other), message)
    assert (changed.value.status, changed.value.error) == (400, "schema_invalid")
