"""Where the pipeline runs for the consumer: one protocol, two implementations.

``InProcessRunner`` runs it in the consumer's own process; ``pipeline_process.ChildProcessRunner``
runs it in a child process with an interpreter of its own. Both take lists of messages and give
back what ``Pipeline.process`` gives for each list, with one ``Hold`` kept across lists until
``release``, so the consumer's code is the same for both.
"""
from __future__ import annotations

from collections import deque
from typing import Protocol, Sequence

from ..domain.errors import PipelineProcessGone
from ..domain.outcomes import Outcome
from .hold import Hold
from .pipeline import Item, Pipeline


class Runner(Protocol):
    """Runs the pipeline over lists of messages, in the order they were submitted."""

    # How many lists may be on their way at once: 1 = each is processed when collected; more
    # = the runner works on one list while the caller settles the one before.
    depth: int

    def submit(self, items: Sequence[Item]) -> None:
        """Send a list of messages on its way (up to ``depth`` lists are collected later)."""

    def collect(self) -> list[Outcome | None]:
        """The outcomes of the oldest list submitted, as ``Pipeline.process`` gives them (a list
        of one raises what processing it raised)."""

    def process(self, items: Sequence[Item]) -> list[Outcome | None]:
        """``submit`` then ``collect``, with no other list on its way."""

    def release(self) -> None:
        """Release the jobs held back by undecided messages (every list on its way has been
        collected, and the undecided messages are about to be decided)."""

    def gone(self) -> PipelineProcessGone | None:
        """Why the runner can no longer run anything, if it cannot (without waiting)."""

    def close(self) -> None:
        """Stop (after the last list was collected)."""


class InProcessRunner:
    """The pipeline in the consumer's own process: a list is processed when it is collected."""

    depth = 1

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.hold = Hold()
        self._submitted: deque[Sequence[Item]] = deque()

    def submit(self, items: Sequence[Item]) -> None:
        """Queue a list to be processed by ``collect``."""
        self._submitted.append(items)

    def collect(self) -> list[Outcome | None]:
        """Process the oldest submitted list now: its outcomes."""
        return self.pipeline.process(self._submitted.popleft(), self.hold)

    def process(self, items: Sequence[Item]) -> list[Outcome | None]:
        """Process one list now (none may be waiting to be collected)."""
        if self._submitted:
            raise RuntimeError("process() while lists are waiting: collect them first")
        return self.pipeline.process(items, self.hold)

    def release(self) -> None:
        """Release the held jobs."""
        self.hold.release()

    def gone(self) -> PipelineProcessGone | None:
        """Never gone: it is this process."""
        return None

    def close(self) -> None:
        """Nothing runs apart from the caller: the pipeline's store is the caller's to close."""
        self._submitted.clear()
