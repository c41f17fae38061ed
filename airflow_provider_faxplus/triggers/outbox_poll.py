"""The account's outbox poll: *List outgoing faxes* answers, shared by the triggers of one event loop.

One :class:`AccountPoll` per event loop, connection identity (the shared session's key) and ``user_id``,
held while triggers use it. Callers ask for a snapshot no older than a moment (``due``); all callers of a
tick share one list request, and the poll never sends more than one list request per the shortest
interval of its waiting callers. The answer is decoded a chunk of records at a time, the event loop
running between chunks, and each record is parsed into an ``OutboxFax`` on first use: a triggerer waiting
on a few faxes of a 10,000-fax outbox parses those few.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_faxplus import protocol, redaction, send
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import (
    FaxPlusRequestError,
    FaxPlusResponseError,
    FaxPlusTransportError,
)
from airflow_provider_faxplus.models import OutboxFax
from airflow_provider_faxplus.triggers.session import (
    _exchange,
    _Lease,
    access_token,
    session_key,
    shared_session,
)

log = logging.getLogger(__name__)

# Answers that mean the API refuses the list operation itself: fall back to per-fax GETs.
LIST_UNAVAILABLE_STATUSES = frozenset({403, 404, 405})
# A request sent this much before a caller's due still serves it (callers of one interval fall onto one
# tick even when they ask a little apart), at most a tenth of the caller's interval.
MAX_TOLERANCE = 0.5
# A tick's answer wakes this many waiters per loop iteration: each then reads its record (parsed on first
# use, ~50 µs), and thousands woken in one iteration stalled the triggerer's loop for their sum.
SETTLE_SLICE = 100
# Records decoded between two turns of the event loop: ~600 bytes each, a few ms per chunk.
DECODE_CHUNK = 200


def tolerance(interval: float) -> float:
    return min(MAX_TOLERANCE, max(interval, 0.0) / 10)


class OutboxRecords(Mapping[str, OutboxFax]):
    """The records of one list answer by outbox id, each parsed on first use.

    A record that does not parse raises :class:`FaxPlusResponseError` naming it, for the caller that
    asks for that id alone (as a malformed *Get outgoing fax* answer would).
    """

    def __init__(
        self,
        call: protocol.ApiCall,
        status: int,
        raw: dict[str, tuple[int, Any]],
        redact: Callable[[str], str],
    ) -> None:
        self._call = call
        self._status = status
        self._redact = redact
        # By id: the record's position in the answer, and the decoded record or, once parsed (or equal to
        # the last answer's parsed record), its OutboxFax.
        self._raw = raw

    def __getitem__(self, outbox_fax_id: str) -> OutboxFax:
        index, value = self._raw[outbox_fax_id]
        if isinstance(value, OutboxFax):
            return value
        record = send.parse_list_record(self._call, self._status, index, value, self._redact)
        self._raw[outbox_fax_id] = (index, record)
        return record

    def parsed(self, outbox_fax_id: str) -> OutboxFax | None:
        """The record if it has been parsed already (never parses)."""
        entry = self._raw.get(outbox_fax_id)
        return entry[1] if entry is not None and isinstance(entry[1], OutboxFax) else None

    def __contains__(self, outbox_fax_id: object) -> bool:
        return outbox_fax_id in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@dataclass(frozen=True)
class OutboxSnapshot:
    """One answer of *List outgoing faxes*: the whole outbox of ``user_id``."""

    user_id: str
    started_at: float  # time.monotonic() when the request was sent: a wall-clock step moves no schedule
    records: Mapping[str, OutboxFax]  # by outbox fax id


class ListUnavailable(Exception):
    """The API refuses the list operation (403 for a narrower scope, 404/405 from a server without it):
    poll each fax with *Get outgoing fax* instead."""

    def __init__(self, cause: FaxPlusRequestError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class MalformedListAnswer(FaxPlusTransportError):
    """A list answer that could not be understood (an HTML page from a proxy, a cut body): a transient
    failure of the poll, retried after a back-off by every waiter alike, never a verdict on any fax."""

    def __init__(self, cause: FaxPlusResponseError) -> None:
        super().__init__(
            str(cause),
            operation=cause.operation,
            method=cause.method,
            path=cause.path,
            status=cause.status,
            error=cause.error,
            description=cause.description,
        )


@dataclass(eq=False)
class _Waiter:
    due: float
    interval: float
    future: asyncio.Future[OutboxSnapshot]

    @property
    def ripe_at(self) -> float:
        return self.due - tolerance(self.interval)


@dataclass(eq=False)
class _Request:
    started_at: float
    futures: list[asyncio.Future[OutboxSnapshot]] = field(default_factory=list)


class AccountPoll:
    """The shared list poll of one account; see :func:`account_poll`."""

    def __init__(self, lease: _Lease, config: FaxPlusConfig, user_id: str) -> None:
        self.lease = lease
        self.config = config
        self.user_id = user_id
        self.holders = 0
        # Set once the API refused the list: every holder polls its own fax from then on.
        self.unavailable: ListUnavailable | None = None
        self.requests_sent = 0
        self._last: OutboxSnapshot | None = None
        self._last_sent = -math.inf
        self._inflight: _Request | None = None
        self._waiters: dict[_Waiter, None] = {}  # ordered; removal in O(1), not O(waiters)
        self._changed = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._skipped_warned = False

    @property
    def shared(self) -> bool:
        """Whether a look should ask the list: another trigger holds the poll too (one GET of a lone
        fax is smaller than the whole outbox), and the API has not refused the list."""
        return self.holders > 1 and self.unavailable is None

    async def snapshot(self, *, due: float, interval: float) -> OutboxSnapshot:
        """The first list answer whose request was sent at or after ``due`` (``time.monotonic()``, less a
        small tolerance), shared with every other waiter of this account; at most one list request per
        ``interval`` (the shortest of the waiting callers') for them all.

        :raises FaxPlusRequestError: the list call failed (the same error for every waiter of it).
        :raises ListUnavailable: the API refuses the list operation.
        """
        if self.unavailable is not None:
            raise ListUnavailable(self.unavailable.cause)
        ripe_at = due - tolerance(interval)
        if self._last is not None and self._last.started_at >= ripe_at:
            return self._last
        future: asyncio.Future[OutboxSnapshot] = asyncio.get_running_loop().create_future()
        if self._inflight is not None and self._inflight.started_at >= ripe_at:
            self._inflight.futures.append(future)
            return await future
        waiter = _Waiter(due, interval, future)
        self._waiters[waiter] = None
        self._changed.set()
        if self._driver is None or self._driver.done():
            # The driver serves every holder: its log lines are the triggerer's, not those of the
            # trigger that happened to start it (Airflow routes a trigger's lines by context variables).
            self._driver = asyncio.get_running_loop().create_task(
                self._drive(), context=contextvars.Context()
            )
        try:
            return await future
        finally:
            if waiter in self._waiters:  # cancelled before its tick
                del self._waiters[waiter]
                self._changed.set()

    async def _drive(self) -> None:
        """Send the list request of each tick while anyone waits."""
        while self._waiters:
            now = time.monotonic()
            send_at = max(
                min(waiter.ripe_at for waiter in self._waiters),
                self._last_sent + min(waiter.interval for waiter in self._waiters),
            )
            if send_at > now:
                self._changed.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), send_at - now)
                continue
            started_at = time.monotonic()
            request = _Request(started_at)
            ripe = [waiter for waiter in self._waiters if waiter.ripe_at <= started_at]
            for waiter in ripe:
                del self._waiters[waiter]
            request.futures.extend(waiter.future for waiter in ripe)
            self._inflight = request
            self._last_sent = started_at
            outcome: OutboxSnapshot | BaseException
            try:
                outcome = await self._list(started_at)
            except ListUnavailable as exc:
                self._refused(exc)
                # Everyone waiting learns it now; nobody sends another list request.
                request.futures.extend(waiter.future for waiter in self._waiters)
                self._waiters.clear()
                outcome = exc
            except Exception as exc:
                outcome = exc
            else:
                self._last = outcome
            finally:
                self._inflight = None
            await _settle(request, outcome)

    def _refused(self, exc: ListUnavailable) -> None:
        self.unavailable = exc
        log.warning(
            "Fax.Plus refused List outgoing faxes for user %r (%s). The %d trigger(s) waiting on this "
            "account now each send their own Get outgoing fax per poll instead of sharing one list "
            "request per tick: one request per waiting fax per interval. After a 403, a token with the "
            "scope fax:all:read or fax:fax:read allows the list; shared_poll=False on the sensors "
            "silences this.",
            self.user_id,
            exc.cause,
            self.holders,
        )

    async def _list(self, started_at: float) -> OutboxSnapshot:
        call = send.list_outbox_call(self.config, self.user_id)
        token = await access_token(self.lease, self.config)
        self.requests_sent += 1
        status, headers, body = await _exchange(
            self.lease,
            self.config,
            call.method,
            call.url,
            headers={**call.headers, "Authorization": f"Bearer {token}"},
            data=None,
            proxy=self.lease.proxy,
            transport_error=lambda reason: protocol.transport_error(call, reason),
            tls_error=lambda reason: protocol.tls_error(call, self.lease.tls, reason),
            max_bytes=call.operation.max_answer_bytes,
            too_large=lambda status: protocol.answer_too_large(
                call.operation.name, call.method, call.path, status, call.operation.max_answer_bytes
            ),
        )
        log.debug("%s %s -> HTTP %d (%d bytes)", call.method, call.path, status, len(body))
        by_id: dict[str, tuple[int, Any]] = {}
        skipped: list[int] = []
        last = self._last.records if self._last is not None else None
        previous = last if isinstance(last, OutboxRecords) else None
        try:
            for index, record in enumerate(send.iter_list_records(self.config, call, status, headers, body)):
                fax_id = record.get("id") if isinstance(record, dict) else None
                if isinstance(fax_id, str):
                    # A record equal to the one the last answer parsed is that OutboxFax again: no parse,
                    # and the decoded copy is freed at once (10,000 decoded records held until the next
                    # tick are ~250,000 objects for the garbage collector's full passes to walk).
                    before = previous.parsed(fax_id) if previous is not None else None
                    by_id[fax_id] = (index, before if before is not None and before.raw == record else record)
                else:
                    skipped.append(index)
                if index % DECODE_CHUNK == DECODE_CHUNK - 1:
                    await asyncio.sleep(0)  # let the other triggers run
        except FaxPlusResponseError as exc:
            raise MalformedListAnswer(exc) from None
        except FaxPlusRequestError as exc:
            if exc.status in LIST_UNAVAILABLE_STATUSES:
                raise ListUnavailable(exc) from None
            raise
        if skipped:
            # No waiting fax can be one without an id; said once per poll, not every tick.
            log.log(
                logging.DEBUG if self._skipped_warned else logging.WARNING,
                "%s answered %d record(s) without a string id (record #%s), skipped: no waiting fax can "
                "be one of them",
                call.describe(),
                len(skipped),
                ", #".join(str(index) for index in skipped[:10]),
            )
            self._skipped_warned = True
        return OutboxSnapshot(
            self.user_id, started_at, OutboxRecords(call, status, by_id, redaction.for_config(self.config))
        )

    async def close(self) -> None:
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            with suppress(asyncio.CancelledError):
                await self._driver
        self._driver = None


async def _settle(request: _Request, outcome: OutboxSnapshot | BaseException) -> None:
    """Answer the request's waiters, :data:`SETTLE_SLICE` per loop iteration."""
    for start in range(0, len(request.futures), SETTLE_SLICE):
        if start:
            await asyncio.sleep(0)  # the slice just woken runs before the next is woken
        for future in request.futures[start : start + SETTLE_SLICE]:
            if future.done():  # its waiter was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


_POLLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], AccountPoll]] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def account_poll(config: FaxPlusConfig, user_id: str) -> AsyncIterator[AccountPoll]:
    """The event loop's poll of ``user_id``'s outbox through connection ``config``, held while in use;
    one per connection identity (the shared session's key, and the OAuth2 refresh token) and ``user_id``."""
    async with shared_session(config) as lease:
        polls = _POLLS.setdefault(asyncio.get_running_loop(), {})
        # With OAuth2 the session's key has no access token: the refresh token names the identity
        # (two identities may share a pool, never an account's answers).
        identity = hashlib.sha256((config.refresh_token or "").encode()).hexdigest()
        key = (*session_key(config), identity, user_id)
        poll = polls.get(key)
        if poll is None or poll.lease is not lease:
            poll = polls[key] = AccountPoll(lease, config, user_id)
        poll.holders += 1
        try:
            yield poll
        finally:
            poll.holders -= 1
            if poll.holders == 0 and polls.get(key) is poll:
                del polls[key]
                await poll.close()
