"""Observability: Prometheus metrics scraped over HTTP and parsed, counters that move with the
outcomes of a workload; log lines that parse as JSON and never contain a token."""
from __future__ import annotations

import io
import json
import logging
import os
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reactor.obs.logs import (FIELDS_ATTR, MaskTokens, choose_format, make_handler,
                              outcome_fields, setup_logging)
from reactor.obs.metrics import Metrics
from reactor.domain.outcomes import Kind, Outcome

TOKEN = "0123456789abcdef0123456789abcdef"  # shaped like a job token; used only here


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


# --------------------------------------------------------------------------------- metrics
def test_metrics_count_outcomes_in_a_private_registry_and_scrape_over_http():
    a, b = Metrics(), Metrics()
    port = a.serve_http(0, "127.0.0.1")
    try:
        before = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        # Every known series is there from the start, at zero.
        assert ("reactor_messages_total", (("outcome", "rejected"), ("reason", "unknown_job"))) \
            in before
        assert value(before, "reactor_messages_total", outcome="applied", reason="") == 0

        workload = [Outcome(Kind.APPLIED)] * 3 + [Outcome(Kind.DUPLICATE)] + \
            [Outcome(Kind.REJECTED, "auth_failed")] * 2 + \
            [Outcome(Kind.RETRY, "store_unavailable")]
        for n, outcome in enumerate(workload):
            with a.in_progress():
                a.observe(outcome, 0.002 * (n + 1))
        a.dead_lettered("auth_failed")
        a.dead_lettered("auth_failed")
        a.retried("store_unavailable")
        a.set_broker_connected(True)
        a.set_store_connected(False)

        after = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    finally:
        a.close()
    assert value(after, "reactor_messages_total", outcome="applied", reason="") == 3
    assert value(after, "reactor_messages_total", outcome="duplicate", reason="") == 1
    assert value(after, "reactor_messages_total", outcome="rejected", reason="auth_failed") == 2
    assert value(after, "reactor_messages_total", outcome="retry",
                 reason="store_unavailable") == 1
    assert value(after, "reactor_processing_seconds_count") == len(workload)
    assert value(after, "reactor_processing_seconds_sum") == pytest.approx(0.002 * 28)
    assert value(after, "reactor_processing_seconds_bucket", le="0.005") == 2
    assert value(after, "reactor_in_flight") == 0
    assert value(after, "reactor_dead_letters_total", reason="auth_failed") == 2
    assert value(after, "reactor_retries_total", reason="store_unavailable") == 1
    assert value(after, "reactor_broker_connected") == 1
    assert value(after, "reactor_store_connected") == 0

    # The other registry saw none of it.
    other = samples(b.render()[0].decode())
    assert value(other, "reactor_messages_total", outcome="applied", reason="") == 0
    assert value(other, "reactor_processing_seconds_count") == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)  # closed with the object


def test_in_flight_gauge_counts_the_block_even_when_it_raises():
    m = Metrics()
    with m.in_progress():
        with m.in_progress():
            assert value(samples(m.render()[0].decode()), "reactor_in_flight") == 2
    with pytest.raises(RuntimeError):
        with m.in_progress():
            raise RuntimeError("boom")
    assert value(samples(m.render()[0].decode()), "reactor_in_flight") == 0


def test_metrics_server_on_a_busy_port_is_a_clear_error():
    a, b = Metrics(), Metrics()
    port = a.serve_http(0, "127.0.0.1")
    try:
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            b.serve_http(port, "127.0.0.1")
    finally:
        a.close()


@pytest.mark.rabbitmq
def test_serve_metrics_counters_move_with_the_outcomes_of_a_small_workload(amqp_url, sqlite_uri,
                                                                           tmp_path):
    from queue_helpers import QueueSetup, make_jobs
    from test_serve import ServeProcess, json_log_lines

    setup = QueueSetup(amqp_url, sqlite_uri, tmp_path)
    try:
        ((job, token), (_other, other_token)) = make_jobs(setup.app, 2, "metrics")
        with ServeProcess(setup) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
            before = samples(http.get("/metrics").text)
            accepted = [http.post("/events", json={"uuid": job, "name": "update",
                                                   "token": token, "data": {"n": n}})
                        for n in range(3)]
            forbidden = [http.post("/events", params={"uuid": job, "event": "run",
                                                      "token": other_token}) for _ in range(2)]
            broken = http.post("/callbacks", content=b"{nope")
            read = http.get(f"/jobs/{job}", params={"token": token})
            assert [r.status_code for r in accepted + forbidden + [broken, read]] == \
                [202, 202, 202, 403, 403, 400, 200]
            after = samples(http.get("/metrics").text)
            assert srv.stop() == 0, srv.log()
        for endpoint, status, n in (("events", "202", 3), ("events", "403", 2),
                                    ("callbacks", "400", 1), ("jobs", "200", 1)):
            delta = value(after, "reactor_http_requests_total", endpoint=endpoint,
                          status=status) - value(before, "reactor_http_requests_total",
                                                 endpoint=endpoint, status=status)
            assert delta == n, (endpoint, status, delta)
        assert value(after, "reactor_publish_seconds_count") - \
            value(before, "reactor_publish_seconds_count") == 3
        assert value(after, "reactor_broker_connected") == 1
        assert value(after, "reactor_store_connected") == 1

        lines = json_log_lines(srv.log())
        served = [line for line in lines if line.get("endpoint") == "events"]
        assert [line["status"] for line in served] == [202, 202, 202, 403, 403]
        assert all(isinstance(line["latency_ms"], float) for line in served)
        text = srv.log()
        assert token not in text and other_token not in text
    finally:
        setup.close()


# --------------------------------------------------------------------------------- logs
def _logger(name: str, fmt: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger writing to a fresh stream through the handler ``setup_logging`` installs."""
    stream = io.StringIO()
    handler = make_handler(stream, fmt)
    logger = logging.getLogger(f"reactor.tests.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_json_lines_parse_and_never_contain_a_token():
    logger, stream = _logger("json", "json")
    logger.info("callback from ?uuid=107x&token=%s&status=RUNNING", TOKEN)
    logger.warning("body %s", json.dumps({"uuid": "107x", "token": TOKEN}))
    logger.info("with fields", extra={"fields": {"job_uuid": "107x", "token": TOKEN,
                                                 "nested": {"authorization": TOKEN},
                                                 "note": f"token={TOKEN}", "n": 3}})
    try:
        raise ValueError(f"bad token={TOKEN}")
    except ValueError:
        logger.exception("failed")
    text = stream.getvalue()
    assert TOKEN not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 4
    assert [line["level"] for line in lines] == ["INFO", "WARNING", "INFO", "ERROR"]
    assert all(line["logger"] == "reactor.tests.json" and line["time"].endswith("Z")
               for line in lines)
    assert "token=0123…" in lines[0]["message"]
    assert lines[2]["job_uuid"] == "107x" and lines[2]["n"] == 3
    assert lines[2]["token"] == "0123…" and lines[2]["nested"]["authorization"] == "0123…"
    assert "ValueError" in lines[3]["exc"] and "Traceback" in lines[3]["exc"]


def test_console_lines_are_readable_and_masked():
    logger, stream = _logger("console", "console")
    logger.info("applied: job moved", extra={"fields": {"message_id": "m-1",
                                                        "note": f"token={TOKEN}"}})
    text = stream.getvalue()
    assert TOKEN not in text
    assert " INFO reactor.tests.console applied: job moved [message_id=m-1 note=" in text


def test_outcome_fields_make_one_structured_line_per_message():
    # As the consumer logs a processed message: "<label>: <detail>" plus outcome_fields.
    logger, stream = _logger("outcome", "json")
    applied = Outcome(Kind.APPLIED, None, "job 107x: run moved CREATED → RUNNING", "107x", "run",
                      "RUNNING")
    logger.info("%s: %s (message id %s)", applied.label, applied.detail, "m-1",
                extra={FIELDS_ATTR: outcome_fields(applied, message_id="m-1", attempt=1,
                                                   latency_s=0.0123, action="ack")})
    refused = Outcome(Kind.REJECTED, "auth_failed", f"token={TOKEN} refused", "107x", "run")
    logger.warning("%s: %s (message id %s)", refused.label, refused.detail, "m-2",
                   extra={FIELDS_ATTR: outcome_fields(refused, message_id="m-2", attempt=2,
                                                      latency_s=0.5, action="dead_letter")})
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"].startswith("applied: job 107x")
    assert {k: first[k] for k in ("message_id", "job_uuid", "event", "outcome", "attempt",
                                  "latency_ms", "state", "action")} == {
        "message_id": "m-1", "job_uuid": "107x", "event": "run", "outcome": "applied",
        "attempt": 1, "latency_ms": 12.3, "state": "RUNNING", "action": "ack"}
    assert first["level"] == "INFO" and second["level"] == "WARNING"
    assert second["outcome"] == "rejected:auth_failed" and second["attempt"] == 2
    assert TOKEN not in stream.getvalue()


def test_auto_format_is_console_on_a_terminal_and_json_otherwise():
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert choose_format("auto", tty) == "console"
            assert choose_format("json", tty) == "json"
    finally:
        os.close(master)
        os.close(slave)
    assert choose_format("auto", io.StringIO()) == "json"
    assert choose_format("console", io.StringIO()) == "console"
    with pytest.raises(ValueError, match="log_format must be one of json, console, auto"):
        choose_format("xml", io.StringIO())


def test_setup_logging_replaces_its_handler_instead_of_doubling_lines():
    first, second = io.StringIO(), io.StringIO()
    logger = logging.getLogger("reactor.tests.setup")
    root = logging.getLogger("reactor")
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("INFO", "json", first)
        setup_logging("DEBUG", "json", second)
        logger.debug("once, token=%s", TOKEN)
        assert first.getvalue() == ""
        (line,) = second.getvalue().splitlines()
        assert json.loads(line)["message"] == "once, token=0123…"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_mask_filter_masks_the_record_so_any_formatter_shows_it_masked():
    record = logging.LogRecord("reactor.tests.filter", logging.ERROR, __file__, 1,
                               "refused token=%s", (TOKEN,), None)
    setattr(record, FIELDS_ATTR, {"token": TOKEN, TOKEN: "key", "items": [f"x {TOKEN}"]})
    try:
        raise ValueError(f"bad {TOKEN}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert MaskTokens().filter(record) is True
    text = logging.Formatter("%(message)s").format(record)  # a formatter that masks nothing
    assert TOKEN not in text and "refused token=0123…" in text and "ValueError" in text
    fields = getattr(record, FIELDS_ATTR)
    assert fields == {"token": "0123…", "0123…": "key", "items": ["x 0123…"]}
    again = MaskTokens().filter(record)  # idempotent: a second pass changes nothing
    assert again and logging.Formatter("%(message)s").format(record) == text


def test_json_lines_escape_unicode_line_separators_and_stay_one_line():
    logger, stream = _logger("separators", "json")
    logger.info("a\u2028b\u2029c\x85d → e", extra={FIELDS_ATTR: {"note": "x\u2028y"}})
    text = stream.getvalue()
    assert text.count("\n") == 1 and len(text.splitlines()) == 1
    assert "a\\u2028b\\u2029c\\u0085d → e" in text and "x\\u2028y" in text
    line = json.loads(text)
    assert line["message"] == "a\u2028b\u2029c\x85d → e" and line["note"] == "x\u2028y"


@pytest.mark.rabbitmq
@pytest.mark.mongo
def test_consume_metrics_and_json_logs_move_with_the_outcomes_of_a_small_workload(
        amqp_url, mongo_store_uri, tmp_path):
    from queue_helpers import QueueSetup, event, free_port, make_jobs, stop, wait_until
    from reactor.broker.publisher import OutgoingMessage, publish
    from test_serve import json_log_lines

    setup = QueueSetup(amqp_url, mongo_store_uri, tmp_path)
    try:
        ((job, token), (other, other_token)) = make_jobs(setup.app, 2, "consume-metrics")
        bodies = [("run-1", event(job, "run", token)),
                  ("upd-1", event(job, "update", token, {"n": 1})),
                  ("run-2", event(other, "run", other_token)),
                  ("upd-1", event(job, "update", token, {"n": 1})),      # the same message again
                  ("bad-token", event(other, "finish", token)),           # job's token on other
                  ("bad-shape", b'{"uuid": "' + job.encode() + b'", "colour": 1}')]
        msgs = [OutgoingMessage(f"m{n}", body, job, mid) for n, (mid, body) in enumerate(bodies)]
        assert publish(setup.amqp_url, setup.topology, msgs).ok

        port = free_port()
        health = tmp_path / "health.json"
        proc = setup.start_consumer("--metrics-port", str(port), "--metrics-host", "127.0.0.1",
                                    "--health-file", str(health), "--health-interval", "0.2",
                                    env=setup.env(log_format="json"))
        wait_until(lambda: health.exists()
                   and sum(json.loads(health.read_text())["counts"].values()) == len(bodies),
                   120, "the consumer to settle the workload")
        scraped = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        assert stop(proc) == 0, setup.logs()

        assert value(scraped, "reactor_messages_total", outcome="applied", reason="") == 3
        assert value(scraped, "reactor_messages_total", outcome="duplicate", reason="") == 1
        assert value(scraped, "reactor_messages_total", outcome="rejected",
                     reason="auth_failed") == 1
        assert value(scraped, "reactor_messages_total", outcome="rejected",
                     reason="schema_invalid") == 1
        assert value(scraped, "reactor_dead_letters_total", reason="auth_failed") == 1
        assert value(scraped, "reactor_dead_letters_total", reason="schema_invalid") == 1
        assert value(scraped, "reactor_processing_seconds_count") == len(bodies)
        assert value(scraped, "reactor_in_flight") == 0
        assert value(scraped, "reactor_broker_connected") == 1
        assert value(scraped, "reactor_store_connected") == 1

        lines = json_log_lines(setup.logs())
        per_message = [line for line in lines if "outcome" in line]
        assert sorted(line["message_id"] for line in per_message) == sorted(
            mid for mid, _ in bodies)
        for line in per_message:
            assert line["logger"] == "reactor.consume.consumer" and line["attempt"] == 1
            assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
        assert {line["outcome"] for line in per_message} == {
            "applied", "duplicate", "rejected:auth_failed", "rejected:schema_invalid"}
        assert {line["job_uuid"] for line in per_message if line["outcome"] == "applied"} == \
            {job, other}
        text = setup.logs()
        assert token not in text and other_token not in text
    finally:
        setup.close()


class _CountingStream:
    """A text stream that remembers each write call."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_batched_lines_are_written_together_and_other_threads_are_not_held():
    import threading

    from reactor.obs.logs import batched, setup_logging

    stream = _CountingStream()
    handler = setup_logging("INFO", "json", stream=stream)
    logger = logging.getLogger("reactor.test_batched")
    try:
        logger.info("alone")
        assert len(stream.writes) == 1
        with batched():
            logger.info("first")
            with batched():  # nested: written with the outer block, not before
                logger.info("second")
            other = threading.Thread(target=logger.info, args=("from another thread",))
            other.start()
            other.join()
            logger.info("third")
            # Only the other thread's line is out so far.
            assert [json.loads(w)["message"] for w in stream.writes[1:]] == \
                ["from another thread"]
        assert len(stream.writes) == 3
        held = [json.loads(line)["message"] for line in stream.writes[2].splitlines()]
        assert held == ["first", "second", "third"]
        logger.info("after")
        assert json.loads(stream.writes[3])["message"] == "after"
    finally:
        logging.getLogger("reactor").removeHandler(handler)
