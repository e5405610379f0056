"""What an HTTP request to ``reactor serve`` carries, read within its limits: the recognised
query parameters, the body (refused once it exceeds the size limit), the bearer token, and every
token the request holds, so that no answer or log line echoes one.

``HttpError`` is how any step ends a request with an error status.
"""
from __future__ import annotations

from typing import Mapping
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from ..contract import messages
from ..domain.tokens import body_token, harmless


class HttpError(Exception):
    """A request that ends with an error status and a JSON body naming the problem."""

    def __init__(self, status: int, error: str, detail: str,
                 headers: Mapping[str, str] | None = None):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def request_tokens(request: Request, body: bytes = b"") -> list[str | None]:
    """Every token the request carries, so none of them is ever echoed."""
    found = list(request.query_params.getlist("token"))
    # A token sent in another parameter or in the path (say in the uuid's place) is masked
    # as well, whatever the texts that might echo it do.
    found += [v for v in request.query_params.values() if isinstance(v, str) and not harmless(v)]
    found += [v for v in request.path_params.values() if isinstance(v, str) and not harmless(v)]
    credentials = request.headers.get("authorization", "").split(None, 1)
    # The value after the scheme; a lone word may be a bare token, unless it is the scheme
    # (masking "Bearer" would garble the answer that says how to send one).
    if credentials and (len(credentials) == 2 or credentials[0].lower() != "bearer"):
        found.append(credentials[-1])
    if body:
        found.append(body_token(body))
    return found


def query_params(request: Request) -> dict[str, str]:
    """The recognised query parameters; a parameter given twice is ambiguous (400)."""
    # Parsed from the raw query string, not ``request.query_params``, which turns bytes that
    # are not UTF-8 into U+FFFD: kept as lone surrogates, the message contract refuses them
    # (decode_error), as it does for ``reactor invoke``, instead of storing altered text.
    # Latin-1 maps bytes to characters one to one, so the unquoted bytes come back exactly.
    raw = [(_utf8(key), _utf8(value)) for key, value in parse_qsl(
        request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
        encoding="latin-1")]
    out = {}
    for name in messages.PARAM_NAMES:
        values = [value for key, value in raw if key == name]
        if len(values) > 1:
            raise HttpError(400, "bad_request", f"query parameter {name!r} is given "
                            f"{len(values)} times; give it once")
        if values:
            out[name] = values[0]
    return out


def _utf8(latin1: str) -> str:
    """The UTF-8 text of bytes held as Latin-1 characters; bytes that are not UTF-8 stay as
    lone surrogates (surrogateescape), for the message contract to refuse."""
    return latin1.encode("latin-1").decode("utf-8", "surrogateescape")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HttpError(400, "bad_request", "the Content-Length header is not a "
                            "number") from None
        if size > limit:
            raise HttpError(413, "too_large", f"request body is {size} bytes; the limit is "
                            f"{limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "too_large", f"request body is more than {limit} bytes; "
                                f"the limit is {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client's doing, not ours: a 4xx nobody reads, counted and logged as such.
        expected = f"of {declared} " if declared is not None else ""
        raise HttpError(400, "client_disconnected", f"the client disconnected before sending "
                        f"the whole body ({size} {expected}bytes received); nothing was "
                        "queued") from None
    return b"".join(chunks)


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, None without the header (else 401)."""
    auth = request.headers.get("authorization")
    if auth is None:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise HttpError(401, "token_required", "the Authorization header must be "
                        "'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
    return value.strip()
