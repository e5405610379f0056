"""The pipeline in a child process of the consumer (configuration key ``pipeline_process``).

In one process the RabbitMQ client's IO thread and the worker share one interpreter lock: each
time a store call of the worker let go of it, the client's frame parsing could take it, and the
commit loop waited. Here the pipeline runs in a child process with an interpreter of its own,
and the consumer keeps the next list of deliveries on its way while the child works on the last
one, so the child does not wait for the settling either. ``ChildProcessRunner`` is the
consumer's side; it has the same methods as ``runner.InProcessRunner``.

The child is started with a picklable factory (the composition root's) that sets up its logging
and builds its pipeline, so nothing here builds either. Requests and replies are pickled tuples
over two pipes, in order, one reply per request (``release`` has none):

- ``("process", [(body, message_id, params), ...])`` → ``("ok", outcomes)``, what
  ``Pipeline.process`` gives with the child's ``Hold`` (kept across lists, as in process), or
  ``("error", traceback)`` when a list of one raised;
- ``("release", None)``: release the held jobs.

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
from typing import Any, Callable, Sequence

from ..domain.errors import PipelineProcessGone, PipelineProcessRaised
from ..domain.outcomes import Outcome
from ..domain.tokens import mask_text
from .hold import Hold
from .pipeline import Item, Pipeline

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0

# Called in the child: its pipeline, and what closes what the pipeline opened. Picklable.
PipelineFactory = Callable[[], "tuple[Pipeline, Callable[[], None]]"]


class ChildProcessRunner:
    """The consumer's handle on the child process that runs its pipeline."""

    depth = 2  # the child applies one list while the consumer settles the one before

    def __init__(self, factory: PipelineFactory):
        # Two pipes, not the child's stdin and stdout: a stray print in the child cannot
        # corrupt a reply, and the child keeps the consumer's stdout and stderr for its logs.
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        # The child searches the consumer's import path, in its order: it imports the same
        # copy of the reactor (and of everything else) wherever that came from.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in sys.path))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(request_r), str(reply_w)],
                pass_fds=(request_r, reply_w), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(request_r)
            os.close(reply_w)
        self._requests = Connection(request_w, readable=False)
        self._replies = Connection(reply_r, writable=False)
        self.sent = 0  # requests whose reply has not been read
        try:
            self._send(("start", factory))
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
        """The child's process id."""
        return self._proc.pid

    def gone(self) -> PipelineProcessGone | None:
        """The error to report if the child has exited (without waiting), else None."""
        if self._proc.poll() is None:
            return None
        return self._gone(EOFError())

    def submit(self, items: Sequence[Item]) -> None:
        """Send a list of messages to the child, to be applied in order."""
        self._send(("process", [(i.body, i.message_id, i.params) for i in items]))

    def collect(self) -> list[Outcome | None]:
        """The outcomes of the oldest list submitted (``PipelineProcessRaised`` if it was a list
        of one and processing it raised)."""
        status, value = self._recv()
        if status == "error":
            raise PipelineProcessRaised(value)
        return value

    def process(self, items: Sequence[Item]) -> list[Outcome | None]:
        """One list, applied now (no list may be on its way): its outcomes."""
        if self.sent:
            raise RuntimeError("process() while lists are outstanding: collect them first")
        self.submit(items)
        return self.collect()

    def release(self) -> None:
        """Release the jobs the child holds back."""
        self._send(("release", None), reply=False)

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

class Child:
    """The child's side: its pipeline, its hold, and the requests' handling."""

    def __init__(self, factory: PipelineFactory):
        self.pipeline, self.close = factory()
        self.hold = Hold()
        self.parent = os.getppid()

    def handle(self, kind: str, payload: Any) -> Any:
        """The reply to one request (``None`` for ``release``, which has none)."""
        if kind == "release":
            self.hold.release()
            return None
        if os.getppid() != self.parent:
            log.error("the consumer (pid %d) is gone: the pipeline process exits", self.parent)
            raise SystemExit(3)
        items = [Item(body, message_id, params) for body, message_id, params in payload]
        try:
            return "ok", self.pipeline.process(items, self.hold)
        except Exception as exc:  # noqa: BLE001 - a list of one: the consumer counts the attempt
            return "error", "".join(traceback.format_exception(exc)).rstrip()


def main(argv: list[str]) -> int:
    """Serve requests from the consumer on the two pipe descriptors in ``argv``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)
    try:
        _, factory = requests.recv()
        child = Child(factory)
    except EOFError:
        return 0
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
            if kind != "release":
                replies.send(reply)
    except (BrokenPipeError, EOFError):
        return 0
    finally:
        child.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
