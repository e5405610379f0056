"""The pipeline in a child process (``reactor.engine.pipeline_process``): its request protocol, the
order it keeps when a message is left undecided, and the child's life (start, stop, orphaned)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from queue_helpers import SECRET, event, make_jobs
from reactor.app import App
from reactor.engine.batching import GroupCommit
from reactor.domain.errors import PipelineProcessGone, StoreUnavailable
from reactor.domain.outcomes import RETRY, Outcome
from reactor.engine.pipeline_process import PipelineProcess, _Child


@pytest.fixture
def app(sqlite_uri):
    a = App.from_env({"REACTOR_STORE_URI": sqlite_uri, "REACTOR_SECRET": SECRET})
    yield a
    a.close()


def _history(app: App, uuid: str) -> list[str]:
    return [e["name"] for e in app.store.get_job(uuid)["history"]]


def _labels(outcomes) -> list[str | None]:
    return [o.label if o is not None else None for o in outcomes]


class Failing:
    """A pipeline that fails on one message id: preparing it raises (a bug), or the store
    fails for it (its commit raises StoreUnavailable, applying it alone gives a retry)."""

    def __init__(self, pipeline, message_id: str, how: str):
        self._pipeline, self.how = pipeline, how
        self.key = pipeline.prepare(b"{}", message_id).key  # the message id's duplicate key
        self.jobs = FailingJobs(pipeline.jobs, self.key) if how == "retry" else pipeline.jobs

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def prepare(self, body, message_id=None, params=None):
        prepared = self._pipeline.prepare(body, message_id, params)
        if self.how == "raises" and prepared.key == self.key:
            raise RuntimeError("a bug in the pipeline")
        return prepared

    def apply(self, message, key):
        if self.how == "retry" and key == self.key:
            return Outcome(RETRY, "store_unavailable", "the store does not answer")
        return self._pipeline.apply(message, key)

    def process(self, body, message_id=None, params=None):
        prepared = self.prepare(body, message_id, params)
        if self.how == "retry" and prepared.key == self.key:
            return self.apply(prepared.message, prepared.key)
        return self._pipeline.process(body, message_id, params)


class FailingJobs:
    """Jobs whose store fails to commit the change carrying one duplicate key."""

    def __init__(self, jobs, key: str):
        self._jobs, self.key = jobs, key

    def __getattr__(self, name):
        return getattr(self._jobs, name)

    def commit(self, change):
        if change.entry.get("key") == self.key:
            raise StoreUnavailable("the store does not answer")
        return self._jobs.commit(change)


def _failing_child(app: App, message_id: str, how: str) -> _Child:
    child = _Child(app.settings, group_commit=False)
    child.pipeline = Failing(child.pipeline, message_id, how)
    child.separate = GroupCommit(child.pipeline, separate_commits=True)
    return child


def test_child_applies_a_list_in_order_with_one_outcome_each(app):
    (a, ta), (b, _tb) = make_jobs(app, 2, "child")
    child = _Child(app.settings, group_commit=False)
    try:
        outcomes = child.handle("events", [(event(a, "run", ta), "m1"),
                                           (event(a, "run", ta), "m1"),
                                           (event(b, "run", "0" * 32), "m2"),
                                           (event(a, "update", ta, {"n": 1}), "m3")])
    finally:
        child.app.close()
    assert _labels(outcomes) == ["applied", "duplicate", "rejected:auth_failed", "applied"]
    assert _history(app, a) == ["create", "run", "update"]
    assert _history(app, b) == ["create"]


@pytest.mark.parametrize("how", ["raises", "retry"])
def test_an_undecided_message_halts_the_child_until_resumed(app, how):
    (a, ta), (b, tb) = make_jobs(app, 2, "halt")
    child = _failing_child(app, "bad", how)
    try:
        first = child.handle("events", [(event(a, "run", ta), "m1"), (event(b, "run", tb), "bad"),
                                        (event(a, "update", ta), "m3")])
        # Held back, untouched: applying it now would overtake the undecided message.
        held = child.handle("events", [(event(a, "finish", ta), "m4")])
        assert _history(app, a) == ["create", "run"]
        one = child.handle("one", (event(b, "run", tb), "bad"))
        assert child.handle("resume", None) is None
        after = child.handle("events", [(event(a, "update", ta), "m3")])
    finally:
        child.app.close()
    assert _labels(first) == ["applied", None, None]
    assert held == [None]
    if how == "raises":
        assert one[0] == "error" and "RuntimeError: a bug in the pipeline" in one[1]
    else:
        assert one[0] == "ok" and one[1].label == "retry:store_unavailable"
    assert _labels(after) == ["applied"]
    assert _history(app, a) == ["create", "run", "update"]


def test_group_commit_answers_nothing_after_its_first_undecided_message(app):
    (a, ta), (b, tb) = make_jobs(app, 2, "group")
    child = _Child(app.settings, group_commit=True)
    try:
        applied = child.handle("batch", [(event(a, "run", ta), "g1"), (event(b, "run", tb), "g2")])

        class Undecided:  # group commit that could not decide the middle one of three
            def process(self, items):
                return [Outcome("applied"), None, Outcome("applied")]

        child.group = Undecided()
        cut = child.handle("batch", [(b"{}", "x1"), (b"{}", "x2"), (b"{}", "x3")])
        held = child.handle("batch", [(event(a, "update", ta), "g3")])
    finally:
        child.app.close()
    assert _labels(applied) == ["applied", "applied"]
    assert cut[0] is not None and cut[1:] == [None, None]
    assert held == [None]
    assert _history(app, a) == ["create", "run"]


def test_an_orphaned_child_applies_nothing_more(app):
    (a, ta), = make_jobs(app, 1, "orphan")
    child = _Child(app.settings, group_commit=False)
    child.parent = -1  # as if the consumer that started it were gone
    try:
        with pytest.raises(SystemExit):
            child.handle("events", [(event(a, "run", ta), "o1")])
    finally:
        child.app.close()
    assert _history(app, a) == ["create"]


def test_lists_go_two_deep_and_the_child_exits_when_closed(app):
    (a, ta), (b, tb) = make_jobs(app, 2, "proc")
    remote = PipelineProcess(app.settings, group_commit=False)
    try:
        remote.submit([(event(a, "run", ta), "p1"), (event(b, "run", tb), "p2")])
        remote.submit([(event(a, "update", ta), "p3")])
        assert remote.sent == 2
        first, second = remote.collect(), remote.collect()
        again = remote.process(event(a, "update", ta), "p3")
    finally:
        remote.close()
    assert _labels(first) == ["applied", "applied"] and _labels(second) == ["applied"]
    assert again.label == "duplicate"
    assert remote._proc.returncode == 0
    assert _history(app, a) == ["create", "run", "update"]


def test_a_child_that_cannot_start_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    bad = App.from_env({"REACTOR_STORE_URI": f"sqlite:///{blocker}/reactor.db",
                        "REACTOR_SECRET": SECRET})
    with pytest.raises(PipelineProcessGone, match="could not start: StoreError"):
        PipelineProcess(bad.settings, group_commit=False)


def test_the_child_exits_when_the_consumer_is_killed(app, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from reactor.app import App
            from reactor.engine.pipeline_process import PipelineProcess
            app = App.from_env({"REACTOR_STORE_URI": sys.argv[1], "REACTOR_SECRET": sys.argv[2]})
            remote = PipelineProcess(app.settings, group_commit=False)
            print(remote.pid, flush=True)
            time.sleep(600)
        """), app.settings.store_uri, SECRET], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"pipeline process {child} outlived its consumer"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
