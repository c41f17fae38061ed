"""The tick of a shared list poll: callers of one event loop ask for an answer no older than a moment, and
all callers of a tick share one list request, at most one per the shortest interval of the waiting callers.

What is listed is the subclass's (``outbox_poll.AccountPoll``: the outbox; ``sent_poll.SentRecordsPoll``:
the sent fax records); the scheduling of the ticks, the waking of the waiters and the holding of one poll
per account in an event loop are here, once.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from airflow_provider_faxplus.exceptions import FaxPlusRequestError
from airflow_provider_faxplus.triggers.session import _Lease

# A request sent this much before a caller's due still serves it (callers of one interval fall onto one
# tick even when they ask a little apart), at most a tenth of the caller's interval.
MAX_TOLERANCE = 0.5
# A tick's answer wakes this many waiters per loop iteration: each then reads its record (parsed on first
# use, ~50 µs), and thousands woken in one iteration stalled the triggerer's loop for their sum.
SETTLE_SLICE = 100


def tolerance(interval: float) -> float:
    return min(MAX_TOLERANCE, max(interval, 0.0) / 10)


class Snapshot(Protocol):
    @property
    def started_at(self) -> float: ...  # time.monotonic() when the list request was sent


S = TypeVar("S", bound=Snapshot)


class ListUnavailable(Exception):
    """The API refuses the list operation (403 for a narrower scope, 404/405 from a server without it):
    poll each fax with its own request instead."""

    def __init__(self, cause: FaxPlusRequestError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(eq=False)
class _Waiter(Generic[S]):
    due: float
    interval: float
    future: asyncio.Future[S]

    @property
    def ripe_at(self) -> float:
        return self.due - tolerance(self.interval)


@dataclass(eq=False)
class _Request(Generic[S]):
    started_at: float
    futures: list[asyncio.Future[S]] = field(default_factory=list)


class SharedPoll(Generic[S]):
    """One account's list, shared by the callers of an event loop; subclasses say what a tick lists
    (:meth:`_list`) and what a refused list means (:meth:`_refused`)."""

    def __init__(self, lease: _Lease) -> None:
        self.lease = lease
        self.holders = 0
        # Set once the API refused the list: every holder polls its own fax from then on.
        self.unavailable: ListUnavailable | None = None
        self.requests_sent = 0
        self._last: S | None = None
        self._last_sent = -math.inf
        self._inflight: _Request[S] | None = None
        self._waiters: dict[_Waiter[S], None] = {}  # ordered; removal in O(1), not O(waiters)
        self._changed = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        """Whether a look should ask the list: another trigger holds the poll too, and the API has not
        refused the list."""
        return self.holders > 1 and self.unavailable is None

    async def snapshot(self, *, due: float, interval: float) -> S:
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
        future: asyncio.Future[S] = asyncio.get_running_loop().create_future()
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
                with suppress(TimeoutError):  # not wait_for: on 3.11 it can swallow a cancel
                    async with asyncio.timeout(send_at - now):
                        await self._changed.wait()
                continue
            started_at = time.monotonic()
            request: _Request[S] = _Request(started_at)
            ripe = [waiter for waiter in self._waiters if waiter.ripe_at <= started_at]
            for waiter in ripe:
                del self._waiters[waiter]
            request.futures.extend(waiter.future for waiter in ripe)
            self._inflight = request
            self._last_sent = started_at
            outcome: S | BaseException
            try:
                outcome = await self._list(started_at)
            except ListUnavailable as exc:
                self.unavailable = exc
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

    async def _list(self, started_at: float) -> S:
        raise NotImplementedError

    def _refused(self, exc: ListUnavailable) -> None:
        """Say once that the API refused the list (:attr:`unavailable` is set already)."""

    async def close(self) -> None:
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            with suppress(asyncio.CancelledError):
                await self._driver
        self._driver = None


async def _settle(request: _Request[S], outcome: S | BaseException) -> None:
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


P = TypeVar("P", bound=SharedPoll[Any])
Registry = weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]]


@asynccontextmanager
async def held(
    registry: Registry, key: tuple[Any, ...], lease: _Lease, make: Callable[[], P]
) -> AsyncIterator[P]:
    """The event loop's poll of ``key`` in ``registry`` (made on the shared session ``lease`` if there
    is none), held while in use and closed when its last holder lets go."""
    polls = registry.setdefault(asyncio.get_running_loop(), {})
    found: P | None = polls.get(key)
    poll: P = make() if found is None or found.lease is not lease else found
    polls[key] = poll
    poll.holders += 1
    try:
        yield poll
    finally:
        poll.holders -= 1
        if poll.holders == 0 and polls.get(key) is poll:
            del polls[key]
            await poll.close()
