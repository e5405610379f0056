"""Where the pipeline runs (``reactor.engine.runner``, ``reactor.engine.pipeline_process``): the
child's request protocol, the order both runners keep when a message is left undecided, and
the child's life (start, stop, orphaned)."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from queue_helpers import SECRET, event, make_jobs
from reactor.app import App, ChildPipeline
from reactor.contract.messages import duplicate_key
from reactor.domain.errors import (InvalidTransition, PipelineProcessGone, PipelineProcessRaised,
                                   StoreUnavailable)
from reactor.engine.pipeline import Item, Pipeline
from reactor.engine.pipeline_process import Child, ChildProcessRunner
from reactor.engine.runner import InProcessRunner


@pytest.fixture
def app(sqlite_uri):
    a = App.from_env({"REACTOR_STORE_URI": sqlite_uri, "REACTOR_SECRET": SECRET})
    yield a
    a.close()


def _history(app: App, uuid: str) -> list[str]:
    return [e["name"] for e in app.store.get_job(uuid)["history"]]


def _labels(outcomes) -> list[str | None]:
    return [o.label if o is not None else None for o in outcomes]


def _wire(*messages: tuple[bytes, str]) -> list[tuple]:
    """A ``process`` request's payload."""
    return [(body, message_id, None) for body, message_id in messages]


class FailingJobs:
    """Jobs that fail on the message carrying one duplicate key: its store does not answer
    (``retry``), or applying it raises (``raises``, a bug) after its plan looked stale."""

    def __init__(self, jobs, message_id: str, how: str):
        self._jobs, self.how = jobs, how
        self.key = duplicate_key(b"{}", message_id, None)  # the message id's duplicate key

    def __getattr__(self, name):
        return getattr(self._jobs, name)

    def plan(self, uuid, event, data, token, key, *args, **kwargs):
        if self.how == "raises" and key == self.key:
            raise InvalidTransition("looks invalid from a remembered state")
        return self._jobs.plan(uuid, event, data, token, key, *args, **kwargs)

    def commit(self, change):
        if self.how == "retry" and change.entry.get("key") == self.key:
            raise StoreUnavailable("the store does not answer")
        return self._jobs.commit(change)

    def apply(self, uuid, event, data=None, token=None, key=None, **kwargs):
        if key == self.key:
            if self.how == "retry":
                raise StoreUnavailable("the store does not answer")
            raise RuntimeError("a bug in the pipeline")
        return self._jobs.apply(uuid, event, data, token=token, key=key, **kwargs)


class ChildSide:
    """A runner's surface over the child's request handling, in this process."""

    def __init__(self, child: Child):
        self.child = child

    def process(self, items: list[Item]):
        status, value = self.child.handle("process", [(i.body, i.message_id, i.params)
                                                      for i in items])
        if status == "error":
            raise RuntimeError(value)
        return value

    def release(self) -> None:
        assert self.child.handle("release", None) is None


def _child(pipeline: Pipeline) -> Child:
    """The child's side in this process, over ``pipeline`` (its logging left as it is)."""
    return Child(lambda: (pipeline, lambda: None))


def _runner(kind: str, jobs) -> ChildSide | InProcessRunner:
    pipeline = Pipeline(jobs, separate_commits=True)
    return InProcessRunner(pipeline) if kind == "in-process" else ChildSide(_child(pipeline))


RUNNERS = pytest.mark.parametrize("kind", ["in-process", "child"])


def test_child_applies_a_list_in_order_with_one_outcome_each(app):
    (a, ta), (b, _tb) = make_jobs(app, 2, "child")
    child = _child(app.pipeline(separate_commits=True))
    status, outcomes = child.handle("process", _wire((event(a, "run", ta), "m1"),
                                                     (event(a, "run", ta), "m1"),
                                                     (event(b, "run", "0" * 32), "m2"),
                                                     (event(a, "update", ta, {"n": 1}), "m3")))
    assert status == "ok"
    assert _labels(outcomes) == ["applied", "duplicate", "rejected:auth_failed", "applied"]
    assert _history(app, a) == ["create", "run", "update"]
    assert _history(app, b) == ["create"]


@RUNNERS
@pytest.mark.parametrize("how", ["raises", "retry"])
def test_an_undecided_message_holds_back_its_job_until_released(app, kind, how):
    """What the list after an undecided message brings for its job waits (the consumer has not
    decided that message yet); other jobs' messages go ahead."""
    (a, ta), (b, tb), (c, tc) = make_jobs(app, 3, "hold")
    runner = _runner(kind, FailingJobs(app.jobs, "bad", how))
    first = runner.process([Item(event(a, "run", ta), "m1"), Item(event(b, "run", tb), "bad"),
                            Item(event(b, "update", tb), "m3")])
    # On its way behind the first list, before the consumer decided "bad" on its own.
    held = runner.process([Item(event(b, "finish", tb), "m4"), Item(event(c, "run", tc), "m5")])
    assert _history(app, b) == ["create"]
    runner.release()
    if how == "raises":
        with pytest.raises(RuntimeError, match="a bug in the pipeline"):
            runner.process([Item(event(b, "run", tb), "bad")])
    else:
        [alone] = runner.process([Item(event(b, "run", tb), "bad")])
        assert alone.label == "retry:store_unavailable"
    runner.release()
    after = runner.process([Item(event(b, "finish", tb), "m4")])
    assert _labels(first)[0] == "applied" and _labels(first)[1:] == [None, None]
    assert _labels(held) == [None, "applied"]
    assert _labels(after) == ["rejected:invalid_transition"]  # b never ran
    assert (_history(app, a), _history(app, b), _history(app, c)) == \
        (["create", "run"], ["create"], ["create", "run"])


def test_a_message_whose_job_is_unknown_holds_back_everything_after_it(app, monkeypatch):
    """Parsing it raised (a bug): its job is unknown, so no later message may overtake it."""
    from reactor.contract import messages

    (a, ta), (b, tb) = make_jobs(app, 2, "unknown")
    parse = messages.parse

    def buggy(body, *args):
        if b"poison" in body:
            raise RuntimeError("a bug while parsing")
        return parse(body, *args)

    monkeypatch.setattr(messages, "parse", buggy)
    runner = InProcessRunner(Pipeline(app.jobs, separate_commits=True))
    first = runner.process([Item(event(a, "run", ta), "m1"),
                            Item(event(b, "run", tb, {"x": "poison"}), "bad"),
                            Item(event(b, "update", tb), "m3"), Item(b"not json", "m4")])
    held = runner.process([Item(event(a, "update", ta), "m5")])
    runner.release()
    assert _labels(first) == ["applied", None, None, None]
    assert _labels(held) == [None]
    assert _labels(runner.process([Item(event(a, "update", ta), "m5")])) == ["applied"]


def test_an_orphaned_child_applies_nothing_more(app):
    (a, ta), = make_jobs(app, 1, "orphan")
    child = _child(app.pipeline(separate_commits=True))
    child.parent = -1  # as if the consumer that started it were gone
    with pytest.raises(SystemExit):
        child.handle("process", _wire((event(a, "run", ta), "o1")))
    assert _history(app, a) == ["create"]


def test_lists_go_two_deep_and_the_child_exits_when_closed(app):
    (a, ta), (b, tb) = make_jobs(app, 2, "proc")
    remote = ChildProcessRunner(ChildPipeline(app.settings, separate_commits=True))
    try:
        remote.submit([Item(event(a, "run", ta), "p1"), Item(event(b, "run", tb), "p2")])
        remote.submit([Item(event(a, "update", ta), "p3")])
        assert remote.sent == 2 and remote.depth == 2
        first, second = remote.collect(), remote.collect()
        [again] = remote.process([Item(event(a, "update", ta), "p3")])
    finally:
        remote.close()
    assert _labels(first) == ["applied", "applied"] and _labels(second) == ["applied"]
    assert again.label == "duplicate"
    assert remote._proc.returncode == 0
    assert _history(app, a) == ["create", "run", "update"]


def test_a_list_of_one_that_raises_in_the_child_raises_in_the_consumer(app):
    (a, ta), = make_jobs(app, 1, "raised")
    remote = ChildProcessRunner(ChildPipeline(app.settings, separate_commits=True))
    try:
        # Valid JSON of the wrong shape in the store: reading the job is a bug, not an outcome.
        with sqlite3.connect(app.settings.store_uri[len("sqlite:///"):]) as conn:
            conn.execute("UPDATE jobs SET body = '\"not a job record\"' WHERE uuid = ?", (a,))
        with pytest.raises(PipelineProcessRaised, match="Traceback"):
            remote.process([Item(event(a, "run", ta), "r1")])
    finally:
        remote.close()


def test_a_child_that_cannot_start_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    bad = App.from_env({"REACTOR_STORE_URI": f"sqlite:///{blocker}/reactor.db",
                        "REACTOR_SECRET": SECRET})
    with pytest.raises(PipelineProcessGone, match="could not start: StoreError"):
        ChildProcessRunner(ChildPipeline(bad.settings, separate_commits=True))


def test_the_child_exits_when_the_consumer_is_killed(app, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from reactor.app import App, ChildPipeline
            from reactor.engine.pipeline_process import ChildProcessRunner
            app = App.from_env({"REACTOR_STORE_URI": sys.argv[1], "REACTOR_SECRET": sys.argv[2]})
            remote = ChildProcessRunner(ChildPipeline(app.settings, separate_commits=True))
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
