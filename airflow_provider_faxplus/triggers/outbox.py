"""OutboxFaxTrigger: waits, in the triggerer, until an outbox fax has left the outbox."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_faxplus import oauth, protocol, redaction
from airflow_provider_faxplus.config import (
    FaxPlusConfig,
    TlsSettings,
    config_from_airflow_connection,
    proxy_for,
    tls_settings,
)
from airflow_provider_faxplus.exceptions import (
    FaxPlusAuthError,
    FaxPlusConfigError,
    FaxPlusError,
    FaxPlusInputError,
    FaxPlusNotFoundError,
    FaxPlusRequestError,
)
from airflow_provider_faxplus.models import OutboxFax
from airflow_provider_faxplus.retry import backoff_seconds
from airflow_provider_faxplus.waiting import (
    Decision,
    WaitPolicy,
    WaitProgress,
    observe_not_found,
    observe_record,
    parse_waiting_statuses,
)

if TYPE_CHECKING:
    from airflow_provider_faxplus.triggers.outbox_poll import AccountPoll

log = logging.getLogger(__name__)

# TCP connections per shared session: all triggers of one connection in one triggerer share the pool.
POOL_MAX_CONNECTIONS = 32
# Doubling the poll interval (exponential_backoff) stops here: 2**30 poke intervals is beyond any timeout.
MAX_BACKOFF_EXPONENT = 30


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


def _new_session(config: FaxPlusConfig, tls: TlsSettings) -> aiohttp.ClientSession:
    # Certificates are checked by the same rule as the hook's (config.tls_settings); a CA directory
    # works as it does with requests (capath).
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=POOL_MAX_CONNECTIONS, ssl=tls.ssl_context() if tls.verify else False
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
    return await oauth.source_for(config).token_async(
        lambda refresh_token: fetch_token_grant(lease, config, refresh_token)
    )


class _Reconnect(Exception):
    """The connection changed after a 401: poll again with its new settings."""

    def __init__(self, config: FaxPlusConfig) -> None:
        super().__init__("the connection changed")
        self.config = config


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
    if tls.verify:
        tls.ssl_context()
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
        future = pending[conn_id] = asyncio.ensure_future(_read_connection(conn_id))
        future.add_done_callback(lambda _: pending.pop(conn_id, None))
    return await asyncio.shield(future)


def _error_kind(exc: FaxPlusRequestError) -> str:
    if isinstance(exc, FaxPlusAuthError):
        return "auth"
    return "rejected" if protocol.is_permanent(exc) else "api"


def _redacted(text: str, config: FaxPlusConfig | None) -> str:
    return redaction.for_config(config)(text, 500) if config is not None else text[:500]


class OutboxFaxTrigger(BaseTrigger):
    """Polls *Get outgoing fax* every ``poke_interval`` seconds until the fax has left the outbox.

    Yields exactly one event, whatever happens short of cancellation: ``{"status": "success", "result":
    {...}}``, ``{"status": "checkpoint", "progress": {...}, "deferred_at": ...}`` when it sees the fax for
    the first time (the sensor records that and defers again: Airflow keeps a trigger's kwargs from the
    deferral on, never what a running trigger learned), or ``{"status": "error", "kind": ..., "message":
    ...}``, where ``kind`` is ``auth``, ``rejected`` (another 3xx/4xx answer), ``config``, ``input`` or
    ``never_seen``, which no retry can fix, or ``api`` (a malformed response) or ``unexpected`` (any
    other exception), which a retry of the task may. Transient errors (429, 5xx, network) back off
    exponentially, never faster than ``poke_interval`` and never sooner than ``Retry-After``.
    The token is never part of the serialized kwargs: the connection is read again in the triggerer.

    With ``shared_poll`` (the default), the triggers of one connection and ``user_id`` in a triggerer
    share one *List outgoing faxes* request per tick (see ``outbox_poll``); a fax absent from the list
    waits within its grace period, and any verdict on absence is confirmed by one *Get outgoing fax*.
    A trigger alone on its account, or on an account whose list the API refuses, polls its own fax.
    ``shared_poll=False``: every look is its own *Get outgoing fax*.
    """

    def __init__(
        self,
        *,
        outbox_fax_id: str,
        user_id: str = "self",
        faxplus_conn_id: str = "faxplus_default",
        poke_interval: float = 60.0,
        waiting_statuses: list[str] | None = None,
        not_found_grace_period: float = 60.0,
        fail_if_never_seen: bool = True,
        progress: dict[str, Any] | None = None,
        exponential_backoff: bool = False,
        max_wait: float | None = None,
        deferred_at: float | None = None,
        shared_poll: bool = True,
    ) -> None:
        super().__init__()
        self.outbox_fax_id = outbox_fax_id
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.poke_interval = float(poke_interval)
        self.waiting_statuses = sorted(s.value for s in parse_waiting_statuses(waiting_statuses))
        self.not_found_grace_period = float(not_found_grace_period)
        self.fail_if_never_seen = bool(fail_if_never_seen)
        # No progress: the task started in the triggerer (the sensor's start_from_trigger) and this
        # trigger makes the first look; the grace period runs from it.
        self.first_look_here = not progress
        self.progress = WaitProgress.from_dict(progress) if progress else WaitProgress(started_at=time.time())
        self.exponential_backoff = bool(exponential_backoff)
        self.max_wait = None if max_wait is None else float(max_wait)
        self.deferred_at = time.time() if deferred_at is None else float(deferred_at)
        self.shared_poll = bool(shared_poll)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "outbox_fax_id": self.outbox_fax_id,
                "user_id": self.user_id,
                "faxplus_conn_id": self.faxplus_conn_id,
                "poke_interval": self.poke_interval,
                "waiting_statuses": list(self.waiting_statuses),
                "not_found_grace_period": self.not_found_grace_period,
                "fail_if_never_seen": self.fail_if_never_seen,
                "progress": self.progress.to_dict(),
                "exponential_backoff": self.exponential_backoff,
                "max_wait": self.max_wait,
                "deferred_at": self.deferred_at,
                "shared_poll": self.shared_poll,
            },
        )

    async def _load_config(self) -> FaxPlusConfig:
        return await load_connection(self.faxplus_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Exactly one event: every exception but cancellation becomes an error event."""
        config: FaxPlusConfig | None = None
        yielded = False
        try:
            if self.first_look_here:
                self._start_without_a_worker_look()
            config = await self._load_config()
            policy = WaitPolicy(
                waiting_statuses=parse_waiting_statuses(self.waiting_statuses),
                not_found_grace_period=self.not_found_grace_period,
                fail_if_never_seen=self.fail_if_never_seen,
            )
            renewed = False
            while True:
                try:
                    async with self._hold(config) as (lease, poll):
                        async for event in self._poll(lease, config, policy, renewed, poll):
                            yielded = True
                            yield event
                            return
                except _Reconnect as reconnect:
                    config, renewed = reconnect.config, True
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            if yielded:  # e.g. closing the session after the event: the verdict stands
                log.warning("After the event: %s", _redacted(f"{type(exc).__name__}: {exc}", config))
                return
            yield TriggerEvent(self._error_event(exc, config))

    def _start_without_a_worker_look(self) -> None:
        try_number = getattr(self.task_instance, "try_number", None) or 1
        if try_number > 1:
            # Earlier tries wrote what they saw to the task state store, which a trigger cannot read.
            self.progress.forget_earlier_looks(
                f"this is try {try_number}, started in the triggerer, which cannot read what earlier tries "
                "saw (the task state store is served to workers only)"
            )
        log.info(
            "Started in the triggerer (start_from_trigger), try %d: the first look at outbox fax %r is "
            "this trigger's",
            try_number,
            self.outbox_fax_id,
        )

    @asynccontextmanager
    async def _hold(self, config: FaxPlusConfig) -> AsyncIterator[tuple[_Lease, AccountPoll | None]]:
        """The shared session, and with ``shared_poll`` the account's poll on it."""
        if not self.shared_poll:
            async with shared_session(config) as lease:
                yield lease, None
            return
        from airflow_provider_faxplus.triggers.outbox_poll import account_poll

        async with account_poll(config, self.user_id) as poll:
            yield poll.lease, poll

    async def _look(
        self,
        lease: _Lease,
        config: FaxPlusConfig,
        policy: WaitPolicy,
        token: str,
        poll: AccountPoll | None,
        due: float,
        interval: float,
    ) -> tuple[Decision, float]:
        """One look at the fax: its decision, and the moment the next interval counts from. With a shared
        poll the account's list answers; where absence would decide (the fax left, or was never seen
        after the grace period), one *Get outgoing fax* confirms. Raises the GET's errors (a not-found
        included) and the list's."""
        from airflow_provider_faxplus.triggers.outbox_poll import ListUnavailable

        confirming = False
        if poll is not None and poll.shared:
            try:
                snapshot = await poll.snapshot(due=due, interval=interval)
            except ListUnavailable:
                pass  # the poll said so once; this look and the next are GETs
            else:
                record = snapshot.records.get(self.outbox_fax_id)
                now = time.time()
                if record is not None:
                    return observe_record(
                        record, self.progress, policy, now, self.user_id
                    ), snapshot.started_at
                absent = observe_not_found(self.outbox_fax_id, self.progress, policy, now, self.user_id)
                if absent.action == "wait":  # never seen, within the grace period: no request
                    return absent, snapshot.started_at
                confirming = True
        if not confirming:
            await asyncio.sleep(max(0.0, due - time.time()))
        record = await fetch_outbox_fax(lease, config, self.outbox_fax_id, self.user_id, token)
        # The next GET is an interval after this answer, as ever; a list look counts from its tick.
        now = time.time()
        return observe_record(record, self.progress, policy, now, self.user_id), now

    async def _renew_after_401(self, config: FaxPlusConfig, token: str) -> bool:
        """After a 401: with a refresh token, drop the refused access token (the next poll refreshes,
        once for all triggers of the identity); without one, read the connection once more and poll
        with it if it changed (raises :class:`_Reconnect`). Whether a new try is worth it."""
        if config.uses_oauth_refresh:
            oauth.source_for(config).invalidate(token)
            log.info("Fax.Plus refused the OAuth2 access token (HTTP 401): refreshing it once")
            return True
        try:
            fresh = await self._load_config()
        except FaxPlusError as exc:
            log.warning("Reading connection %r again after HTTP 401 failed: %s", self.faxplus_conn_id, exc)
            return False
        if fresh == config:
            return False
        log.info("Connection %r changed since it was read: polling with it", self.faxplus_conn_id)
        raise _Reconnect(fresh)

    def _error_event(self, exc: Exception, config: FaxPlusConfig | None) -> dict[str, Any]:
        from airflow.exceptions import AirflowNotFoundException

        if isinstance(exc, AirflowNotFoundException):
            message = (
                f"the connection {self.faxplus_conn_id!r} is not visible to the triggerer: define it where "
                "the triggerer can read it (the metadata database, a secrets backend, or an "
                f"AIRFLOW_CONN_{self.faxplus_conn_id.upper()} variable in the triggerer's environment), "
                "not only in the worker's"
            )
            return {"status": "error", "kind": "config", "message": message}
        if isinstance(exc, FaxPlusError) and config is None:  # the connection is unusable
            return {"status": "error", "kind": "config", "message": str(exc)}
        if isinstance(exc, FaxPlusConfigError):
            return {"status": "error", "kind": "config", "message": str(exc)}
        log.exception("OutboxFaxTrigger for outbox fax %r failed unexpectedly", self.outbox_fax_id)
        message = _redacted(
            f"the trigger for outbox fax {self.outbox_fax_id!r} failed unexpectedly: {type(exc).__name__}: "
            f"{exc}",
            config,
        )
        return {"status": "error", "kind": "unexpected", "message": message}

    def _next_interval(self, looks: int) -> float:
        """``poke_interval``, or with ``exponential_backoff`` doubled after each look, capped by
        ``max_wait`` (as a poking sensor with those settings would)."""
        if not self.exponential_backoff:
            return self.poke_interval
        interval = self.poke_interval * 2.0 ** min(max(looks - 1, 0), MAX_BACKOFF_EXPONENT)
        return interval if self.max_wait is None else min(interval, max(self.max_wait, self.poke_interval))

    async def _poll(
        self,
        lease: _Lease,
        config: FaxPlusConfig,
        policy: WaitPolicy,
        renewed: bool = False,
        poll: AccountPoll | None = None,
    ) -> AsyncIterator[TriggerEvent]:
        """Poll until there is an event to yield (exactly one). ``renewed``: a 401 already made it
        refresh or re-read the connection, and no call has succeeded since."""
        failures = 0
        looks = 0
        logged: tuple[object, ...] | None = None
        # The first look may take a list answer up to one interval old; a GET goes at once.
        due = time.time() - self.poke_interval
        while True:
            decision: Decision
            token = ""
            seen_before = self.progress.ever_seen
            interval = self._next_interval(looks)
            try:
                token = await access_token(lease, config)
                decision, answered_at = await self._look(lease, config, policy, token, poll, due, interval)
                renewed = False
            except FaxPlusNotFoundError:
                answered_at = time.time()
                renewed = False
                decision = observe_not_found(
                    self.outbox_fax_id, self.progress, policy, time.time(), self.user_id
                )
            except FaxPlusRequestError as exc:
                if (
                    isinstance(exc, FaxPlusAuthError)
                    and exc.status == 401
                    and not oauth.is_token_error(exc)
                    and not renewed
                ):
                    renewed = True
                    if await self._renew_after_401(config, token):
                        continue
                if not protocol.is_retryable(exc):
                    yield TriggerEvent({"status": "error", "kind": _error_kind(exc), "message": str(exc)})
                    return
                failures += 1
                wait = max(
                    self.poke_interval, backoff_seconds(failures, config.initial_backoff, exc.retry_after)
                )
                log.warning("Transient error #%d, polling again in %.1f s: %s", failures, wait, exc)
                await asyncio.sleep(wait)
                due = time.time()
                continue
            except FaxPlusInputError as exc:
                yield TriggerEvent({"status": "error", "kind": "input", "message": str(exc)})
                return
            failures = 0
            looks += 1
            if decision.action == "left":
                log.info("%s", decision.message)
                yield TriggerEvent(
                    {"status": "success", "message": decision.message, "result": decision.result}
                )
                return
            if decision.action == "fail":
                yield TriggerEvent({"status": "error", "kind": "never_seen", "message": decision.message})
                return
            if self.progress.ever_seen is True and seen_before is not True:
                # The first sighting: hand it to the sensor, which defers again with it in the kwargs,
                # the only part of a trigger that Airflow keeps when a triggerer restarts.
                log.info("%s; first sighting, checkpointed through the sensor", decision.message)
                yield TriggerEvent(
                    {
                        "status": "checkpoint",
                        "message": decision.message,
                        "progress": self.progress.to_dict(),
                        "deferred_at": self.deferred_at,
                    }
                )
                return
            # INFO when what we know changes, DEBUG for the same again: a triggerer may hold thousands.
            # A status the spec does not know is a WARNING, once per fax and status.
            known = (decision.action, self.progress.last_status, self.progress.ever_seen)
            level = logging.INFO if known != logged else logging.DEBUG
            log.log(logging.WARNING if decision.unknown_status else level, "%s", decision.message)
            logged = known
            due = answered_at + self._next_interval(looks)
