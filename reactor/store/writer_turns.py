"""Turns for the writers of one SQLite file across processes: a lock file beside the database.

SQLite's own write lock is enough for correctness, but a writer that finds it taken sleeps in
SQLite's busy handler for 1, 2, 5, 10 … ms before it looks again, while a group commit holds
the lock for a few milliseconds. Two consumers on one file then spend most of their time
asleep. Taking an ``flock`` on ``<database>.writers`` first, polled every fraction of a
millisecond, hands the write lock over almost as soon as it is free; ``BEGIN IMMEDIATE`` then
rarely waits. Only writers of this reactor take turns: any other writer is still kept out by
SQLite's lock, and a process that dies lets go of its turn with its file descriptor.
"""
from __future__ import annotations

import fcntl
import os
import time

FIRST_POLL_S = 0.0001  # the first wait for a turn; doubled up to MAX_POLL_S
MAX_POLL_S = 0.001


class WriterTurns:
    """Take and give back the writers' turn on one database file (not thread-safe: the
    store calls it under its own mutex)."""

    def __init__(self, database: str | os.PathLike, wait_s: float):
        self.path = f"{os.fspath(database)}.writers"
        self.wait_s = wait_s
        self._fd: int | None = None

    def take(self) -> bool:
        """Wait up to ``wait_s`` for the turn; True if taken, False if not (the caller then
        relies on SQLite's own lock and timeout alone)."""
        fd = self._open()
        if fd is None:
            return False
        deadline = time.monotonic() + self.wait_s
        pause = FIRST_POLL_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError:  # e.g. a file system without flock: SQLite's lock still holds
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, MAX_POLL_S)

    def give_back(self) -> None:
        """End this process's turn."""
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass  # closing the descriptor (close) lets go of it in any case

    def close(self) -> None:
        """Close the lock file (ends a turn still held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                return None  # e.g. a read-only directory: no turns, SQLite's lock only
        return self._fd
