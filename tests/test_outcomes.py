"""The one vocabulary (``reactor.domain.outcomes``): kinds, reasons and actions read exactly as
the plain strings they are, the reason sets are derived from them, and an invalid transition is
both a ReactorError and the ``MachineError`` the replaced system's users catch."""
from __future__ import annotations

import json
import pickle

import pytest

from pipeline_helpers import new_job
from reactor.domain.outcomes import (DEAD_LETTER_ONLY_REASONS, DEAD_LETTER_REASONS,
                                     REJECT_REASONS, RETRY_REASONS, Action, ActionKind, Kind,
                                     Outcome, Reason)


def test_members_read_serialise_and_compare_as_their_strings():
    member = Outcome(Kind.REJECTED, Reason.AUTH_FAILED, "refused", "107x", "run")
    plain = Outcome("rejected", "auth_failed", "refused", "107x", "run")
    assert member == plain and member.label == plain.label == "rejected:auth_failed"
    assert member.to_json() == plain.to_json()
    assert json.loads(member.to_json())["kind"] == "rejected"
    assert f"{ActionKind.RETRY_LATER}:{Reason.TIMEOUT}" == "retry_later:timeout"
    assert pickle.loads(pickle.dumps(member)) == member  # what crosses the pipe to the child
    assert Action(ActionKind.ACK) == Action("ack")


def test_every_reason_is_in_exactly_one_set_and_the_sets_are_plain_strings():
    sets = (REJECT_REASONS, RETRY_REASONS, DEAD_LETTER_ONLY_REASONS)
    assert sorted(r for s in sets for r in s) == sorted(r.value for r in Reason)
    assert DEAD_LETTER_REASONS == REJECT_REASONS + DEAD_LETTER_ONLY_REASONS
    assert all(type(r) is str for s in sets for r in s)  # YAML and CLI choices take them as is


def test_an_invalid_transition_is_a_reactor_error_and_still_a_machine_error(jobs):
    """``except ReactorError`` catches it with every other error the reactor raises, and code
    written against the replaced system's library (``except MachineError``) still catches it."""
    from transitions.core import MachineError

    from reactor.domain import lifecycle
    from reactor.domain.errors import InvalidTransition, ReactorError

    uuid, token = new_job(jobs)
    for refused in (lambda: lifecycle.next_state("CREATED", "finalize"),
                    lambda: jobs.apply(uuid, "finalize", token=token),
                    lambda: jobs.apply(uuid, "create", token=token)):
        with pytest.raises(ReactorError) as as_reactor_error:
            refused()
        with pytest.raises(MachineError) as as_machine_error:
            refused()
        for caught in (as_reactor_error.value, as_machine_error.value):
            assert isinstance(caught, InvalidTransition) and "Can't trigger event" in caught.value
    assert jobs.get(uuid)["revision"] == 1
