"""Which jobs' messages must wait: the pipeline's one rule for a message it left undecided.

A message the pipeline could not decide (the store failed, or processing it raised) holds back
every later message of its job, so that a job's events never apply out of delivery order; a
message whose job is not even known (parsing it raised) holds back every later message. The
held messages come back undecided with it, for the caller to decide one by one, in order.

A ``Hold`` outlives one list where lists overlap (the pipeline process works on the next list
while the consumer settles the last): the caller releases it once it has taken back every list
on its way, before it decides the undecided messages.
"""
from __future__ import annotations


class Hold:
    """The jobs whose later messages wait for an undecided one (or all of them)."""

    def __init__(self) -> None:
        self.jobs: set[str] = set()
        self.everything = False

    def holds(self, uuid: str) -> bool:
        """True when a message of job ``uuid`` must wait."""
        return self.everything or uuid in self.jobs

    def add(self, uuid: str | None) -> None:
        """Hold job ``uuid`` back (None: a job nobody could tell, so hold everything)."""
        if uuid is None:
            self.everything = True
        else:
            self.jobs.add(uuid)

    def release(self) -> None:
        """Let every job go again (the undecided messages are about to be decided)."""
        self.jobs.clear()
        self.everything = False

    def __bool__(self) -> bool:
        return self.everything or bool(self.jobs)
