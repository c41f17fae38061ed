"""OAuth2 for Fax.Plus: token requests without I/O, and the process-wide access-token cache.

With ``client_id``, ``client_secret`` and ``refresh_token`` in the connection, access tokens come from the
token endpoint (``grant_type=refresh_token``, form body, HTTP Basic ``client_id:client_secret``). One
:class:`TokenSource` per OAuth2 identity per process holds the current access token: every hook (thread)
and every trigger (event loop) of that identity shares it and at most one refresh is in flight. The
identity is a hash of the token URL, client id and secrets, never the secrets themselves.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from airflow_provider_faxplus import protocol
from airflow_provider_faxplus.config import FaxPlusConfig, TlsSettings, has_control_chars, safe_url
from airflow_provider_faxplus.exceptions import (
    FaxPlusAPIError,
    FaxPlusAuthError,
    FaxPlusRateLimitError,
    FaxPlusRequestError,
    FaxPlusResponseError,
    FaxPlusServerError,
    FaxPlusTLSError,
    FaxPlusTransportError,
)
from airflow_provider_faxplus.protocol import RETRYABLE_STATUSES, is_permanent, parse_retry_after
from airflow_provider_faxplus.redaction import MAX_SCANNED_CHARS, Redactor, basic_credentials, mask_forms

log = logging.getLogger(__name__)

LOGIN_URL = "https://accounts.fax.plus/login"
TOKEN_OPERATION = "OAuth2 token request"  # noqa: S105 - a name, not a secret
# Fax.Plus access tokens last an hour; used when an answer has no expires_in.
DEFAULT_EXPIRES_IN = 3600.0
# A token is renewed this long before it expires (at most a fifth of its life, for short-lived tokens).
REFRESH_MARGIN = 60.0
# A refused client secret or refresh token is remembered this long: other callers fail without a request.
PERMANENT_FAILURE_MEMORY = 60.0
_MAX_ERROR_CHARS = 200
# A token answer is a small JSON object; anything larger is refused unread past this.
MAX_TOKEN_ANSWER_BYTES = 64 << 10
# Earlier access and refresh tokens of an identity still redacted (an answer may echo a refused one).
REMEMBERED_TOKENS = 4


@dataclass(frozen=True)
class TokenCall:
    """One request to the token endpoint, ready to send. Headers and body hold secrets: not in repr."""

    url: str
    grant_type: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False, default=())
    redact: Redactor = field(repr=False, compare=False, default_factory=Redactor)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"

    def describe(self) -> str:
        return f"{TOKEN_OPERATION} (grant_type={self.grant_type}, POST {safe_url(self.url)})"


@dataclass(frozen=True)
class TokenGrant:
    """A token endpoint's answer. ``refresh_token`` is set when the endpoint rotated it."""

    access_token: str = field(repr=False)
    expires_in: float
    refresh_token: str | None = field(default=None, repr=False)


def _token_call(
    token_url: str, client_id: str, client_secret: str, form: dict[str, str], secrets: tuple[str, ...]
) -> TokenCall:
    headers = {
        "Authorization": f"Basic {basic_credentials(client_id, client_secret)}",
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    secrets = (client_secret, *secrets)
    redact = Redactor(secrets, [(client_id, client_secret)])
    return TokenCall(token_url, form["grant_type"], headers, urlencode(form).encode("ascii"), secrets, redact)


def refresh_call(config: FaxPlusConfig, refresh_token: str) -> TokenCall:
    """``grant_type=refresh_token`` for the connection's client."""
    assert config.client_id
    assert config.client_secret
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return _token_call(config.token_url, config.client_id, config.client_secret, form, (refresh_token,))


def authorization_code_call(
    token_url: str, client_id: str, client_secret: str, code: str, redirect_uri: str
) -> TokenCall:
    """``grant_type=authorization_code``: the one exchange after the browser step."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    return _token_call(token_url, client_id, client_secret, form, (code,))


def authorization_url(client_id: str, redirect_uri: str, login_url: str = LOGIN_URL) -> str:
    """Where a person signs in and allows the client; Fax.Plus then redirects with ``?code=...``."""
    query = urlencode(
        {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": "all"}
    )
    return f"{login_url}?{query}"


def _fields_hint(error: str | None) -> str:
    if error == "invalid_client":
        return "The client was refused: check the connection's client_id and client_secret (and token_url)"
    if error == "invalid_grant":
        return (
            "The refresh token (or code) was refused: it was revoked, already used, or belongs to another "
            "client; run faxplus-oauth for a new refresh_token and check client_id and token_url"
        )
    return "Check the connection's client_id, client_secret, refresh_token and token_url"


def _failure(
    cls: type[FaxPlusRequestError],
    call: TokenCall,
    message: str,
    status: int,
    error: str | None = None,
    description: str | None = None,
    retry_after: float | None = None,
) -> FaxPlusRequestError:
    return cls(
        message,
        operation=TOKEN_OPERATION,
        method="POST",
        path=call.path,
        status=status,
        error=error,
        description=description,
        retry_after=retry_after,
    )


def _grant(call: TokenCall, decoded: object, size: int) -> TokenGrant:
    access = decoded.get("access_token") if isinstance(decoded, dict) else None
    if not isinstance(decoded, dict) or not isinstance(access, str) or not _usable(access):
        message = f"{call.describe()}: HTTP 200 without a usable access_token ({size} bytes)"
        raise _failure(FaxPlusResponseError, call, message, 200)
    # The answer may echo what the call sent (refresh token, code, client secret) as well as the new token.
    rotated = decoded.get("refresh_token")
    redact = call.redact.adding((access, rotated if isinstance(rotated, str) else None))
    token_type = decoded.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = redact(str(token_type), _MAX_ERROR_CHARS)
        raise _failure(
            FaxPlusResponseError, call, f"{call.describe()}: token_type {shown!r} is not Bearer", 200
        )
    expires = decoded.get("expires_in", DEFAULT_EXPIRES_IN)
    try:
        expires_in = float(expires)
    except (TypeError, ValueError):
        expires_in = math.nan
    if not math.isfinite(expires_in) or expires_in <= 0:
        log.warning(
            "%s: expires_in %s is not a positive number; assuming %g s",
            call.describe(),
            redact(repr(expires), _MAX_ERROR_CHARS),
            DEFAULT_EXPIRES_IN,
        )
        expires_in = DEFAULT_EXPIRES_IN
    return TokenGrant(access, expires_in, rotated if isinstance(rotated, str) and _usable(rotated) else None)


def _usable(token: str) -> bool:
    # A control character would end up in a header (and its message): refused like an empty token.
    return (
        bool(token.strip())
        and token.isascii()
        and token == token.strip()
        and " " not in token
        and not has_control_chars(token)
    )


def parse_token_response(call: TokenCall, status: int, headers: Mapping[str, str], body: bytes) -> TokenGrant:
    """The grant of a successful answer, or the matching exception (never showing a secret)."""
    text = body.decode("utf-8", errors="replace")
    try:
        decoded = json.loads(text) if text else None
    except ValueError:
        decoded = None
    if status == 200:
        return _grant(call, decoded, len(body))
    error = description = None
    if isinstance(decoded, dict):
        error = call.redact(str(decoded["error"]), _MAX_ERROR_CHARS) if "error" in decoded else None
        if "error_description" in decoded or "description" in decoded:
            raw = decoded.get("error_description", decoded.get("description"))
            description = call.redact(str(raw), _MAX_ERROR_CHARS)
    elif text.strip():
        description = call.redact(" ".join(text[:MAX_SCANNED_CHARS].split()), _MAX_ERROR_CHARS)
    said = " ".join(part for part in (error, f"- {description}" if description else None) if part)
    message = f"{call.describe()} failed: HTTP {status}" + (f" {said}" if said else "")
    if status in RETRYABLE_STATUSES:
        cls: type[FaxPlusRequestError] = (
            FaxPlusRateLimitError
            if status == 429
            else FaxPlusServerError
            if status >= 500
            else FaxPlusAPIError
        )
        retry_after = parse_retry_after(_header(headers, "retry-after"))
        raise _failure(cls, call, message, status, error, description, retry_after)
    if 200 < status < 300:
        message += ": expected HTTP 200 with a token"
        raise _failure(FaxPlusResponseError, call, message, status, error, description)
    if status in (400, 401, 403):
        message += f". {_fields_hint(error)}"
        raise _failure(FaxPlusAuthError, call, message, status, error, description)
    if 300 <= status < 400:
        message += (
            ". Redirects are not followed (secrets must not leave the configured host); check the "
            "connection's token_url"
        )
        raise _failure(FaxPlusAPIError, call, message, status, error, description)
    message += ". Check the connection's token_url"
    raise _failure(FaxPlusAPIError, call, message, status, error, description)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def too_large(call: TokenCall, status: int) -> FaxPlusRequestError:
    return protocol.answer_too_large(TOKEN_OPERATION, "POST", call.path, status, MAX_TOKEN_ANSWER_BYTES)


def transport_error(call: TokenCall, reason: str) -> FaxPlusTransportError:
    return FaxPlusTransportError(
        f"{call.describe()} failed: {call.redact(reason, _MAX_ERROR_CHARS)}",
        operation=TOKEN_OPERATION,
        method="POST",
        path=call.path,
    )


def tls_error(call: TokenCall, tls: TlsSettings, reason: str) -> FaxPlusTLSError:
    return FaxPlusTLSError(
        f"{call.describe()} failed: the token endpoint's TLS certificate could not be verified with "
        f"{tls.source} ({call.redact(reason, _MAX_ERROR_CHARS)}). No retry can fix this: check token_url "
        "and the connection's ca_bundle / verify",
        operation=TOKEN_OPERATION,
        method="POST",
        path=call.path,
    )


def is_token_error(exc: BaseException) -> bool:
    """Whether an error came from the token endpoint (not from the API)."""
    return isinstance(exc, FaxPlusRequestError) and exc.operation == TOKEN_OPERATION


def renewal_margin(expires_in: float) -> float:
    return min(REFRESH_MARGIN, expires_in / 5)


def mask(*values: str | None, client_id: str | None = None, client_secret: str | None = None) -> None:
    """Register secrets and their encoded forms (percent-encoding, base64, the Basic credentials of
    ``client_id:client_secret``) with Airflow's log masker (where Airflow runs)."""
    try:
        from airflow.providers.common.compat.sdk import mask_secret
    except ImportError:  # pragma: no cover - outside Airflow
        return
    for form in mask_forms(values, [(client_id or "", client_secret)]):
        mask_secret(form)


async def amask(*values: str | None, client_id: str | None = None, client_secret: str | None = None) -> None:
    """:func:`mask` for the event loop: Airflow 3's ``amask_secret`` tells the supervisor without the sync
    send that can block a loop with a request already in flight; Airflow 2 has none (sync is fine there)."""
    try:
        from airflow.sdk.log import amask_secret
    except ImportError:
        mask(*values, client_id=client_id, client_secret=client_secret)
        return
    for form in mask_forms(values, [(client_id or "", client_secret)]):
        await amask_secret(form)


class TokenSource:
    """The current access token of one OAuth2 identity in this process, renewed shortly before it
    expires; one refresh at a time (a thread lock for hooks, one shared task per event loop for
    triggers). A refresh token rotated by the endpoint is used for later refreshes."""

    def __init__(self, refresh_token: str) -> None:
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refresh_token = refresh_token
        self._access_token: str | None = None
        self._valid_until = 0.0
        self._failure: tuple[float, FaxPlusRequestError] | None = None
        # Tokens issued or replaced lately: redacted from answers that echo them after they are gone.
        self._seen: collections.deque[str] = collections.deque(maxlen=2 * REMEMBERED_TOKENS)
        self._inflight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[str]] = (
            weakref.WeakKeyDictionary()
        )
        self.refreshes = 0

    def valid_token(self) -> str | None:
        """The access token if it is still good for a while, else ``None``."""
        with self._lock:
            if self._access_token and time.monotonic() < self._valid_until:
                return self._access_token
            return None

    def secrets(self) -> tuple[str, ...]:
        """The current refresh token and the access and refresh tokens seen lately."""
        with self._lock:
            return (self._refresh_token, *self._seen)

    def invalidate(self, token: str) -> None:
        """The API refused ``token``: the next caller refreshes (unless someone already has)."""
        with self._lock:
            if self._access_token == token:
                self._access_token = None

    def _remembered_failure(self) -> None:
        with self._lock:
            if self._failure and time.monotonic() - self._failure[0] < PERMANENT_FAILURE_MEMORY:
                raise self._failure[1]

    def _store(self, grant: TokenGrant, sent_at: float, masked: bool = False) -> str:
        if not masked:
            mask(grant.access_token, grant.refresh_token)
        with self._lock:
            self.refreshes += 1
            self._failure = None
            self._access_token = grant.access_token
            self._seen.append(grant.access_token)
            # Counted from when the request was sent: never later than the server's own clock.
            self._valid_until = sent_at + grant.expires_in - renewal_margin(grant.expires_in)
            if grant.refresh_token:
                self._seen.append(self._refresh_token)
                self._refresh_token = grant.refresh_token
            return grant.access_token

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, FaxPlusRequestError) and is_permanent(exc):
            with self._lock:
                self._failure = (time.monotonic(), exc)

    def token_sync(self, fetch: Callable[[str], TokenGrant]) -> str:
        """The access token, refreshed with ``fetch(refresh_token)`` if needed (blocking)."""
        token = self.valid_token()
        if token:
            return token
        with self._refresh_lock:
            token = self.valid_token()
            if token:  # another thread refreshed meanwhile
                return token
            self._remembered_failure()
            sent_at = time.monotonic()
            try:
                grant = fetch(self._refresh_token)
            except BaseException as exc:
                self._fail(exc)
                raise
            return self._store(grant, sent_at)

    async def token_async(self, fetch: Callable[[str], Awaitable[TokenGrant]]) -> str:
        """The access token; every coroutine of the loop that needs a refresh awaits the same one."""
        token = self.valid_token()
        if token:
            return token
        loop = asyncio.get_running_loop()
        future = self._inflight.get(loop)
        if future is None:
            # An empty context: its log lines belong to the triggerer, not to the trigger that
            # happened to start it (Airflow routes a trigger's lines by context variables).
            future = loop.create_task(self._refresh_async(fetch), context=contextvars.Context())
            self._inflight[loop] = future
            future.add_done_callback(lambda done: self._done(loop, done))
        return await asyncio.shield(future)

    def _done(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[str]) -> None:
        if self._inflight.get(loop) is future:
            del self._inflight[loop]
        if not future.cancelled():
            future.exception()  # retrieved: waiters that were cancelled must not leave a warning

    async def _refresh_async(self, fetch: Callable[[str], Awaitable[TokenGrant]]) -> str:
        self._remembered_failure()
        sent_at = time.monotonic()
        try:
            grant = await fetch(self._refresh_token)
        except BaseException as exc:
            self._fail(exc)
            raise
        await amask(grant.access_token, grant.refresh_token)
        return self._store(grant, sent_at, masked=True)


def identity_key(config: FaxPlusConfig) -> str:
    """A hash naming the OAuth2 identity: token URL, client id and secrets (never kept in clear)."""
    parts = (config.token_url, config.client_id or "", config.client_secret or "", config.refresh_token or "")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


_SOURCES: dict[str, TokenSource] = {}
_SOURCES_LOCK = threading.Lock()


def source_for(config: FaxPlusConfig) -> TokenSource:
    """This process's token source for the connection's OAuth2 identity."""
    assert config.refresh_token is not None
    key = identity_key(config)
    with _SOURCES_LOCK:
        source = _SOURCES.get(key)
        if source is None:
            source = _SOURCES[key] = TokenSource(config.refresh_token)
        return source


def issued_secrets(config: FaxPlusConfig) -> tuple[str, ...]:
    """The access and refresh tokens this process holds or held lately for the connection's identity."""
    key = identity_key(config)
    with _SOURCES_LOCK:
        source = _SOURCES.get(key)
    return source.secrets() if source is not None else ()


def _reset_after_fork() -> None:
    global _SOURCES_LOCK
    _SOURCES_LOCK = threading.Lock()
    _SOURCES.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
