"""Where the broker is: the URLs of a ``broker_url`` setting, their connection parameters, and
which one to try now.

A broker URL setting may name several nodes of a cluster (comma-separated): every client tries
them in a shuffled order (``Endpoints``) and moves on to the next when one refuses or is lost.
Passwords never leave this module unmasked (``mask_url``).
"""
from __future__ import annotations

import random

import pika

from ..domain.errors import ConfigError
from ..domain.tokens import mask_url

DEFAULT_HEARTBEAT_S = 30


def connection_parameters(url: str, name: str = "reactor") -> pika.URLParameters:
    """Parameters for ``url``: heartbeats on (30 s unless the URL says), a connection name."""
    if not url or not url.startswith(("amqp://", "amqps://")):
        raise ConfigError(f"broker_url must be an amqp:// or amqps:// URL, got "
                          f"{mask_url(url)!r}; set REACTOR_BROKER_URL")
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # noqa: BLE001 - pika raises assorted types for a malformed URL
        raise ConfigError(f"broker_url {mask_url(url)!r} is not a valid AMQP URL: "
                          f"{exc}") from None
    if "heartbeat" not in url:
        params.heartbeat = DEFAULT_HEARTBEAT_S
    if "blocked_connection_timeout" not in url:
        # A broker under a resource alarm blocks publishers; give up (and reconnect) eventually.
        params.blocked_connection_timeout = 300
    params.client_properties = {"connection_name": name}
    return params


def broker_urls(url: str) -> list[str]:
    """The URLs of a ``broker_url`` setting: one, or several separated by commas (one per
    node of a cluster); ConfigError if there is none."""
    urls = [u.strip() for u in (url or "").split(",") if u.strip()]
    if not urls:
        raise ConfigError("broker_url is empty: set REACTOR_BROKER_URL to an amqp:// URL, or "
                          "to several separated by commas (one per cluster node)")
    return urls


class Endpoints:
    """The broker URLs of one client in a shuffled order (so clients spread over the nodes),
    with the one to try now; a failure moves on to the next.

    ``failed`` tells whether every URL has now failed in a row (a round): only then is it
    worth waiting before the next try, since another node may well answer at once."""

    def __init__(self, url: str, name: str = "reactor",
                 rng: random.Random | None = None):
        pairs = [(connection_parameters(u, name), mask_url(u)) for u in broker_urls(url)]
        (rng or random).shuffle(pairs)
        self._pairs = pairs
        self._index = 0
        self._failures = 0

    @classmethod
    def of(cls, url: "str | Endpoints", name: str) -> "Endpoints":
        """``url`` itself if it is already an ``Endpoints``, else its URLs shuffled."""
        return url if isinstance(url, Endpoints) else cls(url, name)

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def parameters(self) -> pika.URLParameters:
        """Connection parameters of the URL to try now."""
        return self._pairs[self._index][0]

    @property
    def url(self) -> str:
        """The URL to try now, its password masked (for logs and errors)."""
        return self._pairs[self._index][1]

    @property
    def urls(self) -> list[str]:
        """Every URL, passwords masked, in the order they are tried."""
        return [shown for _, shown in self._pairs]

    def failed(self) -> bool:
        """The current URL failed: move to the next; True once all failed in a row."""
        self._index = (self._index + 1) % len(self._pairs)
        self._failures += 1
        if self._failures >= len(self._pairs):
            self._failures = 0
            return True
        return False

    def worked(self) -> None:
        """The current URL works: a new round of failures starts from zero."""
        self._failures = 0
