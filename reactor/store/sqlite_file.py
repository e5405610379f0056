"""One connection to one SQLite store file: opening it, its transactions, and lock timeouts.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, so the read-check-write of a
compare-and-set is atomic across processes (the reactor's writers first take turns through a
lock file, ``writer_turns``, so none sleeps in SQLite's busy handler); WAL mode lets readers
proceed while one writer holds the lock, and a read of several rows runs in one read
transaction (one snapshot). Opening a file of an older layout converts it (``sqlite_migrate``).
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from ..domain.errors import StoreError, StoreUnavailable
from .sqlite_migrate import convert_from_v0
from .sqlite_schema import SCHEMA, SCHEMA_VERSION
from .writer_turns import WriterTurns

T = TypeVar("T")


class SqliteFile:
    """The connection of one process to one store file, shared by its threads under a lock."""

    def __init__(self, path: str, busy_timeout_s: float, lock_attempts: int):
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._lock_attempts = lock_attempts
        # One connection per store, shared by the threads of this process under a lock; other
        # processes open their own connection and SQLite's file locks arbitrate between them.
        self._mutex = threading.RLock()
        file = None if path == ":memory:" else Path(path).expanduser()
        # Only files have writers in other processes to take turns with.
        self._turns = None if file is None else WriterTurns(file, busy_timeout_s)
        if file is not None:
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory of SQLite store {path}: {exc}") \
                    from None
        try:
            self._conn = sqlite3.connect(path if file is None else str(file),
                                         timeout=busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from None
        try:
            self.run(self._setup)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        self._check_version(conn)  # before anything here changes the file
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before we return, because the caller acks right after.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Again under the write lock: another process may have converted the file meanwhile.
            version = self._check_version(conn)
            if version == 0:
                convert_from_v0(conn, self.path)
            for statement in SCHEMA:
                conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _check_version(self, conn: sqlite3.Connection) -> int:
        """The file's schema version if this code reads it (0 is converted), else StoreError."""
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(f"SQLite store {self.path} has schema version {version}, newer than "
                             f"version {SCHEMA_VERSION}, the newest this reactor reads: it was "
                             "written by a newer reactor; use that one (nothing was changed)")
        if version not in (0, SCHEMA_VERSION):
            raise StoreError(f"SQLite store {self.path} has schema version {version}, which no "
                             f"reactor wrote; this one reads versions 0 and {SCHEMA_VERSION}")
        return version

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the connection, retrying lock timeouts; translate sqlite errors."""
        with self._mutex:
            for attempt in range(1, self._lock_attempts + 1):
                try:
                    return work(self._conn)
                except sqlite3.OperationalError as exc:
                    self._rollback()
                    if not _is_lock_error(exc):
                        raise StoreError(f"SQLite store {self.path}: {exc}") from None
                    if attempt == self._lock_attempts:
                        raise StoreUnavailable(
                            f"SQLite store {self.path} stayed locked by another writer through "
                            f"{attempt} waits of {self._busy_timeout_s:g} s") from None
                    time.sleep(0.05 * attempt)
                except sqlite3.ProgrammingError as exc:
                    raise StoreError(f"SQLite store {self.path} cannot be used: {exc}") from None
                except sqlite3.Error as exc:
                    self._rollback()
                    raise StoreError(f"SQLite store {self.path}: {exc}") from None
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection is already out of the transaction

    def _transaction_of(self, begin: str, work: Callable[[sqlite3.Connection], T]
                        ) -> Callable[[sqlite3.Connection], T]:
        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute(begin)
            try:
                result = work(conn)
            except BaseException:
                self._rollback()
                raise
            conn.execute("COMMIT")
            return result

        return transaction

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside one ``BEGIN IMMEDIATE`` transaction (the cross-process lock),
        after waiting for this process's turn among the file's writers (``WriterTurns``)."""
        transaction = self._transaction_of("BEGIN IMMEDIATE", work)
        if self._turns is None:
            return self.run(transaction)

        def in_turn(conn: sqlite3.Connection) -> T:
            # Under the mutex (inside run): the turn belongs to the process, not the thread.
            taken = self._turns.take()
            try:
                return transaction(conn)
            finally:
                if taken:
                    self._turns.give_back()

        return self.run(in_turn)

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work``'s several reads in one read transaction: one snapshot of the file."""
        return self.run(self._transaction_of("BEGIN", work))

    def close(self) -> None:
        """Close the connection and the writers' lock file (idempotent)."""
        with self._mutex:
            self._conn.close()
            if self._turns is not None:
                self._turns.close()


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text
