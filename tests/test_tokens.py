"""Tokens (contract §4): job tokens per job, admin tokens per time window, masking."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from reactor.domain import tokens
from reactor.domain.identifiers import typed_uuid
from reactor.domain.tokens import Authority, admin_token, is_admin_token, is_job_token, job_token, mask

SECRET = "unit-test-secret-" + "k" * 20
JOB = typed_uuid("pipelinejob", "job one")
OTHER_JOB = typed_uuid("pipelinejob", "job two")
NOW = 1_700_000_000.0
WINDOW = 3600


def _tamper(token: str) -> str:
    return token[:-1] + ("0" if token[-1] != "0" else "1")


def test_job_token_is_hmac_sha256_of_the_uuid_hex_32_and_stable():
    t = job_token(SECRET, JOB)
    assert t == job_token(SECRET, JOB)
    assert len(t) == 32 and all(c in "0123456789abcdef" for c in t)
    # Keyed by the secret: a plain hash of the uuid is not the token.
    assert t != hashlib.sha256(JOB.encode()).hexdigest()[:32]
    # HMAC-SHA256 under the secret, domain-separated from admin tokens.
    domain = b"reactor/job-token/v1\x00"
    assert t == hmac.new(SECRET.encode(), domain + JOB.encode(), hashlib.sha256).hexdigest()[:32]


def test_job_token_depends_on_job_and_secret():
    assert job_token(SECRET, JOB) != job_token(SECRET, OTHER_JOB)
    assert job_token(SECRET, JOB) != job_token(SECRET + "x", JOB)


def test_job_token_works_only_for_its_job():
    t = job_token(SECRET, JOB)
    assert is_job_token(SECRET, JOB, t)
    assert not is_job_token(SECRET, OTHER_JOB, t)


@pytest.mark.parametrize("bad", ["", None, 0, b"bytes", ["x"], "tampered", "short"])
def test_job_token_refuses_empty_and_wrong_values(bad):
    given = _tamper(job_token(SECRET, JOB)) if bad == "tampered" else bad
    given = job_token(SECRET, JOB)[:8] if bad == "short" else given
    assert not is_job_token(SECRET, JOB, given)


def test_admin_token_is_not_a_job_token_and_vice_versa():
    a = Authority(SECRET)
    admin = a.admin_token(NOW)
    assert admin != a.job_token(JOB)
    assert not is_job_token(SECRET, JOB, admin)
    assert not a.is_admin(a.job_token(JOB), NOW)


def test_admin_token_valid_in_current_and_previous_window_only():
    current = admin_token(SECRET, NOW, WINDOW)
    start = (NOW // WINDOW) * WINDOW
    assert is_admin_token(SECRET, current, NOW, WINDOW)
    assert is_admin_token(SECRET, current, start + WINDOW - 0.001, WINDOW)
    assert is_admin_token(SECRET, current, start + WINDOW, WINDOW)  # now the previous window
    assert is_admin_token(SECRET, current, start + 2 * WINDOW - 0.001, WINDOW)


def test_expired_admin_token_is_refused():
    current = admin_token(SECRET, NOW, WINDOW)
    start = (NOW // WINDOW) * WINDOW
    assert not is_admin_token(SECRET, current, start + 2 * WINDOW, WINDOW)
    assert not is_admin_token(SECRET, admin_token(SECRET, NOW - 2 * WINDOW, WINDOW), NOW, WINDOW)


def test_future_window_admin_token_is_refused():
    future = admin_token(SECRET, NOW + WINDOW, WINDOW)
    assert future != admin_token(SECRET, NOW, WINDOW)
    assert not is_admin_token(SECRET, future, NOW, WINDOW)


@pytest.mark.parametrize("bad", ["", None, 42, "tampered", "other-secret"])
def test_admin_token_refuses_tampered_empty_and_foreign(bad):
    if bad == "tampered":
        bad = _tamper(admin_token(SECRET, NOW))
    elif bad == "other-secret":
        bad = admin_token(SECRET + "-other", NOW)
    assert not is_admin_token(SECRET, bad, NOW)


def test_authority_allows():
    a = Authority(SECRET)
    admin = a.admin_token()
    own = a.job_token(JOB)
    assert a.allows(JOB, own)
    assert not a.allows(OTHER_JOB, own)
    assert a.allows(JOB, admin) and a.allows(OTHER_JOB, admin)
    # Admin-only operations (reset, ready, delete) refuse the job token.
    assert not a.allows(JOB, own, admin_only=True)
    assert a.allows(JOB, admin, admin_only=True)
    assert not a.allows(JOB, "", admin_only=False)
    assert not a.allows(JOB, None)


def test_token_length_and_window_are_configurable():
    a = Authority(SECRET, length=48, window=60)
    assert len(a.job_token(JOB)) == 48
    assert len(a.admin_token()) == 48
    assert a.is_admin(a.admin_token(NOW), NOW + 60)
    assert not a.is_admin(a.admin_token(NOW), NOW + 120)


@pytest.mark.parametrize("weak", ["", "short", b"0123456789"])
def test_weak_secrets_are_refused(weak):
    with pytest.raises(ValueError) as info:
        Authority(weak)
    assert "16 bytes" in str(info.value)
    with pytest.raises(ValueError):
        job_token(weak, JOB)


def test_repr_never_shows_the_secret():
    assert SECRET not in repr(Authority(SECRET))


def test_mask_shows_four_characters_at_most():
    t = job_token(SECRET, JOB)
    assert mask(t) == t[:4] + "…"
    assert t[4:] not in mask(t)
    assert mask("") == "<none>" and mask(None) == "<none>"
    assert mask("abc") == "…"


def test_mask_text_hides_tokens_in_free_text():
    t = job_token(SECRET, JOB)
    for text in (f"http://x/cb?uuid={JOB}&token={t}&status=RUNNING",
                 f'{{"uuid": "{JOB}", "token": "{t}"}}', f"token={t}", f"token: {t}"):
        masked = tokens.mask_text(text)
        assert t not in masked
        assert t[:4] in masked
    assert JOB in tokens.mask_text(f"uuid={JOB}&token={t}")


@pytest.mark.parametrize("length", [16, 32, 64])
def test_mask_text_hides_token_shaped_text_wherever_it_stands(length):
    """A token in the wrong field (a uuid's place, a path, an exception text) is masked too:
    every run of 16 or more hex digits, in any case, glued to other text or not."""
    t = Authority(SECRET, length=length).job_token(JOB)
    for text in (f"$.uuid: {t!r} does not match", f"GET /jobs/{t} 400", f"x{t}y",
                 f"id:{t.upper()}", f"secret {SECRET.encode().hex()}"):
        masked = tokens.mask_text(text)
        assert t not in masked and t.upper() not in masked and SECRET.encode().hex() not in masked
    assert "…" in tokens.mask_text(t)


@pytest.mark.parametrize("text", [
    f"job {JOB}: run moved CREATED → RUNNING", "2026-12-04T17:57:31.562Z applied",
    "latency_ms=1.234 revision=15 message_id=m-123", "deadbeef-cafe", "a" * 15,
])
def test_mask_text_leaves_uuids_dates_and_short_hex_alone(text):
    assert tokens.mask_text(text) == text


@pytest.mark.parametrize("value, expected", [
    (None, "null"), (True, "true"), (12, "12"), (2.5, "2.5"), ("runn", '"runn"'),
    ("FINISHED\n", '"FINISHED\\n"'), (JOB, f'"{JOB}"'),
    ("x" * 41, "a string of 41 characters"), ("a1b2c3d4e5f6a7b8", "a string of 16 characters"),
    ("Bearer abcdefghijklmnopq", "a string of 24 characters"),
    ({"a": 1}, "an object with 1 keys"), ([1, 2], "an array of 2 items"),
])
def test_shown_echoes_only_what_is_known_to_be_harmless(value, expected):
    """Errors quote a caller's value only when it cannot be a token or secret."""
    assert tokens.shown(value) == expected


def test_shown_never_echoes_a_token_of_any_configured_length():
    for length in range(16, 65):
        t = Authority(SECRET, length=length).job_token(JOB)
        assert t not in tokens.shown(t) and t not in tokens.shown(" " + t)


def test_authority_gives_the_module_functions_tokens_across_window_changes():
    secret = "s" * 32
    authority = Authority(secret, window=60)
    uuid = "107be0e0-539b-5e47-b0b0-d39bb6b90f96"
    assert authority.job_token(uuid) == job_token(secret, uuid)
    for now in (1000.0, 1001.0, 1060.0, 1130.0, 5000.0, 1000.0):  # windows change, and back
        current = admin_token(secret, now, window=60)
        previous = admin_token(secret, now - 60, window=60)
        older = admin_token(secret, now - 120, window=60)
        assert authority.admin_token(now) == current
        assert authority.is_admin(current, now) and authority.is_admin(previous, now)
        assert not authority.is_admin(older, now)
        assert authority.allows(uuid, current, admin_only=True, now=now)
        assert not authority.allows(uuid, older, now=now)


def test_a_sha256_digest_is_kept_whole_but_nothing_glued_to_it():
    """The duplicate key and the publisher's message id are digests operators quote; a 64-hex
    run with anything else in front or behind is masked like any token-shaped text."""
    digest = "sha256:" + hashlib.sha256(b"body").hexdigest()
    assert tokens.mask_text(f"key {digest} id:{digest}") == f"key {digest} id:{digest}"
    for glued in ("x" + digest, digest + "0", digest.upper()[:7] + "g" + digest[8:]):
        assert tokens.mask_text(glued) != glued or "…" in glued


@pytest.mark.parametrize("bad", ["\udcff" * 32, "abc\ud800"])
def test_a_token_that_is_not_valid_text_is_simply_wrong(bad):
    authority = Authority(SECRET)
    assert not authority.allows(JOB, bad) and not authority.is_admin(bad)
    assert not is_job_token(SECRET, JOB, bad)


def test_a_secret_that_is_not_valid_text_is_refused_by_name():
    with pytest.raises(ValueError, match="secret"):
        Authority(SECRET + "\udcff")
