"""The job lifecycle declared as data (contract §2): states, events, and the transition table.

Everything else (schemas' enums, the ``transitions`` machine, docs, diagrams) is derived from
``TRANSITIONS``; nothing restates it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from .errors import InvalidTransition
from .tokens import shown

if TYPE_CHECKING:
    from transitions import Machine

ANY = "*"
SAME = "="


class State(NamedTuple):
    """A lifecycle state and what it means."""

    name: str
    description: str


class Transition(NamedTuple):
    """One event: the states it may fire from, and where it leads."""

    event: str
    sources: tuple[str, ...]
    dest: str
    description: str
    admin: bool = False


STATES: tuple[State, ...] = (
    State("CREATED", "Job inputs and configuration have been defined"),
    State("RUNNING", "Job is actively processing data"),
    State("FAILED", "Job did not complete successfully"),
    State("FINISHED", "Job has completed processing and outputs are archived"),
    State("INDEXING", "Job outputs are being associated with project metadata"),
    State("VALIDATING", "Job outputs are being assessed for correctness"),
    State("VALIDATED", "Job outputs were determined to be correct"),
    State("REJECTED", "Job outputs are invalid and should not be used"),
    State("FINALIZED", "Job outputs are validated and ready for general use"),
    State("RETIRED", "Job and outputs should no longer be used"),
    State("RESET", "Job and outputs are being reset for another run"),
)

INITIAL_STATE = "CREATED"

TRANSITIONS: tuple[Transition, ...] = (
    Transition("create", ("CREATED",), "CREATED", "Create a new job"),
    Transition("run", ("CREATED", "RUNNING"), "RUNNING", "Mark the job as running"),
    Transition("update", ("CREATED", "RUNNING", "VALIDATING", "INDEXING"), SAME,
               "Append an information item to the history"),
    Transition("resource", ("CREATED", "RUNNING"), SAME, "Note resource-marshalling activity"),
    Transition("fail", ("CREATED", "RUNNING", "VALIDATING", "INDEXING"), "FAILED",
               "Permanently mark the job as failed"),
    Transition("finish", ("RUNNING", "FINISHED"), "FINISHED", "Mark the job as complete"),
    Transition("index", ("FINISHED", "INDEXING"), "INDEXING", "Index the job's outputs"),
    Transition("indexed", ("FINISHED", "INDEXING"), "FINISHED", "Indexing is complete"),
    Transition("validate", ("FINISHED", "VALIDATED"), "VALIDATING", "Outputs are under validation"),
    Transition("validated", ("VALIDATING", "VALIDATED"), "VALIDATED", "Validation is complete"),
    Transition("reject", ("VALIDATING",), "REJECTED", "Outputs are unsuitable for use"),
    Transition("finalize", ("VALIDATED",), "FINALIZED", "Outputs are suitable for general use"),
    Transition("retire", ("FAILED", "FINALIZED", "FINISHED", "REJECTED", "VALIDATING", "VALIDATED"),
               "RETIRED", "The job and its outputs are retired"),
    Transition("reset", (ANY,), "RESET", "Begin a reset (the library's reset() also empties the archive)",
               admin=True),
    Transition("ready", ("RESET",), "CREATED", "Complete the reset, allowing a re-run", admin=True),
)

STATE_NAMES: tuple[str, ...] = tuple(s.name for s in STATES)
EVENT_NAMES: tuple[str, ...] = tuple(t.event for t in TRANSITIONS)
ADMIN_EVENTS: frozenset[str] = frozenset(t.event for t in TRANSITIONS if t.admin)
_BY_EVENT = {t.event: t for t in TRANSITIONS}


class Edge(NamedTuple):
    """An arrow of the lifecycle: the events that lead from one state to another (or back)."""

    source: str                    # a state, or ANY for an event allowed from every state
    dest: str
    events: tuple[str, ...]


def edges(fold_any: bool = False) -> tuple[Edge, ...]:
    """``TRANSITIONS`` grouped by (source, destination), in table order. With ``fold_any`` an
    event allowed from every state is one edge from ``ANY`` instead of one per state."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for t in TRANSITIONS:
        sources = t.sources if fold_any or ANY not in t.sources else STATE_NAMES
        for source in sources:
            dest = source if t.dest == SAME else t.dest
            grouped.setdefault((source, dest), []).append(t.event)
    return tuple(Edge(s, d, tuple(events)) for (s, d), events in grouped.items())


# (state, event) -> destination, precomputed once: this is the hot path of every message.
TABLE: dict[tuple[str, str], str] = {
    (edge.source, event): edge.dest for edge in edges() for event in edge.events
}


# Recorded by creating a job (its first history entry), never applied to an existing one: the
# table's CREATED -> CREATED row is the replaced system's, kept for parity (``applied_state``).
CREATION_EVENT = "create"


def fold_event(name: object) -> object:
    """``name`` with ASCII upper case folded (names match ignoring ASCII case, nothing else:
    no stripping, no Unicode folding, so " run" or "run\n" stay unknown); non-strings as given."""
    return name.lower() if isinstance(name, str) and name.isascii() else name


def normalize_event(name: str) -> str:
    """Return the canonical (lower-case) event name, or raise ValueError for an unknown one."""
    if not isinstance(name, str):
        raise ValueError(f"event name must be a string, got {type(name).__name__}")
    event = fold_event(name)
    if event not in _BY_EVENT:
        raise ValueError(f"unknown event {shown(name)}; known events: {', '.join(EVENT_NAMES)}")
    return event


def allowed_events(state: str) -> list[str]:
    """Events that may fire from ``state``, in table order."""
    return [e for e in EVENT_NAMES if (state, e) in TABLE]


def is_admin_event(event: str) -> bool:
    """True when ``event`` needs an administrative token."""
    return event in ADMIN_EVENTS


def next_state(state: str, event: str) -> str:
    """Destination of ``event`` from ``state``; raises ``MachineError`` when not allowed."""
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise InvalidTransition(invalid_transition_message(state, event)) from None


def applied_state(state: str, event: str) -> str:
    """Destination of ``event`` applied to an existing job in ``state``: ``next_state``, except
    that ``create`` never applies (it is recorded once, by creating the job)."""
    if event == CREATION_EVENT:
        raise InvalidTransition(f"Can't trigger event {event!r} on an existing job (state {state}): "
                           "'create' is recorded once, when the job is created")
    return next_state(state, event)


def invalid_transition_message(state: str, event: str) -> str:
    """A message naming the event, the current state and the events allowed from it."""
    allowed = ", ".join(allowed_events(state)) or "none"
    return f"Can't trigger event {event!r} from state {state}; allowed from {state}: {allowed}"


@lru_cache(maxsize=1)
def machine() -> "Machine":
    """The ``transitions`` machine for the table, built once (used for introspection/diagrams)."""
    from transitions import Machine

    spec = [
        {"trigger": t.event, "source": list(STATE_NAMES) if ANY in t.sources else list(t.sources),
         "dest": t.dest}
        for t in TRANSITIONS
    ]
    return Machine(model=None, states=list(STATE_NAMES), transitions=spec,
                   initial=INITIAL_STATE, auto_transitions=False, send_event=False)
