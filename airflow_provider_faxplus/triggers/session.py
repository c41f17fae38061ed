"""What the triggers share in an event loop: one aiohttp session per connection identity (held through
a lease), the async HTTP exchange, the connection read and the OAuth2 access token. The trigger modules
(``outbox``, ``outbox_poll``, ``outbox_events``) build on it and never on each other's internals."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import os
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from airflow_provider_faxplus import oauth, protocol, redaction
from airflow_provider_faxplus.config import (
    FaxPlusConfig,
    TlsSettings,
    config_from_airflow_connection,
    proxy_for,
    tls_settings,
)
from airflow_provider_faxplus.exceptions import FaxPlusRequestError
from airflow_provider_faxplus.models import OutboxFax

log = logging.getLogger(__name__)

# TCP connections per shared session: all triggers of one connection in one triggerer share the pool.
POOL_MAX_CONNECTIONS = 32


class _Lease:
    def __init__(self, session: aiohttp.ClientSession, proxy: str | None, tls: TlsSettings) -> None:
        self.session = session
        self.proxy = proxy
        self.tls = tls
        self.holders = 0


def environment_proxy(url: str) -> str | None:
    """The proxy for ``url``, by the rule the hook follows too (:func:`config.proxy_for`), read once per
    session: never one for a loopback or plain-http base URL.

    With ``trust_env=True`` aiohttp reads the environment and ``~/.netrc`` in a worker thread on every
    request, which dominated the trigger's cost with thousands of triggers.
    """
    return proxy_for(url)


_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], _Lease]] = (
    weakref.WeakKeyDictionary()
)


# Building an SSL context loads the CA store (~25 ms on the event loop): one per CA setting and file
# version, and none where nothing is fetched over https.
_SSL_CONTEXTS: dict[tuple[TlsSettings, float | None], ssl.SSLContext] = {}


def _ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    try:
        version = os.stat(tls.ca_bundle).st_mtime if tls.ca_bundle else None
    except OSError:
        version = None  # ssl_context() names the problem
    key = (tls, version)
    context = _SSL_CONTEXTS.get(key)
    if context is None:
        context = _SSL_CONTEXTS[key] = tls.ssl_context()
    return context


def _uses_https(config: FaxPlusConfig) -> bool:
    """Whether any request of this connection goes over https (the API, or the token endpoint)."""
    urls = [config.base_url, config.token_url] if config.uses_oauth_refresh else [config.base_url]
    return any(url.lower().startswith("https:") for url in urls)


def _new_session(config: FaxPlusConfig, tls: TlsSettings) -> aiohttp.ClientSession:
    # Certificates are checked by the same rule as the hook's (config.tls_settings); a CA directory
    # works as it does with requests (capath).
    verify = tls.verify and _uses_https(config)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=POOL_MAX_CONNECTIONS, ssl=_ssl_context(tls) if verify else False
        ),
        timeout=aiohttp.ClientTimeout(total=config.timeout),
        trust_env=False,
    )


def session_key(config: FaxPlusConfig) -> tuple[Any, ...]:
    """What makes two connections one identity: the same session, the same account polls."""
    return (
        config.base_url,
        hashlib.sha256(config.token.encode()).hexdigest(),
        config.client_id,
        tls_settings(config),
        environment_proxy(config.base_url),
        config.timeout,
    )


@asynccontextmanager
async def shared_session(config: FaxPlusConfig) -> AsyncIterator[_Lease]:
    """The event loop's session for this connection, shared by every trigger holding a lease on it;
    closed when the last one lets go."""
    loop = asyncio.get_running_loop()
    tls = tls_settings(config)
    proxy = environment_proxy(config.base_url)
    key = session_key(config)
    leases = _SESSIONS.setdefault(loop, {})
    lease = leases.get(key)
    if lease is None or lease.session.closed:
        lease = leases[key] = _Lease(_new_session(config, tls), proxy, tls)
    lease.holders += 1
    try:
        yield lease
    finally:
        lease.holders -= 1
        if lease.holders == 0 and leases.get(key) is lease:
            del leases[key]
            await lease.session.close()


async def _exchange(
    lease: _Lease,
    config: FaxPlusConfig,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    data: bytes | None,
    proxy: str | None,
    transport_error: Callable[[str], FaxPlusRequestError],
    tls_error: Callable[[str], FaxPlusRequestError],
    max_bytes: int,
    too_large: Callable[[int], FaxPlusRequestError],
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange on the shared session; failures become the caller's errors (as the hook's).
    An answer over ``max_bytes`` (decompressed) is refused unread past the limit: ``too_large(status)``."""
    try:
        async with lease.session.request(
            method, url, headers=headers, data=data, allow_redirects=False, proxy=proxy
        ) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(response.status)
                chunks.append(chunk)
            return response.status, dict(response.headers), b"".join(chunks)
    except TimeoutError:
        raise transport_error(f"no answer within {config.timeout:g} s") from None
    except aiohttp.ClientError as exc:
        # A client library's message can quote what was sent (a header, a URL): redacted all the same.
        reason = redaction.for_config(config)(f"{type(exc).__name__}: {exc}", 300)
        if protocol.is_certificate_failure(exc):
            raise tls_error(reason) from None
        raise transport_error(reason) from None


async def fetch_outbox_fax(
    lease: _Lease, config: FaxPlusConfig, outbox_fax_id: str, user_id: str, token: str | None = None
) -> OutboxFax:
    """One *Get outgoing fax*, no retries: the trigger's poll loop does the waiting. ``token``: the
    access token to send (default: the connection's)."""
    call = protocol.get_outbox_fax_call(config, outbox_fax_id, user_id)
    fax_id = call.outbox_fax_id
    headers = {**call.headers, "Authorization": f"Bearer {token or config.token}"}
    status, response_headers, body = await _exchange(
        lease,
        config,
        call.method,
        call.url,
        headers=headers,
        data=None,
        proxy=lease.proxy,
        transport_error=lambda reason: protocol.transport_error(call, reason),
        tls_error=lambda reason: protocol.tls_error(call, lease.tls, reason),
        max_bytes=call.operation.max_answer_bytes,
        too_large=lambda status: protocol.answer_too_large(
            call.operation.name, call.method, call.path, status, call.operation.max_answer_bytes, fax_id
        ),
    )
    log.debug("%s %s -> HTTP %d (%d bytes)", call.method, call.path, status, len(body))
    return protocol.parse_get_response(config, call, status, response_headers, body)


async def fetch_token_grant(lease: _Lease, config: FaxPlusConfig, refresh_token: str) -> oauth.TokenGrant:
    """One refresh at the token endpoint, no retries (the poll loop backs off on transient errors)."""
    call = oauth.refresh_call(config, refresh_token)
    status, response_headers, body = await _exchange(
        lease,
        config,
        "POST",
        call.url,
        headers=dict(call.headers),
        data=call.body,
        proxy=proxy_for(config.token_url),
        transport_error=lambda reason: oauth.transport_error(call, reason),
        tls_error=lambda reason: oauth.tls_error(call, lease.tls, reason),
        max_bytes=oauth.MAX_TOKEN_ANSWER_BYTES,
        too_large=lambda status: oauth.too_large(call, status),
    )
    grant = oauth.parse_token_response(call, status, response_headers, body)
    log.info("Fax.Plus OAuth2 access token refreshed at %s", call.describe())
    return grant


async def access_token(lease: _Lease, config: FaxPlusConfig) -> str:
    """The connection's token, or with OAuth2 refresh the process's current access token (one refresh
    in flight per event loop for every trigger of the same identity)."""
    if not config.uses_oauth_refresh:
        return config.token

    async def refresh(refresh_token: str) -> oauth.TokenGrant:
        # Shared by every trigger of the identity: it holds a lease of its own, so the session stays
        # open if the trigger that started it is cancelled (the others still wait on it).
        async with shared_session(config) as own:
            return await fetch_token_grant(own, config, refresh_token)

    return await oauth.source_for(config).token_async(refresh)


_LOADING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[FaxPlusConfig]]] = (
    weakref.WeakKeyDictionary()
)


async def _read_connection(conn_id: str) -> FaxPlusConfig:
    # Async helpers only: the sync get_connection on the event loop can deadlock the triggerer.
    from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson

    conn = await get_async_connection(conn_id)
    extra = await get_async_extra_dejson(conn)
    config = config_from_airflow_connection(conn_id, conn, extra)
    # A bad CA bundle or proxy setting is a configuration error, found before the first poll.
    tls = tls_settings(config)
    if tls.verify and _uses_https(config):
        _ssl_context(tls)
    environment_proxy(config.base_url)
    if config.uses_oauth_refresh:
        environment_proxy(config.token_url)
    await oauth.amask(
        config.token,
        config.client_secret,
        config.refresh_token,
        client_id=config.client_id,
        client_secret=config.client_secret,
    )
    return config


async def load_connection(conn_id: str) -> FaxPlusConfig:
    """The connection, read once for all triggers that ask at the same moment (a triggerer restart
    starts thousands together); nothing is kept once the read completes, so a rotated token is seen."""
    loop = asyncio.get_running_loop()
    pending = _LOADING.setdefault(loop, {})
    future = pending.get(conn_id)
    if future is None:
        # Shared by every trigger asking now: its log lines are the triggerer's (an empty context).
        future = pending[conn_id] = loop.create_task(_read_connection(conn_id), context=contextvars.Context())
        future.add_done_callback(lambda _: pending.pop(conn_id, None))
    return await asyncio.shield(future)


def _redacted(text: str, config: FaxPlusConfig | None) -> str:
    return redaction.for_config(config)(text, 500) if config is not None else text[:500]


async def send_call(
    lease: _Lease, config: FaxPlusConfig, call: protocol.ApiCall, token: str
) -> tuple[int, dict[str, str], bytes]:
    """One exchange of a built :class:`protocol.ApiCall` (no body) with the access token ``token``;
    parse the answer with the call's own sans-I/O parser."""
    status, headers, body = await _exchange(
        lease,
        config,
        call.method,
        call.url,
        headers={**call.headers, "Authorization": f"Bearer {token}"},
        data=call.body,
        proxy=lease.proxy,
        transport_error=lambda reason: protocol.transport_error(call, reason),
        tls_error=lambda reason: protocol.tls_error(call, lease.tls, reason),
        max_bytes=call.operation.max_answer_bytes,
        too_large=lambda status: protocol.answer_too_large(
            call.operation.name, call.method, call.path, status, call.operation.max_answer_bytes
        ),
    )
    log.debug("%s %s -> HTTP %d (%d bytes)", call.method, call.path, status, len(body))
    return status, headers, body
