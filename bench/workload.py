"""The benchmark's workload: a fixed, seeded set of ~1 KB event messages for many jobs.

Each job gets a lifecycle-valid sequence (run, a mix of update/resource, then finish, index,
indexed, validate, validated, finalize); the jobs' sequences are interleaved at random but
each job's events stay in order, as when many compute jobs report at once.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

TAIL = ("finish", "index", "indexed", "validate", "validated", "finalize")
MIX = ("update", "update", "update", "resource")  # updates dominate real traffic
# (state, event) -> state for the events used here, so the raw store loops need no reactor code.
MOVES = {
    ("CREATED", "run"): "RUNNING", ("RUNNING", "update"): "RUNNING",
    ("RUNNING", "resource"): "RUNNING", ("RUNNING", "finish"): "FINISHED",
    ("FINISHED", "index"): "INDEXING", ("INDEXING", "indexed"): "FINISHED",
    ("FINISHED", "validate"): "VALIDATING", ("VALIDATING", "validated"): "VALIDATED",
    ("VALIDATED", "finalize"): "FINALIZED",
}
MESSAGE_BYTES = 1024


def event_names(rng: random.Random, count: int) -> list[str]:
    """A valid sequence of ``count`` events (at least 8) for one job."""
    if count < len(TAIL) + 2:
        raise ValueError(f"events per job must be at least {len(TAIL) + 2}, got {count}")
    middle = [rng.choice(MIX) for _ in range(count - 1 - len(TAIL))]
    return ["run", *middle, *TAIL]


def transitions(names: list[str]) -> list[tuple[str, str]]:
    """(from_state, to_state) of each event, starting from CREATED."""
    state, out = "CREATED", []
    for name in names:
        after = MOVES[(state, name)]
        out.append((state, after))
        state = after
    return out


@dataclass(frozen=True)
class Event:
    """One message of the workload."""

    job: int
    seq: int
    name: str
    from_state: str
    to_state: str
    data: dict
    message_id: str


@dataclass
class Workload:
    """``jobs`` × ``per_job`` events, interleaved; job uuids/tokens are bound later."""

    jobs: int
    per_job: int
    seed: int
    events: list[Event] = field(default_factory=list)

    @classmethod
    def build(cls, jobs: int, per_job: int, seed: int, tag: str) -> "Workload":
        """The workload for ``seed``; ``tag`` makes message ids unique per run."""
        rng = random.Random(seed)
        per = []
        for j in range(jobs):
            names = event_names(rng, per_job)
            per.append([Event(j, i, n, f, t, _data(rng, j, i), f"bench-{tag}-{j}-{i}")
                        for i, (n, (f, t)) in enumerate(zip(names, transitions(names)))])
        # Interleave: a random order of job slots, each job's events consumed in sequence.
        slots = [j for j in range(jobs) for _ in range(per_job)]
        rng.shuffle(slots)
        cursors = [0] * jobs
        events = []
        for j in slots:
            events.append(per[j][cursors[j]])
            cursors[j] += 1
        return cls(jobs, per_job, seed, events)

    def __len__(self) -> int:
        return len(self.events)


def _data(rng: random.Random, job: int, seq: int) -> dict:
    data = {
        "account_id": rng.randrange(10**9), "name": f"sample-{job:05d}-{seq:03d}",
        "email": f"user{rng.randrange(10**6)}@example.org",
        "status": rng.choice(["queued", "running", "staging", "archiving"]),
        "balance": round(rng.uniform(0, 10**6), 2), "currency": rng.choice(["USD", "EUR"]),
        "tags": [rng.choice(["rna", "dna", "yeast", "ecoli", "plate"]) for _ in range(3)],
        "updated_at": f"2026-11-29T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
        "address": {"site": "tacc", "path": f"/work/{job}/{seq}"}, "seq": seq,
    }
    return data


def body(event: Event, uuid: str, token: str, extra: dict | None = None) -> bytes:
    """The message bytes for ``event`` bound to a job, padded to about MESSAGE_BYTES."""
    data = dict(event.data, **(extra or {}))
    doc = {"uuid": uuid, "name": event.name, "token": token, "data": data}
    size = len(json.dumps(doc, separators=(",", ":")))
    data["notes"] = "n" * max(0, MESSAGE_BYTES - size - 12)
    return json.dumps(doc, separators=(",", ":")).encode()
