"""The lifecycle of contract §2: the table as data, and every event × every state on both stores.

The expected matrix is spelled out here from contract §2, independently of ``lifecycle.TABLE``,
so a wrong table cannot confirm itself.
"""
from __future__ import annotations

import json

import pytest
from conftest import STATE_PATHS
from transitions.core import MachineError

from reactor.domain import lifecycle

# contract §2 as a state × event matrix; "-" = not allowed from that state.
MATRIX = """
state      create  run     update     resource fail   finish   index    indexed  validate   validated reject   finalize  retire  reset ready
CREATED    CREATED RUNNING CREATED    CREATED  FAILED -        -        -        -          -         -        -         -       RESET -
RUNNING    -       RUNNING RUNNING    RUNNING  FAILED FINISHED -        -        -          -         -        -         -       RESET -
FAILED     -       -       -          -        -      -        -        -        -          -         -        -         RETIRED RESET -
FINISHED   -       -       -          -        -      FINISHED INDEXING FINISHED VALIDATING -         -        -         RETIRED RESET -
INDEXING   -       -       INDEXING   -        FAILED -        INDEXING FINISHED -          -         -        -         -       RESET -
VALIDATING -       -       VALIDATING -        FAILED -        -        -        -          VALIDATED REJECTED -         RETIRED RESET -
VALIDATED  -       -       -          -        -      -        -        -        VALIDATING VALIDATED -        FINALIZED RETIRED RESET -
REJECTED   -       -       -          -        -      -        -        -        -          -         -        -         RETIRED RESET -
FINALIZED  -       -       -          -        -      -        -        -        -          -         -        -         RETIRED RESET -
RETIRED    -       -       -          -        -      -        -        -        -          -         -        -         -       RESET -
RESET      -       -       -          -        -      -        -        -        -          -         -        -         -       RESET CREATED
"""


def _parse(text: str) -> tuple[list[str], list[str], dict[tuple[str, str], str | None]]:
    lines = [line.split() for line in text.strip().splitlines()]
    events = lines[0][1:]
    states = [row[0] for row in lines[1:]]
    table = {(row[0], e): (None if dst == "-" else dst)
             for row in lines[1:] for e, dst in zip(events, row[1:], strict=True)}
    return states, events, table


STATES, EVENTS, EXPECTED = _parse(MATRIX)
ADMIN = {"reset", "ready"}
# A way to reach each state from CREATED.
PATHS = STATE_PATHS


# --- the table as data (pure) -----------------------------------------------------------------

def test_states_and_events_are_the_specified_ones():
    assert list(lifecycle.STATE_NAMES) == STATES
    assert sorted(lifecycle.EVENT_NAMES) == sorted(EVENTS)
    assert len(STATES) == 11 and len(EVENTS) == 15
    assert lifecycle.INITIAL_STATE == "CREATED"


def test_table_matches_spec_for_every_pair():
    for state in STATES:
        for event in EVENTS:
            assert lifecycle.TABLE.get((state, event)) == EXPECTED[(state, event)], (state, event)


@pytest.mark.parametrize("state", STATES)
def test_next_state_and_allowed_events(state):
    allowed = [e for e in EVENTS if EXPECTED[(state, e)]]
    assert sorted(lifecycle.allowed_events(state)) == sorted(allowed)
    for event in EVENTS:
        if EXPECTED[(state, event)]:
            assert lifecycle.next_state(state, event) == EXPECTED[(state, event)]
            continue
        with pytest.raises(MachineError) as info:
            lifecycle.next_state(state, event)
        text = str(info.value)
        # The message names the event, the current state and what is allowed from it.
        assert repr(event) in text and state in text
        for name in allowed:
            assert name in text


def test_transitions_machine_agrees_with_the_table_and_is_built_once():
    machine = lifecycle.machine()
    assert lifecycle.machine() is machine
    for state in STATES:
        expected = {e for e in EVENTS if EXPECTED[(state, e)]}
        assert set(machine.get_triggers(state)) == expected, state


def test_edges_group_the_spec_matrix_by_source_and_destination():
    _, _, spec = _parse(MATRIX)
    expanded = {(e.source, event): e.dest for e in lifecycle.edges() for event in e.events}
    assert expanded == {pair: dst for pair, dst in spec.items() if dst is not None}
    pairs = [(e.source, e.dest) for e in lifecycle.edges()]
    assert len(pairs) == len(set(pairs))  # one edge per pair, its events together
    folded = lifecycle.edges(fold_any=True)
    assert [e for e in folded if e.source == lifecycle.ANY] == [
        lifecycle.Edge(lifecycle.ANY, "RESET", ("reset",))]
    assert {(e.source, e.dest) for e in folded if e.source != lifecycle.ANY} == {
        (e.source, e.dest) for e in lifecycle.edges() if "reset" not in e.events
        or len(e.events) > 1}


def test_admin_events_are_exactly_reset_and_ready():
    assert lifecycle.ADMIN_EVENTS == ADMIN
    assert all(lifecycle.is_admin_event(e) == (e in ADMIN) for e in EVENTS)


@pytest.mark.parametrize("given, expected", [("RUN", "run"), ("Finish", "finish"),
                                             ("validated", "validated"), ("Reset", "reset")])
def test_event_names_are_case_insensitive(given, expected):
    assert lifecycle.normalize_event(given) == expected


# ASCII case is all that is forgiven: white space (ASCII or not) and Unicode case folding are not.
@pytest.mark.parametrize("bad", ["launch", "", "run!", None, 3, ["run"], " Finish ", "run\n",
                                 "run\u00a0", "\u2003run", "\u212aindex"])
def test_unknown_event_names_are_refused_with_the_known_list(bad):
    with pytest.raises(ValueError) as info:
        lifecycle.normalize_event(bad)
    assert "event" in str(info.value)


# --- every event × every state on both stores ---------------------------------------------------

def _snapshot(store, uuid: str) -> str:
    return json.dumps(store.get_job(uuid, include_hidden=True), sort_keys=True)


def _token(jobs, uuid: str, event: str) -> str:
    return jobs.authority.admin_token() if event in ADMIN else jobs.authority.job_token(uuid)


@pytest.mark.parametrize("state", STATES)
def test_every_event_from_every_state_on_the_store(jobs, store, state):
    for event in EVENTS:
        record, created = jobs.create(jobs.pipeline_uuid, data={"state": state, "event": event})
        assert created
        uuid = record["uuid"]
        for step in PATHS[state]:
            jobs.apply(uuid, step, None, _token(jobs, uuid, step))
        before = store.get_job(uuid)
        assert before["state"] == state
        # create is recorded by creating the job; the table's CREATED -> CREATED row is parity.
        destination = None if event == "create" else EXPECTED[(state, event)]
        if destination is None:
            snapshot = _snapshot(store, uuid)
            with pytest.raises(MachineError):
                jobs.apply(uuid, event, {"try": event}, _token(jobs, uuid, event))
            assert _snapshot(store, uuid) == snapshot, (state, event)
            continue
        result = jobs.apply(uuid, event, {"try": event}, _token(jobs, uuid, event))
        after = store.get_job(uuid)
        assert result.applied
        assert after["state"] == destination, (state, event)
        assert after["last_event"] == event
        assert after["revision"] == before["revision"] + 1
        assert after["history"][:-1] == before["history"]
        assert after["history"][-1]["name"] == event
        assert after["history"][-1]["data"] == {"try": event}
        assert after["history"][-1]["uuid"].startswith("108")
