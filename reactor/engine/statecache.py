"""What state this process last saw each job in: a guess that saves a read per event.

The pipeline and group commit start an event from the remembered state instead of reading the
job; the compare-and-set checks every guess, so a stale one costs a re-read, never a wrong
write.
"""
from __future__ import annotations

from collections import OrderedDict

DEFAULT_CACHE_SIZE = 10_000


class StateCache:
    """The state this process last saw each job in, for at most ``size`` jobs (LRU)."""

    def __init__(self, size: int = DEFAULT_CACHE_SIZE):
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"cache size must be a non-negative integer, got {size!r}")
        self.size = size
        self._states: OrderedDict[str, str] = OrderedDict()

    def get(self, uuid: str) -> str | None:
        """The remembered state of job ``uuid``, or None."""
        state = self._states.get(uuid)
        if state is not None:
            self._states.move_to_end(uuid)
        return state

    def put(self, uuid: str, state: str) -> None:
        """Remember ``state`` for job ``uuid`` (forgetting the least recently used job)."""
        if not self.size:
            return
        self._states[uuid] = state
        self._states.move_to_end(uuid)
        if len(self._states) > self.size:
            self._states.popitem(last=False)

    def drop(self, uuid: str) -> None:
        """Forget job ``uuid``."""
        self._states.pop(uuid, None)

    def __len__(self) -> int:
        return len(self._states)
