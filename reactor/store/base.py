"""The store interface every backend implements, with identical behaviour.

Records cross this boundary as plain JSON-compatible dicts (timestamps are ISO-8601 strings,
see ``records.now_iso``); backends translate to and from their own representation.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Callable, Iterable

from .checks import check_flag, check_waves

COLLECTIONS_WITH_LINKS = ("jobs", "pipelines", "files", "references", "experiments", "samples",
                          "measurements")


class JobStore(ABC):
    """Jobs, pipelines and linked documents, with one atomic compare-and-set per state change."""

    uri: str = ""

    # --- jobs -----------------------------------------------------------------------------
    @abstractmethod
    def create_job(self, record: dict) -> tuple[dict, bool]:
        """Insert ``record`` unless a job with its uuid exists; return (stored record, created)."""

    @abstractmethod
    def get_job(self, uuid: str, include_hidden: bool = False,
                with_history: bool = True) -> dict | None:
        """The job with ``uuid`` (soft-deleted ones only when asked), or None.

        ``with_history=False`` returns every field but ``history`` (no such key at all), and the
        backend does not read the history: what the hot path needs, at a cost independent of
        the number of events the job has seen.
        """

    @abstractmethod
    def list_jobs(self, state: str | None = None, pipeline_uuid: str | None = None,
                  limit: int = 100, include_hidden: bool = False) -> list[dict]:
        """Jobs, newest first, optionally filtered by state and pipeline."""

    @abstractmethod
    def commit_event(self, uuid: str, from_state: str, to_state: str, entry: dict,
                     with_history: bool = True) -> dict | None:
        """Atomically move a visible job from ``from_state`` to ``to_state`` and append ``entry``.

        One compare-and-set: matches only if the job is visible, is in ``from_state`` and has no
        history entry whose ``key`` equals ``entry['key']`` (when the entry has a key). Sets
        state, last_event (= entry name), updated (= entry date), revision + 1, and pushes the
        entry, in one write. Returns the record after the write, or None when nothing matched.
        With ``with_history=False`` the record returned has no ``history`` key and the backend
        does not read the history to build it (the duplicate-key check still covers it all).
        """

    def commit_events(self, changes: Iterable[tuple[str, str, str, dict]],
                      with_history: bool = True) -> list[dict | None]:
        """Apply several ``(uuid, from_state, to_state, entry)`` changes; one result each
        (records without ``history`` when ``with_history`` is False, as ``commit_event``)."""
        return [self.commit_event(*change, with_history=with_history) for change in changes]

    def commit_waves(self, waves: Iterable[Iterable[tuple[str, str, str, dict]]],
                     with_history: bool = True) -> list[list[dict | None]]:
        """``commit_events`` of each wave in order, as one write where the backend can (SQLite:
        one transaction). A wave holds at most one change per job; a change whose job missed in
        an earlier wave is not attempted (None), so no job's changes land out of order.
        Malformed input refuses every wave before anything is written."""
        checked = check_waves(waves)
        check_flag(with_history, "with_history")
        return apply_in_waves(checked, lambda todo: self.commit_events(
            todo, with_history=with_history))

    @abstractmethod
    def delete_job(self, uuid: str, force: bool = True, only_if_revision: int | None = None) -> bool:
        """Hard-delete (``force``) the job and every reference to its uuid in linkage fields of
        other documents, or soft-delete it (hide it). ``only_if_revision`` makes the delete
        conditional on the stored revision. Returns whether a job was deleted."""

    @abstractmethod
    def archive_owners(self, path: str | list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
        """``(job uuid, archive_path)`` of every job, hidden ones included, whose archive path
        is ``path``, lies below it (starts with ``path + "/"``) or is one of its ancestors, by
        uuid. Plain string comparison on the stored text (``archive_query`` says which strings
        match), so it is meaningful for paths stored normalised (absolute, ``normpath``).
        A list of paths asks for the owners of any of them, in one query."""

    # --- pipelines --------------------------------------------------------------------------
    @abstractmethod
    def add_pipeline(self, doc: dict) -> tuple[dict, bool]:
        """Register a pipeline ``{uuid, name, ...}`` unless its uuid exists; (stored, created)."""

    @abstractmethod
    def get_pipeline(self, uuid: str) -> dict | None:
        """The pipeline with ``uuid``, or None."""

    @abstractmethod
    def list_pipelines(self) -> list[dict]:
        """Every registered pipeline, by name."""

    # --- other linked documents (files, references, …) -------------------------------------
    @abstractmethod
    def put_document(self, collection: str, doc: dict) -> None:
        """Insert or replace a document (keyed by its ``uuid``) in another collection."""

    @abstractmethod
    def get_document(self, collection: str, uuid: str) -> dict | None:
        """A document of another collection, or None."""

    # --- lifecycle --------------------------------------------------------------------------
    @abstractmethod
    def ping(self) -> None:
        """Return if the store answers; raise StoreUnavailable otherwise."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def archive_query(path: object) -> tuple[list[str], list[str]]:
    """What ``archive_owners(path)`` matches: (stored values matched exactly, prefixes of those
    below). Each path is normalised (``os.path.normpath``) first; the exact values are the
    path and each of its ancestors, those also with a trailing "/" (a form records written
    before paths were normalised may hold); the prefix is the path and a "/". ``path`` is one
    path or a non-empty list of them; ValueError unless each is a non-empty string without
    NUL."""
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if not paths:
        raise ValueError("archive path list must not be empty")
    exact: list[str] = []
    prefixes: list[str] = []
    for one in paths:
        if not isinstance(one, str) or not one.strip() or "\x00" in one:
            raise ValueError("archive path must be a non-empty string without NUL")
        one = os.path.normpath(one)
        current = one
        while True:
            for form in (current, current if current.endswith("/") else current + "/"):
                if form not in exact:
                    exact.append(form)
            parent = os.path.dirname(current)
            if not parent or parent == current:
                break
            current = parent
        prefix = one if one.endswith("/") else one + "/"
        if prefix not in prefixes:
            prefixes.append(prefix)
    return exact, prefixes


def apply_in_waves(waves: list[list[tuple]], commit: Callable[[list[tuple]], list]
                   ) -> list[list[dict | None]]:
    """Run ``commit`` (one wave's changes → one result each, None for a miss) on each wave in
    order, leaving out the changes of jobs that missed in an earlier wave (their result: None)."""
    results: list[list[dict | None]] = []
    missed: set[str] = set()
    for wave in waves:
        todo = [change for change in wave if change[0] not in missed]
        done = iter(commit(todo) if todo else [])
        out = [None if change[0] in missed else next(done) for change in wave]
        missed.update(change[0] for change, result in zip(wave, out) if result is None)
        results.append(out)
    return results
