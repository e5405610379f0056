"""Why a broker connection failed, whether trying again can help, and how long to wait first."""
from __future__ import annotations

import pika.exceptions
from tenacity import RetryCallState, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base

from ..domain.errors import BrokerError

# Broker reply codes that mean "your configuration is wrong", not "try again later": access
# refused, not found, precondition failed (conflicting declaration), command invalid (e.g. an
# exchange type whose plugin is off), not allowed.
FATAL_REPLY_CODES = frozenset({403, 404, 406, 503, 530})


class BrokerRefused(BrokerError):
    """The broker refused us for good (credentials, permissions, a conflicting declaration, a
    missing plugin): trying again, or another node, cannot help."""


def describe_close(reason: BaseException | None) -> str:
    """A one-line description of why a connection or channel closed (or failed to open)."""
    if reason is None:
        return "closed"
    code = getattr(reason, "reply_code", None)
    if code is not None:
        return f"{code} {getattr(reason, 'reply_text', '')}"
    # pika wraps the socket error in args, e.g. AMQPConnectionError(ConnectorSocketError(…))
    text = str(reason) or "; ".join(str(a) or repr(a) for a in reason.args)
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def is_fatal(reason: BaseException | None) -> bool:
    """True if ``reason`` is a refusal for good (see ``BrokerRefused``)."""
    if isinstance(reason, (pika.exceptions.ProbableAuthenticationError,
                           pika.exceptions.ProbableAccessDeniedError)):
        return True
    return getattr(reason, "reply_code", None) in FATAL_REPLY_CODES


def refusal(message: str, reason: BaseException) -> BrokerError:
    """``BrokerRefused`` if ``reason`` is a refusal for good, else a plain ``BrokerError``."""
    return (BrokerRefused if is_fatal(reason) else BrokerError)(message)


def capped_backoff(initial: float, cap: float) -> wait_base:
    """Exponential waits from ``initial`` up to ``cap``, half of each fixed and half random (so
    clients that lost the same broker spread out)."""
    return (wait_exponential(multiplier=initial / 2, max=cap / 2)
            + wait_random_exponential(multiplier=initial / 2, max=cap / 2))


class Waits:
    """The successive waits of a tenacity wait strategy, outside a retry loop: for callbacks on
    an IO loop, which schedule the next try themselves instead of sleeping."""

    def __init__(self, strategy: wait_base):
        self._strategy = strategy
        self._state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]

    def next(self) -> float:
        """The wait before the next try; each call counts one more failure."""
        delay = self._strategy(self._state)
        self._state.attempt_number += 1
        return delay

    def reset(self) -> None:
        """A try worked: the next failure waits the shortest time again."""
        self._state.attempt_number = 1
