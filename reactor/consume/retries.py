"""Riding out trouble before a message is settled (tenacity): a few quick in-process retries of
a transient outcome (exponential backoff, jitter), and, when the store does not answer at all,
a pause of consuming (no new deliveries, nothing acked) until it answers again.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from tenacity import (Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt,
                      stop_when_event_set, wait_exponential, wait_random)

from ..broker.base import ConsumingConnection
from ..domain.outcomes import Kind, Outcome, Reason
from ..domain.tokens import mask_text
from .settle import Limits

log = logging.getLogger(__name__)


def _backoff(first_s: float, cap_s: float):
    # Exponential with random jitter, so consumers hit by one outage do not retry in lockstep.
    return wait_exponential(multiplier=first_s, max=cap_s) + wait_random(0, first_s)


def _transient(outcome: Outcome) -> bool:
    # A bug (internal_error) does not go away by trying again at once: only the attempt counts.
    return outcome.kind == Kind.RETRY and outcome.reason != Reason.INTERNAL_ERROR


class Retries:
    """Quick retries of one message, and riding out a store outage, until ``stop`` is set."""

    def __init__(self, limits: Limits, stop: threading.Event, probe_store: Callable[[], None],
                 connection: ConsumingConnection):
        self.limits = limits
        self.stop = stop
        self.probe_store = probe_store
        self.connection = connection
        self.outage = False  # True while consuming is paused for the store

    def again(self, first: Outcome, try_once: Callable[[], Outcome]) -> Outcome | None:
        """After the retry outcome ``first`` of one message, try it again while the failure is
        transient: the last outcome, or None if stopped meanwhile (the message stays unsettled)."""
        outcome = first
        if _transient(outcome):
            # The first try is the one just made, so the number of tries and the backoff are
            # the configured ones.
            tries = [outcome]
            retrying = Retrying(
                stop=stop_after_attempt(self.limits.local_retries) | stop_when_event_set(self.stop),
                wait=_backoff(0.1, self.limits.local_wait_max_s),
                retry=retry_if_result(_transient), sleep=self.stop.wait,
                retry_error_callback=lambda state: state.outcome.result())
            outcome = retrying(lambda: tries.pop() if tries else try_once())
        if outcome.kind == Kind.RETRY and self.stop.is_set():
            return None
        return outcome

    def store_answers(self) -> bool:
        """One probe of the store."""
        try:
            self.probe_store()
        except Exception as exc:  # noqa: BLE001 - any failure means "not answering"
            log.warning("store does not answer: %s", mask_text(str(exc)))
            return False
        return True

    def ride_out(self) -> bool:
        """Pause consuming until the store answers again; False if stopped meanwhile."""
        self.outage = True
        self.connection.pause()
        log.warning("store unavailable: paused consuming; probing until it answers")
        probing = Retrying(retry=retry_if_exception_type(Exception),
                           wait=_backoff(0.5, self.limits.probe_wait_max_s),
                           stop=stop_when_event_set(self.stop), sleep=self.stop.wait,
                           reraise=True)
        try:
            probing(self.probe_store)
        except Exception:  # noqa: BLE001 - only reached when stopping
            return False
        finally:
            self.outage = False
        log.info("store answers again: resuming")
        self.connection.resume()
        return not self.stop.is_set()
