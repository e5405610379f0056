"""Job and administrative tokens (contract §4): HMAC-SHA256 under one secret, never stored.

Job tokens are stable for a job's life; admin tokens are bound to a time window and expire by
themselves. Both are compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Iterable

DEFAULT_LENGTH = 32
DEFAULT_WINDOW = 3600
MIN_SECRET_BYTES = 16
# Domain separation: the same secret never yields a job token equal to an admin token.
_JOB_DOMAIN = b"reactor/job-token/v1\x00"
_ADMIN_DOMAIN = b"reactor/admin-token/v1\x00"


def _key(secret: str | bytes) -> bytes:
    try:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
    except UnicodeEncodeError:
        raise ValueError("the token secret must be valid Unicode text (it holds an unpaired "
                         "surrogate)") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes long")
    return key


def _mac(secret: str | bytes, domain: bytes, message: str, length: int) -> str:
    return hmac.new(_key(secret), domain + message.encode(), hashlib.sha256).hexdigest()[:length]


def job_token(secret: str | bytes, job_uuid: str, length: int = DEFAULT_LENGTH) -> str:
    """The token that authorises events for one job."""
    return _mac(secret, _JOB_DOMAIN, job_uuid, length)


def admin_token(secret: str | bytes, now: float | None = None, window: int = DEFAULT_WINDOW,
                length: int = DEFAULT_LENGTH) -> str:
    """The administrative token of the time window containing ``now``."""
    number = int((time.time() if now is None else now) // window)
    return _mac(secret, _ADMIN_DOMAIN, str(number), length)


def _equal(given: object, expected: str) -> bool:
    if not isinstance(given, str) or not given:
        return False
    try:
        given_bytes = given.encode()
    except UnicodeEncodeError:  # not text at all (say bytes from an environment): wrong
        return False
    return hmac.compare_digest(given_bytes, expected.encode())


def is_admin_token(secret: str | bytes, token: object, now: float | None = None,
                   window: int = DEFAULT_WINDOW, length: int = DEFAULT_LENGTH) -> bool:
    """True when ``token`` is the admin token of the current or the previous window."""
    now = time.time() if now is None else now
    current = _equal(token, admin_token(secret, now, window, length))
    previous = _equal(token, admin_token(secret, now - window, window, length))
    return current | previous  # both computed: no timing hint about which window matched


def is_job_token(secret: str | bytes, job_uuid: str, token: object,
                 length: int = DEFAULT_LENGTH) -> bool:
    """True when ``token`` is the job token of ``job_uuid`` (admin tokens not considered)."""
    return _equal(token, job_token(secret, job_uuid, length))


# Names (of headers, log fields) whose values are secrets, whatever they hold.
SECRET_NAMES = ("token", "authorization", "password", "secret")

# What text may leave the process (log lines, errors, outcomes, HTTP answers, dead letters):
# a value after ``token=`` / ``"token":`` whatever it looks like, and anything token-shaped
# wherever it stands. Tokens are 16-64 hex characters (``token_length``), so every run of 16 or
# more hex digits is masked: a token sent in the wrong field, a secret in an exception text, a
# token glued to other text. Uuids (hex groups of at most 12) and dates never match.
# One exception: ``sha256:`` and exactly 64 hex digits is a SHA-256 digest of a message, the
# duplicate key and the publisher's message id, which operators quote to pick a dead letter.
_SECRETISH = re.compile(r"(?i)(\"?token\"?\s*[=:]\s*\"?)([^\"&\s,}]+)"
                        r"|(?<![0-9a-z])(sha256:[0-9a-f]{64})(?![0-9a-z])|[0-9a-f]{16,}")
# The cheap question first (most text holds neither): the full pattern costs ~5x as much.
_HEX_RUN = re.compile(r"[0-9a-fA-F]{16}")
# A run of 16 letters or digits: no value holding one is ever echoed (see ``shown``).
_LONG_RUN = re.compile(r"[A-Za-z0-9]{16}")
_QUOTED = re.compile(r"""(['"])(.*?)\1""", re.S)
MAX_SHOWN = 40


def mask(token: object) -> str:
    """A token as it may appear in logs: its first four characters only."""
    if not isinstance(token, str) or not token:
        return "<none>"
    return token[:4] + "…" if len(token) > 4 else "…"


def _masked(match: re.Match) -> str:
    if match.group(1) is not None:
        return match.group(1) + mask(match.group(2))
    if match.group(3) is not None:
        return match.group(3)  # a digest, kept whole
    return mask(match.group(0))


def mask_text(text: str) -> str:
    """``text`` with every ``token=…`` / ``"token": "…"`` value and every token-shaped run
    (16 or more hex digits) masked."""
    if "token" not in text.lower() and _HEX_RUN.search(text) is None:
        return text
    return _SECRETISH.sub(_masked, text)


# One URL's scheme and authority (user:password@hosts), which ends at a path, a query, white
# space, or where the next URL of a comma-separated list begins (its scheme).
_URL_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)"
                            r"((?:(?![A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s])*)")


def _masked_authority(match: re.Match) -> str:
    # The last "@" ends the user information: a password may hold an unencoded "@".
    userinfo, at, hosts = match.group(2).rpartition("@")
    if not at or ":" not in userinfo:
        return match.group(0)
    return f"{match.group(1)}{userinfo.split(':', 1)[0]}:***@{hosts}"


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it (one, or several separated by commas)
    replaced by ``***``: safe for logs and errors."""
    return _URL_AUTHORITY.sub(_masked_authority, text)


def mask_quoted(text: str) -> str:
    """``mask_text``, and each quoted value ('…' or "…") that ``shown`` would not echo replaced
    by its length: for texts written by others (click's usage errors) that quote a caller's
    argument whole, since a secret need not look like a token."""
    def quoted(match: re.Match) -> str:
        inner = match.group(2)
        if harmless(inner):
            return match.group(0)
        return f"<a value of {len(inner)} characters>"

    return mask_text(_QUOTED.sub(quoted, text))


def harmless(text: str) -> bool:
    """True when an error may quote ``text`` as it is: at most ``MAX_SHOWN`` characters and
    no run of 16 letters or digits (a token, a secret, a key)."""
    return len(text) <= MAX_SHOWN and not _LONG_RUN.search(text)


def shown(value: object) -> str:
    """``value`` as an error message may echo it: only when it is known to be harmless.

    Numbers, booleans and null are shown; a string only when it is at most ``MAX_SHOWN``
    characters long and holds no run of 16 letters or digits (a token, a secret, a key); else
    only its length. Objects and arrays are described by their size, never shown."""
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        if harmless(value):
            return json.dumps(value, ensure_ascii=False)
        return f"a string of {len(value)} characters"
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} items"
    return f"a {type(value).__name__}"


def body_token(body: bytes | str) -> str | None:
    """The ``token`` of a JSON object message body, if it has a string one."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    token = doc.get("token") if isinstance(doc, dict) else None
    return token if isinstance(token, str) else None


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with each of ``secrets`` masked wherever it appears, then any ``token=…``."""
    # Longest first: a secret that contains another is masked whole.
    for secret in sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4},
                         key=len, reverse=True):
        text = text.replace(secret, mask(secret))
    return mask_text(text)


class Authority:
    """Checks tokens for jobs and admin operations under one configured secret."""

    def __init__(self, secret: str | bytes, length: int = DEFAULT_LENGTH,
                 window: int = DEFAULT_WINDOW):
        # The keyed HMAC state is computed once and copied per token: the same MAC as
        # ``_mac`` (tests compare them) without redoing the key schedule for every message.
        self._keyed = hmac.new(_key(secret), digestmod=hashlib.sha256)
        self.length = length
        self.window = window
        # Admin tokens change once per window: (window number, (current, previous)).
        self._admin: tuple[int | None, tuple[str, ...]] = (None, ())

    def _mac(self, domain: bytes, message: str) -> str:
        mac = self._keyed.copy()
        mac.update(domain + message.encode())
        return mac.hexdigest()[:self.length]

    def job_token(self, job_uuid: str) -> str:
        """The job token of ``job_uuid``."""
        return self._mac(_JOB_DOMAIN, job_uuid)

    def admin_token(self, now: float | None = None) -> str:
        """The admin token of the current window."""
        number = int((time.time() if now is None else now) // self.window)
        return self._mac(_ADMIN_DOMAIN, str(number))

    def _admin_tokens(self, now: float) -> tuple[str, ...]:
        number = int(now // self.window)
        cached_number, tokens = self._admin
        if cached_number != number:
            tokens = (self._mac(_ADMIN_DOMAIN, str(number)),
                      self._mac(_ADMIN_DOMAIN, str(number - 1)))
            self._admin = (number, tokens)  # one assignment: safe to share between threads
        return tokens

    def is_admin(self, token: object, now: float | None = None) -> bool:
        """True for a valid (current or previous window) admin token."""
        current, previous = self._admin_tokens(time.time() if now is None else now)
        # Both compared: no timing hint about which window matched.
        return _equal(token, current) | _equal(token, previous)

    def allows(self, job_uuid: str, token: object, admin_only: bool = False,
               now: float | None = None) -> bool:
        """True when ``token`` authorises an operation on ``job_uuid``."""
        if self.is_admin(token, now):
            return True
        return not admin_only and _equal(token, self.job_token(job_uuid))

    def __repr__(self) -> str:  # never show the secret
        return f"Authority(length={self.length}, window={self.window})"
