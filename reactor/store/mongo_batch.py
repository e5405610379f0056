"""MongoDB group commit: the changes of a batch in one bulk write, the records after them known
without a read-back (see ``reactor.store.mongo`` for the store as a whole).

The store remembers the job documents it last read or wrote (without history; ``KnownJobs``,
bounded), and each update of the batch is the compare-and-set narrowed to the document as
remembered (``guarded_filter``: its revision, creation time and links), so when the bulk result
counts every update as modified, the records after them are known. A job's later change in a
batch is conditional on its earlier one's entry being there; only when some update did not land
do reads tell which did.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Callable

from bson import encode as bson_encode
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from ..domain.errors import StoreUnavailable
from ..domain.records import LINKAGE_FIELDS
from .bson_codec import decode, encode_entry

# Server error codes that mean "not now" rather than "never": failover, shutdown, time limits.
TRANSIENT_CODES = frozenset({6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
# Reads that leave out the history (``with_history=False``): the server sends none of it.
NO_HISTORY = {"history": 0}
# Job documents remembered (without history) so that a batch commit needs no read-back.
KNOWN_JOBS, KNOWN_BYTES = 10_000, 32 << 20
# What a batch commit compares besides state and key (see ``guarded_filter``).
GUARDED_FIELDS = ("revision", "created", *LINKAGE_FIELDS)


def cas_filter(uuid: str, from_state: str, entry: dict) -> dict:
    """The compare-and-set filter: the visible job ``uuid``, in ``from_state``, without a
    history entry carrying ``entry``'s duplicate key."""
    query: dict = {"uuid": uuid, "_visible": True, "state": from_state}
    if entry.get("key") is not None:
        # On an array of subdocuments $ne means "no element has this key" (an entry without
        # a key, or a job without history, matches). Only keys are escaped, never values, so
        # the stored key equals entry["key"].
        query["history.key"] = {"$ne": entry["key"]}
    return query


def update(to_state: str, entry: dict) -> dict:
    """The update of a state change: state, last_event, updated, revision + 1, entry pushed."""
    return push(to_state, encode_entry(entry))


def push(to_state: str, stored: dict) -> dict:
    """``_update`` of an entry already encoded (``stored``)."""
    return {"$set": {"state": to_state, "last_event": stored["name"], "updated": stored["date"]},
            "$inc": {"revision": 1}, "$push": {"history": stored}}


def guarded_filter(known: dict, from_state: str, entry: dict, previous: dict | None) -> dict:
    """``cas_filter`` narrowed to the document as ``known`` shows it, and for a job's later
    change in a batch to its ``previous`` change having landed.

    Every write to a job document changes what this compares: a commit its revision, a hide
    ``_visible``, an unlink its linkage fields, a delete and create its creation time. So when
    the update matches, the document after it is ``doc_after(known, ...)``, with no read-back."""
    query = cas_filter(known["uuid"], from_state, entry)
    for field in GUARDED_FIELDS:
        query[field] = known[field] if field in known else {"$exists": False}
    if previous is not None:
        # Entry uuids are random: the previous change's entry is there only if it just landed.
        query["history.uuid"] = previous["uuid"]
    return query


def same_guard(doc: dict, other: dict) -> bool:
    """True when ``guarded_filter`` of ``doc`` and of ``other`` compare the same values."""
    return all(doc.get(field) == other.get(field) for field in GUARDED_FIELDS)


def doc_after(known: dict, to_state: str, stored: dict) -> dict:
    """The document ``known`` after ``push(to_state, stored)`` (without history)."""
    return {**known, "state": to_state, "last_event": stored["name"], "updated": stored["date"],
            "revision": known["revision"] + 1}


class KnownJobs:
    """Visible job documents (without history) as this store last read or wrote them, at most
    ``size`` of them and ``max_bytes`` of BSON, the least recently used forgotten first. Only
    ever a guess, which ``guarded_filter`` checks on the server."""

    def __init__(self, size: int = KNOWN_JOBS, max_bytes: int = KNOWN_BYTES):
        self.size, self.max_bytes = size, max_bytes
        self._docs: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # a store may serve several threads (reactor serve)

    def get(self, uuid: str) -> dict | None:
        """The remembered document of job ``uuid``, or None."""
        with self._lock:
            kept = self._docs.get(uuid)
            if kept is None:
                return None
            self._docs.move_to_end(uuid)
            return kept[0]

    def put(self, doc: dict, same_size: bool = False) -> None:
        """Remember ``doc`` (a stored job document) if it is visible, else forget its job;
        ``same_size``: it differs from the one remembered only by what a commit sets."""
        uuid = doc.get("uuid")
        if not isinstance(uuid, str):
            return
        if doc.get("_visible") is not True or not isinstance(doc.get("revision"), int):
            self.drop(uuid)
            return
        doc = {k: v for k, v in doc.items() if k != "history"}
        with self._lock:
            old = self._docs.get(uuid)
        # Measured once per document: a commit changes only a few small fields.
        size = old[1] if same_size and old is not None else len(bson_encode(doc))
        with self._lock:
            self._forget(uuid)
            if size > self.max_bytes:
                return
            self._docs[uuid] = (doc, size)
            self._bytes += size
            while len(self._docs) > self.size or self._bytes > self.max_bytes:
                self._bytes -= self._docs.popitem(last=False)[1][1]

    def drop(self, uuid: str) -> None:
        """Forget job ``uuid``."""
        with self._lock:
            self._forget(uuid)

    def _forget(self, uuid: str) -> None:
        kept = self._docs.pop(uuid, None)
        if kept is not None:
            self._bytes -= kept[1]

    def clear(self) -> None:
        """Forget every job."""
        with self._lock:
            self._docs.clear()
            self._bytes = 0


def holds(record: dict, entry: dict) -> bool:
    """True when ``record``'s history contains ``entry`` (as stored and read back)."""
    wanted = json.loads(json.dumps(entry))  # tuples → lists, as a read gives them back
    # Newest first: a just-committed entry is at (or near) the end.
    return any(h == wanted for h in reversed(record.get("history", ())))


def has_entry_uuids(batch: list[tuple[str, str, str, dict]]) -> bool:
    """True when every change's entry carries a uuid (what tells which changes landed)."""
    return all(isinstance(entry.get("uuid"), str) for *_, entry in batch)


class BatchCommits:
    """The bulk-write half of ``MongoJobStore`` (it provides ``_jobs``, ``_known``, ``uri`` and
    ``_clean``): kept apart so that the store's module reads as its interface."""

    _jobs: Any                                # the jobs collection
    _known: "KnownJobs"
    uri: str                                  # password masked
    _clean: Callable[[BaseException], str]    # an error's text, passwords masked

    def _commit_remembered(self, waves: list[list[tuple[str, str, str, dict]]]
                           ) -> list[list[dict | None]]:
        """The waves' changes as one bulk write of ``guarded_filter`` updates, each job's
        changes chained in wave order, the records after them built from the documents this
        store remembers (``_recall``); a change that did not land is None, and so are its job's
        later ones. A job whose first change missed because another writer had changed it
        since this store last saw it (not a state or a key the change conflicts with) is tried
        once more from the document as it now is, as ``commit_event`` would have been."""
        results: list[list[dict | None]] = [[None] * len(wave) for wave in waves]
        chains: dict[str, list[tuple[int, int]]] = {}
        for w, wave in enumerate(waves):
            for i, (uuid, *_) in enumerate(wave):
                chains.setdefault(uuid, []).append((w, i))
        guessed: dict[str, dict] = {}
        for _ in range(2):
            known = self._recall({uuid: waves[w][i][1] for uuid, [(w, i), *_] in chains.items()})
            if guessed:  # the second round: only the jobs changed since the first one's guess
                chains = {uuid: chain for uuid, chain in chains.items()
                          if uuid in known and not same_guard(known[uuid], guessed[uuid])}
            guessed = self._commit_chains(waves, chains, known, results)
            chains = {uuid: chains[uuid] for uuid in guessed}
            if not chains:
                break
        return results

    def _commit_chains(self, waves: list[list[tuple[str, str, str, dict]]],
                       chains: dict[str, list[tuple[int, int]]], known: dict[str, dict],
                       results: list[list[dict | None]]) -> dict[str, dict]:
        """One bulk write of the ``chains`` (job → its changes' positions, in order) from the
        ``known`` documents, ``results`` filled for the changes that landed; the jobs whose
        first change missed, with the document that change was guarded by."""
        planned: list[tuple[int, int, str, str, dict]] = []  # wave, index, job, entry, after
        operations = []
        for uuid, positions in chains.items():
            doc, previous = known.get(uuid), None
            for w, i in positions:
                _, from_state, to_state, entry = waves[w][i]
                if doc is None or doc["state"] != from_state:
                    break  # it would miss: neither it nor the job's later changes are tried
                stored = encode_entry(entry)
                operations.append(UpdateOne(guarded_filter(doc, from_state, entry, previous),
                                            push(to_state, stored)))
                doc, previous = doc_after(doc, to_state, stored), entry
                planned.append((w, i, uuid, entry["uuid"], doc))
        try:
            modified, refused = self._bulk_write(operations)
            # Each update names one job by its unique uuid: as many modified as sent means
            # every one landed, on the document its filter describes.
            everything = modified == len(operations) and not refused
            landed = set(range(len(planned))) if everything else self._landed(planned)
        except BaseException:
            for uuid in chains:  # some may have landed: what is remembered may be stale
                self._known.drop(uuid)
            raise
        missed = {uuid: known[uuid] for _, _, uuid, _, _ in planned}
        for n, (w, i, uuid, _, after) in enumerate(planned):
            if n in landed:
                results[w][i] = decode(after)
                self._known.put(after, same_size=True)
                missed.pop(uuid, None)
        for uuid in missed:  # what is remembered may be what made it miss
            self._known.drop(uuid)
        return missed

    def _recall(self, first_states: dict[str, str]) -> dict[str, dict]:
        """The remembered document of each job, read (one find, without history) for the jobs
        not remembered in the state their first change starts from; none for a job that is
        not there or hidden."""
        known: dict[str, dict] = {}
        unknown = []
        for uuid, from_state in first_states.items():
            doc = self._known.get(uuid)
            if doc is not None and doc.get("state") == from_state:
                known[uuid] = doc
            else:
                unknown.append(uuid)
        if unknown:
            for uuid in unknown:
                self._known.drop(uuid)
            for doc in self._jobs.find({"uuid": {"$in": unknown}, "_visible": True}, NO_HISTORY):
                self._known.put(doc)
            for uuid in unknown:
                doc = self._known.get(uuid)
                if doc is not None:
                    known[uuid] = doc
        return known

    def _landed(self, planned: list[tuple[int, int, str, str, dict]]) -> set[int]:
        """The positions in ``planned`` of the changes that landed. A job's change can only
        have landed if its previous one did, so each find asks for one change per job: the
        first ones, then the next ones of the jobs whose change was there, and so on."""
        following: dict[int, int] = {}
        last: dict[str, int] = {}
        asking = []
        for n, (_, _, uuid, _, _) in enumerate(planned):
            if uuid in last:
                following[last[uuid]] = n
            else:
                asking.append(n)
            last[uuid] = n
        landed: set[int] = set()
        while asking:
            holding = {doc["uuid"] for doc in self._jobs.find(
                {"$or": [{"uuid": planned[n][2], "history.uuid": planned[n][3]}
                         for n in asking]}, {"uuid": 1})}
            hits = [n for n in asking if planned[n][2] in holding]
            landed.update(hits)
            asking = [following[n] for n in hits if n in following]
        return landed

    def _read_landed_by_entry(self, batch: list[tuple[str, str, str, dict]],
                              results: list[dict | None], with_history: bool) -> None:
        """Fill ``results`` with the jobs holding their change's entry uuid (one find)."""
        # Entries carry a unique uuid: the server tells which jobs hold theirs, so the read
        # needs no history (and sends none unless asked).
        landed = {doc["uuid"]: doc for doc in self._jobs.find(
            {"$or": [{"uuid": uuid, "history.uuid": entry["uuid"]}
                     for uuid, _, _, entry in batch]},
            None if with_history else NO_HISTORY)}
        for i, (uuid, *_) in enumerate(batch):
            doc = landed.get(uuid)
            if doc is not None and doc.get("_visible") is True:
                results[i] = decode(doc)
                self._known.put(doc)
            else:
                self._known.drop(uuid)

    def _read_landed_by_history(self, batch: list[tuple[str, str, str, dict]],
                                results: list[dict | None], with_history: bool) -> None:
        """Fill ``results`` with the jobs whose history holds their change's entry."""
        found = {doc["uuid"]: doc for doc in self._jobs.find(
            {"uuid": {"$in": [uuid for uuid, *_ in batch]}})}
        for i, (uuid, _, _, entry) in enumerate(batch):
            doc = found.get(uuid)
            if doc is not None and doc.get("_visible") is True:
                self._known.put(doc)
                record = decode(doc)
                if holds(record, entry):
                    if not with_history:
                        del record["history"]
                    results[i] = record
            else:
                self._known.drop(uuid)

    def _bulk_write(self, operations: list[UpdateOne]) -> tuple[int, set[int]]:
        """One unordered bulk write: how many documents it modified, and the indexes of the
        operations the server refused alone."""
        if not operations:
            return 0, set()
        try:
            result = self._jobs.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            # A change refused on its own merits stays uncommitted. A write concern failure or
            # a transient refusal says nothing certain about the batch: retry it whole (the
            # duplicate keys make that safe).
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or \
                    {e.get("code") for e in errors} & TRANSIENT_CODES:
                raise StoreUnavailable(f"MongoDB at {self.uri} is unavailable (commit a batch "
                                       f"of events): {self._clean(exc)}") from None
            return exc.details.get("nModified", 0), {e["index"] for e in errors}
        return result.modified_count, set()
