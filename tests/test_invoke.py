"""``reactor invoke`` as a real subprocess with a real environment (Abaco actor mode)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEST_SECRET

ROOT = Path(__file__).resolve().parents[1]
UNKNOWN_JOB = "107ffff0-0000-5000-8000-000000000000"
PARAM_VARS = ("MSG", "uuid", "token", "event", "status", "note", "message_id")


def clean_environment() -> dict:
    """The test's environment without reactor settings or actor parameters of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REACTOR_") and k not in PARAM_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Actor:
    """An embedded store with one job, and a way to invoke the reactor against it."""

    def __init__(self, tmp_path: Path, **settings: str):
        self.cwd = tmp_path
        self.env = clean_environment()
        self.env.update({"REACTOR_STORE_URI": f"sqlite:///{tmp_path / 'store.db'}",
                         "REACTOR_SECRET": TEST_SECRET,
                         "REACTOR_STATE_DIR": str(tmp_path / "state")})
        self.env.update(settings)
        from reactor.app import App

        self.app = App.from_env({k: v for k, v in self.env.items() if k.startswith("REACTOR_")})
        pipeline = "106" + "0" * 5 + "-0000-5000-8000-000000000001"
        self.app.store.add_pipeline({"uuid": pipeline, "name": "invoke-tests"})
        record, _ = self.app.jobs.create(pipeline, data={"sample": "A"})
        self.uuid = record["uuid"]
        self.token = self.app.authority.job_token(self.uuid)
        other, _ = self.app.jobs.create(pipeline, data={"sample": "B"})
        self.other_token = self.app.authority.job_token(other["uuid"])

    def record(self) -> dict:
        return self.app.store.get_job(self.uuid)

    def run(self, msg: str | bytes | None = None, debug: bool = False, **params: str):
        env = dict(self.env)
        if msg is not None:
            env = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
            env[b"MSG"] = msg if isinstance(msg, bytes) else msg.encode()
            env.update({k.encode(): v if isinstance(v, bytes) else v.encode()
                        for k, v in params.items()})
        else:
            env.update(params)
        args = [sys.executable, "-m", "reactor.cli.main"] + (["--debug"] if debug else []) + \
            ["invoke"]
        done = subprocess.run(args, env=env, cwd=self.cwd, capture_output=True, timeout=120)
        lines = done.stdout.decode().splitlines()
        outcome = json.loads(lines[0]) if lines else None
        if done.returncode in (0, 1) and not debug:
            assert len(lines) == 1, f"expected one JSON line, got {done.stdout!r}"
        return done.returncode, outcome, done.stderr.decode()

    def event(self, name: str, token: str | None = None, **extra) -> str:
        return json.dumps({"uuid": self.uuid, "name": name,
                           "token": self.token if token is None else token, **extra})


@pytest.fixture
def actor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # never read a config.yml of the repository
    a = Actor(tmp_path)
    yield a
    a.app.close()


def test_an_applied_event_exits_0_with_one_json_line(actor):
    code, outcome, stderr = actor.run(actor.event("run", data={"msg": "running"}))
    assert code == 0
    assert (outcome["outcome"], outcome["job_uuid"], outcome["event"], outcome["state"]) == \
        ("applied", actor.uuid, "run", "RUNNING")
    assert actor.record()["state"] == "RUNNING"
    assert "applied" in stderr  # the log line goes to stderr
    assert actor.token not in stderr


def test_the_same_message_twice_is_one_history_entry(actor):
    message = actor.event("update", data={"progress": 10})
    assert actor.run(message)[:2][0] == 0
    code, outcome, _ = actor.run(message)
    assert (code, outcome["outcome"]) == (0, "duplicate")
    assert len(actor.record()["history"]) == 2


def test_message_ids_from_the_environment_tell_equal_bodies_apart(actor):
    message = actor.event("update", data={"progress": 10})
    assert actor.run(message, message_id="exec-1")[1]["outcome"] == "applied"
    assert actor.run(message, message_id="exec-2")[1]["outcome"] == "applied"
    assert actor.run(message, message_id="exec-1")[1]["outcome"] == "duplicate"
    assert len(actor.record()["history"]) == 3


def _rejected(actor: Actor, reason: str):
    """The MSG (and parameters) that provoke one rejection reason."""
    return {
        "too_large": (actor.event("update", data={"pad": "x" * 2000}), {}),
        "decode_error": ('{"uuid": "' + actor.uuid + '", "name": ', {}),
        "decode_error_utf8": (b'{"uuid": "\xff\xfe"}', {}),
        "schema_invalid": (actor.event("run", data=["not", "an", "object"]), {}),
        "unknown_event": (actor.event("launch"), {}),
        "unknown_job": (json.dumps({"uuid": UNKNOWN_JOB, "name": "run", "token": actor.token}),
                        {}),
        "auth_failed": (actor.event("run", token=actor.other_token), {}),
        "invalid_transition": (actor.event("finish"), {}),
        "auth_failed_reset": (actor.event("reset"), {}),
        "unknown_event_param": ("", {"uuid": actor.uuid, "event": "explode",
                                     "token": actor.token}),
    }[reason]


@pytest.mark.parametrize("case", [
    "too_large", "decode_error", "decode_error_utf8", "schema_invalid", "unknown_event",
    "unknown_job", "auth_failed", "invalid_transition", "auth_failed_reset",
    "unknown_event_param"])
def test_each_rejection_exits_1_and_changes_nothing(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    actor = Actor(tmp_path, REACTOR_MAX_MESSAGE_BYTES="1024")
    try:
        before = actor.record()
        msg, params = _rejected(actor, case)
        code, outcome, stderr = actor.run(msg, **params)
        reason = case.removesuffix("_utf8").removesuffix("_reset").removesuffix("_param")
        assert code == 1
        assert (outcome["kind"], outcome["reason"]) == ("rejected", reason)
        assert outcome["outcome"] == f"rejected:{reason}" and outcome["detail"]
        assert actor.record() == before
        assert actor.token not in stderr + json.dumps(outcome)
        assert actor.other_token not in stderr + json.dumps(outcome)
    finally:
        actor.app.close()


def test_a_parameter_only_event_from_the_environment(actor):
    code, outcome, _ = actor.run(uuid=actor.uuid, event="update", token=actor.token,
                                 note="from the actor environment")
    assert (code, outcome["outcome"]) == (0, "applied")
    assert actor.record()["history"][-1]["data"] == {"note": "from the actor environment"}


def test_a_job_status_callback_from_the_environment(actor):
    body = json.dumps({"id": "job-7", "status": "RUNNING", "_links": {"self": {}}})
    code, outcome, _ = actor.run(body, uuid=actor.uuid, token=actor.token)
    assert (code, outcome["outcome"], outcome["event"]) == (0, "applied", "run")
    assert actor.record()["history"][-1]["data"] == {"id": "job-7", "status": "RUNNING"}


def test_an_unreachable_store_is_a_retry(actor):
    actor.env.update(REACTOR_STORE_URI="mongodb://127.0.0.1:1/reactor",
                     REACTOR_SERVER_SELECTION_TIMEOUT_MS="200")
    code, outcome, stderr = actor.run(actor.event("run"))
    assert (code, outcome["outcome"]) == (1, "retry:store_unavailable")
    assert "Traceback" not in stderr


def test_a_corrupt_record_is_an_internal_error_outcome_not_a_crash(actor):
    import sqlite3

    with sqlite3.connect(actor.cwd / "store.db") as conn:
        # Valid JSON of the wrong shape: text that is not JSON at all, SQLite itself now
        # refuses to write (the archive-path index reads every body).
        conn.execute("UPDATE jobs SET body = '\"not a job record\"' WHERE uuid = ?",
                     (actor.uuid,))
    code, outcome, stderr = actor.run(actor.event("run"))
    assert (code, outcome["outcome"]) == (1, "retry:internal_error")
    assert "Traceback" not in stderr
    code, outcome, stderr = actor.run(actor.event("run"), debug=True)
    assert code == 1 and outcome is None and "Traceback" in stderr


def test_a_missing_secret_is_a_clear_configuration_error(actor):
    actor.env.pop("REACTOR_SECRET")
    actor.env["REACTOR_STORE_URI"] = "mongodb://127.0.0.1:1/reactor"
    code, outcome, stderr = actor.run(actor.event("run"))
    assert (code, outcome) == (2, None)
    assert stderr.strip().count("\n") == 0 and "secret" in stderr.lower()


def test_works_with_the_embedded_default_and_nothing_configured(tmp_path, monkeypatch):
    from reactor.app import App

    monkeypatch.chdir(tmp_path)
    env = clean_environment()
    env["REACTOR_STATE_DIR"] = str(tmp_path / "state")
    app = App.from_env({"REACTOR_STATE_DIR": env["REACTOR_STATE_DIR"]})
    pipeline = "106" + "0" * 5 + "-0000-5000-8000-000000000002"
    app.store.add_pipeline({"uuid": pipeline, "name": "embedded"})
    record, _ = app.jobs.create(pipeline, data={})
    token = app.authority.job_token(record["uuid"])
    app.close()
    assert (tmp_path / "state" / "secret").stat().st_mode & 0o777 == 0o600
    env["MSG"] = json.dumps({"uuid": record["uuid"], "name": "run", "token": token})
    done = subprocess.run([sys.executable, "-m", "reactor.cli.main", "invoke"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "RUNNING"


@pytest.mark.parametrize("name", ["uuid", "token", "event", "status", "note"])
def test_parameters_with_bytes_that_are_not_utf8_are_rejections_not_bugs(actor, name):
    """An actor platform retries ``retry:*`` outcomes forever: bad bytes must be rejected."""
    params = {"uuid": actor.uuid.encode(), "token": actor.token.encode(), "event": b"update",
              name: b"bad\xff\xfe"}
    code, outcome, err = actor.run("", **params)
    assert (code, outcome["outcome"]) == (1, "rejected:decode_error")
    assert repr(name) in outcome["detail"] and "Traceback" not in err
    assert actor.record()["revision"] == 1


def test_a_token_in_the_uuid_slot_is_in_no_output_or_log_line(actor):
    """Swapping uuid and token: the rejection quotes neither the token nor logs it."""
    body = json.dumps({"uuid": actor.token, "name": "update", "token": actor.uuid})
    for code, outcome, err in (actor.run(body),
                               actor.run("", uuid=actor.token, token=actor.uuid, event="run"),
                               actor.run('{"status": "RUNNING"}', uuid=actor.token,
                                         token=actor.uuid)):
        assert (code, outcome["kind"]) == (1, "rejected")
        assert actor.token not in json.dumps(outcome) and actor.token not in err
