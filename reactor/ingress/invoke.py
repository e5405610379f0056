"""Abaco-style actor mode (contract §7): one message from the environment, one outcome line.

The actor platform puts the raw message in ``MSG`` and every query parameter in an environment
variable of the same name, so ``uuid``, ``token``, ``event``, ``status`` and ``note`` are read
from there. ``message_id`` (optional) names the message for duplicate detection; without it the
digest of body and parameters is the key. Exactly one JSON outcome line goes to stdout; logs go
to stderr; the exit code is 0 for applied/duplicate and 1 for anything else.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Mapping, TextIO

from ..domain.errors import StoreUnavailable
from ..contract.environment import MESSAGE_ID_VAR, MESSAGE_VAR
from ..contract.messages import PARAM_NAMES
from ..domain.outcomes import Kind, Outcome, Reason
from ..engine.pipeline import Item
from ..domain.tokens import mask_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Invocation:
    """One message as the actor platform delivered it."""

    body: bytes
    params: Mapping[str, str] = field(default_factory=dict, repr=False)
    message_id: str | None = None


def from_environment(environ: Mapping[str, str] | None = None) -> Invocation:
    """Read ``MSG``, the parameters and ``message_id`` from the environment."""
    if environ is None:
        environ = os.environ
        # The raw bytes: a message that is not valid UTF-8 must reach the decode step as it is.
        body = os.environb.get(MESSAGE_VAR.encode(), b"")
    else:
        body = environ.get(MESSAGE_VAR, "").encode("utf-8", "surrogateescape")
    params = {name: environ[name] for name in PARAM_NAMES if environ.get(name)}
    return Invocation(body, params, environ.get(MESSAGE_ID_VAR) or None)


def invoke(pipeline_factory, invocation: Invocation, debug: bool = False) -> Outcome:
    """Process one invocation; a bug becomes ``retry:internal_error`` (re-raised in debug)."""
    try:
        pipeline = pipeline_factory()
        return pipeline.process([Item(invocation.body, invocation.message_id, invocation.params)])[0]
    except StoreUnavailable as exc:  # opening the store, before any message handling
        return Outcome(Kind.RETRY, Reason.STORE_UNAVAILABLE, mask_text(str(exc))[:300])
    except Exception as exc:  # noqa: BLE001 - one outcome line even when the reactor has a bug
        if debug:
            raise
        log.error("internal error while processing the message: %s: %s (reactor --debug "
                  "invoke shows the traceback)", type(exc).__name__, mask_text(str(exc)))
        return Outcome(Kind.RETRY, Reason.INTERNAL_ERROR,
                       mask_text(f"{type(exc).__name__}: {exc}")[:300])


def emit(outcome: Outcome, stream: TextIO | None = None) -> None:
    """Write the one outcome line, and log it."""
    stream = stream or sys.stdout
    stream.write(outcome.to_json() + "\n")
    stream.flush()
    level = logging.INFO if outcome.ok else logging.WARNING
    log.log(level, "%s job=%s event=%s state=%s: %s", outcome.label, outcome.job_uuid,
            outcome.event, outcome.state, outcome.detail)

