"""The pipeline in a child process of the consumer (configuration key ``pipeline_process``).

In one process the RabbitMQ client's IO thread and the worker share one interpreter lock: each
time a store call of the worker let go of it, the client's frame parsing could take it, and the
commit loop waited (one commit per message on SQLite ran at ~0.6 of a bare commit loop). Here
the pipeline (decode … commit, and group commit) runs in a child process with an interpreter of
its own, and the consumer keeps the next list of deliveries on its way while the child works on
the last one, so the child does not wait for the settling either.

Requests and replies are pickled tuples over two pipes, in order, one reply per request
(``resume`` has none):

- ``("events", [(body, message_id), ...])``: the messages with one commit each → their
  outcomes. They go through ``GroupCommit`` with ``separate_commits``: planned together, each
  job's events in delivery order, then committed change by change. From the first message the
  list leaves undecided (the store failed, processing raised) or that must be retried on, the
  outcomes come back ``None`` and the child is *halted*: each later list comes back all
  ``None``, untouched, until ``("resume", None)``. So nothing after an undecided message is
  applied before the consumer has decided it.
- ``("batch", [...])``: the same through ``GroupCommit`` with one store write for the list;
  halts the same way.
- ``("one", (body, message_id))`` → ``("ok", outcome)`` or ``("error", text)``: one message,
  halted or not (the consumer's retries of an undecided message).

The child ignores SIGINT and SIGTERM (the consumer stops it by closing its pipe once what it sent
is settled), exits at end of file, and checks before every list that its parent is still there:
an orphan must not go on applying what the broker redelivers to the next consumer (a list it
has started, a few milliseconds of work, is like a commit in flight at a crash: its messages come
back as duplicates).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..domain.errors import PipelineProcessGone, PipelineProcessRaised
from ..domain.outcomes import RETRY, Outcome
from ..domain.tokens import mask_text

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


class PipelineProcess:
    """The consumer's handle on the child process that runs its pipeline."""

    def __init__(self, settings: Any, group_commit: bool):
        # Two pipes, not the child's stdin and stdout: a stray print in the child cannot
        # corrupt a reply, and the child keeps the consumer's stdout and stderr for its logs.
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        # The child searches the consumer's import path, in its order: it imports the same
        # copy of the reactor (and of everything else) wherever that came from.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in sys.path))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "reactor.engine.pipeline_process", str(request_r), str(reply_w)],
                pass_fds=(request_r, reply_w), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(request_r)
            os.close(reply_w)
        self._requests = Connection(request_w, readable=False)
        self._replies = Connection(reply_r, writable=False)
        self.sent = 0         # requests whose reply has not been read
        self.halted = False   # the child holds back lists until ``resume``
        try:
            self._send(("start", (settings, group_commit)))
            if not self._replies.poll(START_TIMEOUT_S):
                raise PipelineProcessGone(f"the pipeline process did not start within "
                                          f"{START_TIMEOUT_S:.0f} s")
            status, detail = self._recv()
            if status != "ready":
                raise PipelineProcessGone(f"the pipeline process could not start: {detail}")
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def gone(self) -> PipelineProcessGone | None:
        """The error to report if the child has exited (without waiting), else None."""
        if self._proc.poll() is None:
            return None
        return self._gone(EOFError())

    def submit(self, messages: list[tuple[bytes, str | None]], batch: bool = False) -> None:
        """Send a list of messages to apply in order (``batch``: with group commit)."""
        self._send(("batch" if batch else "events", messages))

    def collect(self) -> list[Outcome | None]:
        """The outcomes of the oldest list submitted (``None`` = undecided), in its order."""
        outcomes = self._recv()
        if any(o is None for o in outcomes):
            self.halted = True
        return outcomes

    def resume(self) -> None:
        """Let the child apply lists again (after the undecided messages were decided)."""
        self._send(("resume", None), reply=False)
        self.halted = False

    def process(self, body: bytes, message_id: str | None = None) -> Outcome:
        """One message, applied now (no list may be outstanding): its outcome."""
        if self.sent:
            raise RuntimeError("process() while lists are outstanding: collect them first")
        self._send(("one", (body, message_id)))
        status, value = self._recv()
        if status == "error":
            raise PipelineProcessRaised(value)
        return value

    def close(self) -> None:
        """Close the pipe (the child exits at end of file); kill it if it does not."""
        for conn in (self._requests, self._replies):
            conn.close()
        try:
            self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the pipeline process did not exit within %.0f s: killing it",
                        STOP_TIMEOUT_S)
            self._proc.kill()
            self._proc.wait()

    def _send(self, request: tuple, reply: bool = True) -> None:
        try:
            self._requests.send(request)
        except OSError as exc:
            raise self._gone(exc) from None
        self.sent += reply

    def _recv(self) -> Any:
        try:
            value = self._replies.recv()
        except (EOFError, OSError) as exc:
            raise self._gone(exc) from None
        self.sent -= 1
        return value

    def _gone(self, exc: BaseException) -> PipelineProcessGone:
        try:
            code = self._proc.wait(1.0)  # its end closed: it is exiting, if not already gone
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            how = f"does not answer ({exc!r})"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        return PipelineProcessGone(f"the pipeline process (pid {self._proc.pid}) {how}")


# --- the child ---------------------------------------------------------------------------------

class _Child:
    """The child's side: the pipeline and the requests' handling."""

    def __init__(self, settings: Any, group_commit: bool):
        from ..app import App
        from .pipeline import Pipeline

        from .batching import GroupCommit

        self.app = App(settings)
        self.pipeline = Pipeline.from_app(self.app)
        # A list of events is planned as a batch (parsed, authorised, each from the state its
        # job's previous event leads to) and committed one change per commit: each message
        # still has its own durable commit, and the planning runs with its code and data warm
        # instead of between two commits (measured ~10% faster than message by message).
        self.separate = GroupCommit(self.pipeline, separate_commits=True)
        self.group = GroupCommit(self.pipeline) if group_commit else None
        self.parent = os.getppid()
        self.halted = False

    def handle(self, kind: str, payload: Any) -> Any:
        """The reply to one request (``None`` for ``resume``, which has none)."""
        if kind == "resume":
            self.halted = False
            return None
        if kind == "one":
            self._check_parent()
            try:
                return "ok", self.pipeline.process(*payload)
            except Exception as exc:  # noqa: BLE001 - the consumer counts the attempt
                return "error", "".join(traceback.format_exception(exc)).rstrip()
        if self.halted:
            return [None] * len(payload)
        self._check_parent()
        outcomes = self._through(self.group if kind == "batch" else self.separate, payload)
        self.halted = any(o is None for o in outcomes)
        return outcomes

    def _through(self, group: Any, messages: list) -> list[Outcome | None]:
        """The outcomes of ``messages`` through ``group``, ``None`` from the first one it left
        undecided (or that must be retried) on: nothing may go ahead of that one."""
        from .batching import Item

        try:
            outcomes = group.process([Item(body, message_id) for body, message_id in messages])
        except Exception as exc:  # noqa: BLE001 - the consumer goes one by one, as in-process
            log.error("processing %d deliveries raised %s; processing them one by one",
                      len(messages), mask_text("".join(traceback.format_exception(exc))))
            return [None] * len(messages)
        first = next((i for i, o in enumerate(outcomes) if o is None or o.kind == RETRY),
                     len(outcomes))
        return outcomes[:first] + [None] * (len(outcomes) - first)

    def _check_parent(self) -> None:
        if os.getppid() != self.parent:
            log.error("the consumer (pid %d) is gone: the pipeline process exits", self.parent)
            raise SystemExit(3)


def main(argv: list[str]) -> int:
    """Serve requests from the consumer on the two pipe descriptors in ``argv``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)
    try:
        _, (settings, group_commit) = requests.recv()
    except EOFError:
        return 0
    try:
        from ..obs.logs import setup_logging

        setup_logging(settings.log_level, settings.log_format)
        child = _Child(settings, group_commit)
    except Exception as exc:  # noqa: BLE001 - reported to the consumer, which fails to start
        replies.send(("error", mask_text(f"{type(exc).__name__}: {exc}")))
        return 1
    replies.send(("ready", None))
    try:
        while True:
            try:
                kind, payload = requests.recv()
            except EOFError:
                return 0
            reply = child.handle(kind, payload)
            if kind != "resume":
                replies.send(reply)
    except (BrokenPipeError, EOFError):
        return 0
    finally:
        child.app.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
