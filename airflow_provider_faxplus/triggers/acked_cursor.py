"""Acknowledged cursors: an event trigger's cursor moves only after Airflow has stored its events.

An ``AssetWatcher``'s trigger remembers what it reported (its cursor) in the watched asset's state
store, so that a restarted triggerer neither reports it again nor misses anything. The rule: a cursor
state is written only once every event it counts as reported is stored by Airflow.

**Ack mode** (Airflow with ``BaseEventTrigger.create_shared_stream_producer``, 3.3+). The trigger joins a
shared stream of its own (its key: its classpath, kwargs and a number unique to the instance, since
Airflow acknowledges a turn for all subscribers at once). Its :class:`TurnProducer` yields one
:class:`Turn` per ``poll_interval`` (monotonic clock); the trigger's ``filter_shared_stream`` makes one
poll turn per :class:`Turn`, yields that turn's events and hands the turn the cursor state reached. Airflow
calls ``advance`` for a turn only once its supervisor has confirmed every event of it stored in the
metadata database; only then is the state written (:meth:`AckedCursor.acknowledged`). A turn Airflow
never acknowledged (the triggerer killed, an ack timeout) is never written: after a restart the trigger
compares against the last acknowledged state, and only the unacknowledged events can come again.

**Settle mode** (the fallback: Airflow 3.0-3.2, or ``run()`` called directly). ``run()`` drives the same
turns and writes a state :data:`SETTLE_SECONDS` after its events were yielded (Airflow's triggerer hands
events to its supervisor about once a second), so a triggerer stopped in between reports them again.

In both modes a failed write is retried with a growing back-off (the latest state only), and the
trigger keeps what it reported in memory meanwhile: nothing it reported is reported again by this
process while the store cannot be written.

A trigger built on :class:`AckedCursorTrigger` implements four things (``OutboxEventTrigger`` is one)::

    poll_interval: float                       # seconds between turns, one of its kwargs
    async def poll_turn(self, due) -> AsyncIterator[TriggerEvent]
        # One look (list and diff against its in-memory cursor), yielding what changed; skipped when
        # it sets ``self.resume_at`` (monotonic) in the future (a back-off).
    def take_cursor_state(self) -> Any | None  # the state reached, if it changed since last taken
    async def save_cursor(self, state) -> None # write it to the store; raise on failure
    async def close_turns(self) -> None        # optional: release what poll_turn opened
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from airflow import __version__ as _airflow_version

try:
    from airflow.triggers.base import BaseEventTrigger, TriggerEvent
except ImportError:  # Airflow 2.x
    raise ImportError(
        "airflow_provider_faxplus.triggers.acked_cursor needs Airflow 3.0 or later (asset watchers, "
        f"BaseEventTrigger); this is Airflow {_airflow_version}."
    ) from None

from airflow_provider_faxplus.retry import backoff_seconds

try:  # Airflow 3.3+: shared streams with the producer's ack channel
    from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

    ACK_MODE = hasattr(BaseEventTrigger, "create_shared_stream_producer")
except ImportError:  # Airflow 3.0-3.2: the settle mode only
    AdvanceItem = Any  # type: ignore[assignment,misc]
    SharedStreamProducer = object  # type: ignore[assignment,misc]
    ACK_MODE = False

log = logging.getLogger(__name__)

# Settle mode: Airflow's triggerer hands yielded events to its supervisor about once a second; a state
# is written this long after its events, so a triggerer stopped in between reports them again.
SETTLE_SECONDS = 3.0
_STREAM_NUMBERS = itertools.count()


class AckedCursor:
    """One watcher's cursor on its way to the store: the states handed over, written by ``save`` once
    they may be (acknowledged by Airflow, or settled), the latest first; a failed write retried after a
    growing back-off. Writes of one cursor never overlap."""

    def __init__(self, save: Callable[[Any], Awaitable[None]], describe: str) -> None:
        self._save = save
        self.describe = describe
        # States not yet written, each with the monotonic time from which it may be.
        self._unwritten: list[tuple[float, Any]] = []
        self.failures = 0
        self.retry_at = -math.inf
        self.refused = False  # a turn of it was not acknowledged: nothing after it may be written
        self._lock = asyncio.Lock()

    def acknowledged(self, state: Any) -> None:
        """Ack mode: Airflow stored every event up to ``state``; it replaces any older unwritten one."""
        if not self.refused:
            self._unwritten = [(-math.inf, state)]

    def refuse(self) -> None:
        """Ack mode: a turn's events were not all stored (an ack timeout, a subscriber failed). Later
        states count those events as reported, so this cursor writes nothing more; Airflow fails the
        trigger, and its next start reads the last acknowledged state and reports them again."""
        if not self.refused:
            log.warning(
                "Airflow did not confirm the events of a turn of %s stored: its cursor stays at the last "
                "acknowledged state, and they are reported again when the trigger restarts",
                self.describe,
            )
        self.refused = True
        self._unwritten.clear()

    def settle(self, state: Any, delay: float) -> None:
        """Settle mode: ``state`` may be written ``delay`` seconds from now, never before an earlier
        state (each state holds the events of those before it)."""
        at = time.monotonic() + delay
        if self._unwritten:
            at = max(at, self._unwritten[-1][0])
        self._unwritten.append((at, state))

    @property
    def pending(self) -> bool:
        return bool(self._unwritten)

    def next_write_at(self) -> float:
        """When :meth:`write_due` has something to do (``math.inf``: nothing waits)."""
        if not self._unwritten:
            return math.inf
        return max(self._unwritten[0][0], self.retry_at)

    async def write_due(self) -> None:
        """Write the latest state that may be written now, if any. Never raises but for cancellation."""
        async with self._lock:
            now = time.monotonic()
            ready = [state for at, state in self._unwritten if at <= now]
            if not ready or now < self.retry_at:
                return
            try:
                await self._save(ready[-1])
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                self.failures += 1
                # Only the latest state is worth writing: keep one, not one per turn of the outage.
                del self._unwritten[: len(ready) - 1]
                wait = backoff_seconds(self.failures, 1.0)
                self.retry_at = now + wait
                log.warning(
                    "Could not store the cursor of %s (failure #%d, again in %.1f s; what this triggerer "
                    "reported is not reported again meanwhile): %s: %s",
                    self.describe,
                    self.failures,
                    wait,
                    type(exc).__name__,
                    str(exc)[:300],
                )
                return
            self.failures = 0
            self.retry_at = -math.inf
            del self._unwritten[: len(ready)]


class Turn:
    """One raw event of the shared stream: a poll turn due at ``due`` (``time.monotonic()``). The
    subscriber hands it the cursor state its events reach (:meth:`hold`)."""

    __slots__ = ("due", "held", "number")

    def __init__(self, number: int, due: float) -> None:
        self.number = number
        self.due = due
        self.held: list[tuple[AckedCursor, Any]] = []

    def hold(self, cursor: AckedCursor, state: Any) -> None:
        self.held.append((cursor, state))

    def __repr__(self) -> str:
        return f"Turn({self.number})"


class TurnProducer(SharedStreamProducer):  # type: ignore[misc,valid-type]
    """Ack mode's producer: a :class:`Turn` every ``interval`` seconds (monotonic; late turns are not
    caught up in a burst); ``advance`` writes the states of the acknowledged turns. A failed write never
    raises out of ``advance`` (that would end the stream for every subscriber): it is retried between
    turns."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._retrying: dict[AckedCursor, None] = {}
        self._wake = asyncio.Event()

    async def open_stream(self) -> AsyncIterator[tuple[Turn, Turn]]:
        number = 0
        due = time.monotonic()
        while True:
            turn = Turn(number, due)
            yield turn, turn
            number += 1
            due = max(due + self.interval, time.monotonic())
            while (now := time.monotonic()) < due:
                retry = min((cursor.next_write_at() for cursor in self._retrying), default=math.inf)
                if retry <= now:
                    await self._write(list(self._retrying))
                    continue
                self._wake.clear()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancel that arrives
                # as the event is set, and the stream would outlive its trigger.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(due, retry) - now):
                        await self._wake.wait()

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        touched: dict[AckedCursor, None] = {}
        for item in batch:
            turn: Turn = item.broker_payload
            for cursor, state in turn.held:
                if item.outcome.is_clean:
                    cursor.acknowledged(state)
                else:
                    cursor.refuse()
                touched[cursor] = None
        await self._write(list(touched))

    async def _write(self, cursors: list[AckedCursor]) -> None:
        for cursor in cursors:
            await cursor.write_due()
            if cursor.pending and not cursor.refused:
                self._retrying[cursor] = None
            else:
                self._retrying.pop(cursor, None)
        self._wake.set()  # the stream's wait takes the new retry times


class AckedCursorTrigger(BaseEventTrigger):
    """A ``BaseEventTrigger`` whose cursor moves only once Airflow stored its events (see the module).
    Subclasses implement ``poll_turn``, ``take_cursor_state``, ``save_cursor`` (and may ``close_turns``),
    and have a ``poll_interval`` attribute and kwarg."""

    poll_interval: float
    # Whether Airflow's ack mode drives the turns (class-wide; False: ``run()`` and settle mode).
    ack_mode: bool = ACK_MODE

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Monotonic time before which turns are skipped (a back-off set by poll_turn).
        self.resume_at = -math.inf
        # Its own shared stream: Airflow acknowledges a turn for all its subscribers at once, so one
        # subscriber's unconfirmed events would stop the cursors of the others.
        self._stream_number = next(_STREAM_NUMBERS)

    # What a subclass implements.
    def poll_turn(self, due: float) -> AsyncIterator[TriggerEvent]:
        raise NotImplementedError

    def take_cursor_state(self) -> Any | None:
        raise NotImplementedError

    async def save_cursor(self, state: Any) -> None:
        raise NotImplementedError

    async def close_turns(self) -> None:
        """Release what the turns opened (a shared poll); called when the trigger stops."""

    def describe(self) -> str:
        return type(self).__name__

    # Ack mode (Airflow 3.3+).
    def shared_stream_key(self) -> Any:
        if not type(self).ack_mode:
            return None
        classpath, kwargs = self.serialize()
        kwargs_text = json.dumps(kwargs, sort_keys=True, default=str)
        return ("faxplus.acked_cursor", classpath, kwargs_text, self._stream_number)

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> TurnProducer:
        return TurnProducer(float(kwargs["poll_interval"]))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        cursor = AckedCursor(self.save_cursor, self.describe())
        log.info("%s: cursor written once Airflow acknowledges the events (ack mode)", self.describe())
        try:
            async for turn in shared_stream:
                if time.monotonic() < self.resume_at:
                    continue  # backing off: this turn passes with nothing to acknowledge
                # Each event is yielded before the next turn is pulled: Airflow binds it to this turn.
                async for event in self.poll_turn(turn.due):
                    yield event
                state = self.take_cursor_state()
                if state is not None:
                    turn.hold(cursor, state)
        finally:
            await self.close_turns()

    # Settle mode (the fallback).
    async def run(self) -> AsyncIterator[TriggerEvent]:
        cursor = AckedCursor(self.save_cursor, self.describe())
        log.info("%s: cursor written %.0f s after its events (settle mode)", self.describe(), SETTLE_SECONDS)
        due = time.monotonic()
        try:
            while True:
                fired = False
                if time.monotonic() >= self.resume_at:
                    async for event in self.poll_turn(due):
                        fired = True
                        yield event
                    state = self.take_cursor_state()
                    if state is not None:
                        cursor.settle(state, SETTLE_SECONDS if fired else 0.0)
                due = max(due + self.poll_interval, time.monotonic(), self.resume_at)
                while (now := time.monotonic()) < due or cursor.next_write_at() <= now:
                    if cursor.next_write_at() <= now:
                        await cursor.write_due()
                        continue
                    await asyncio.sleep(max(0.0, min(due, cursor.next_write_at()) - now))
        finally:
            await self.close_turns()
