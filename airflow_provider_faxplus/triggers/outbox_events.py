"""OutboxEventTrigger: faxes entering and leaving the outbox, as asset events of an ``AssetWatcher``.

Needs Airflow 3 (``BaseEventTrigger``); Airflow 2 has no asset watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from airflow import __version__ as _airflow_version

try:
    from airflow.triggers.base import TriggerEvent

    from airflow_provider_faxplus.triggers.acked_cursor import AckedCursorTrigger
except ImportError:  # Airflow 2.x
    raise ImportError(
        "airflow_provider_faxplus.triggers.outbox_events needs Airflow 3.0 or later (asset watchers, "
        f"BaseEventTrigger); this is Airflow {_airflow_version}. On Airflow 2 wait for a fax with "
        "OutboxFaxSensor instead."
    ) from None

from airflow_provider_faxplus import oauth, protocol
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import (
    FaxPlusAuthError,
    FaxPlusError,
    FaxPlusInputError,
    FaxPlusNotFoundError,
    FaxPlusRequestError,
)
from airflow_provider_faxplus.models import OutboxFax
from airflow_provider_faxplus.retry import backoff_seconds
from airflow_provider_faxplus.triggers.outbox_poll import (
    AccountPoll,
    ListUnavailable,
    OutboxSnapshot,
    account_poll,
)
from airflow_provider_faxplus.triggers.session import (
    _redacted,
    access_token,
    fetch_outbox_fax,
    load_connection,
)

log = logging.getLogger(__name__)

# A known fax in the cursor: its last status and the events reported for it. A tuple of strings, which
# the garbage collector stops tracking: 10,000 dicts were 20,000 more objects for every full collection.
Entry = tuple[str | None, tuple[str, ...]]
_ENTERED: tuple[str, ...] = ("entered",)

EVENTS = ("entered", "left")
# 1: one value {"v": 1, "known": {id: {"status", "reported"}}} (~85 bytes a fax; still read). 2: the ids
# grouped by status and events reported (~35 bytes a fax), split by id hash over several keys once one
# value would pass Airflow's size limit.
CURSOR_VERSION = 2
# Airflow 3.3's default [state_store] max_value_storage_bytes (used where it is unset or 0).
DEFAULT_VALUE_LIMIT = 65_535
# Parts of one cursor at most (10,000 faxes need 16 at the default limit).
MAX_CURSOR_PARTS = 4096
# Faxes compared, events yielded or cursor entries encoded between two turns of the event loop: each
# costs up to ~60 µs (a record parsed on first use), so a chunk stays under 10 ms on a slow machine.
LOOP_CHUNK = 100
# Known faxes missing from a list answer, confirmed gone with one GET each, at most this many per tick,
# and no GET started once a turn has confirmed this long: a turn must end well within Airflow's ack
# timeout ([triggerer] shared_stream_ack_timeout, 300 s by default); the rest wait for the next turn.
CONFIRM_PER_TICK = 50
CONFIRM_BUDGET_SECONDS = 60.0
# The shortest poll_interval: Fax.Plus watches for abusive polling.
MIN_POLL_INTERVAL = 1.0
# Ids of skipped list records remembered (warned once each), at most.
MAX_SKIPPED_WARNED = 1000
# After a refused token or list call: how often the connection is read again (no API call) to see
# whether someone fixed it.
PARKED_RECHECK_SECONDS = 60.0


class CursorStore(Protocol):
    """Where the cursor is kept: Airflow's asset state store accessor (``aget``/``aset``), or memory."""

    async def aget(self, key: str, default: Any = None) -> Any: ...

    async def aset(self, key: str, value: Any) -> None: ...


class MemoryCursorStore:
    """The fallback: the cursor lives as long as the triggerer process (kept across the restarts of
    ``run()`` that Airflow makes of a watcher, lost when the triggerer restarts)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))

    async def adelete(self, key: str) -> None:
        self.values.pop(key, None)


_MEMORY = MemoryCursorStore()


class OutboxEventTrigger(AckedCursorTrigger):
    """Watches the outbox of ``user_id`` through connection ``faxplus_conn_id`` (one *List outgoing
    faxes* per ``poll_interval``, shared with every sensor and watcher of that account in the triggerer)
    and yields one event per fax and kind: ``entered`` when a fax appears in the outbox, ``left`` when
    it is gone from it.

    Event payload: ``outbox_fax_id``, ``user_id``, ``event``, ``status`` (the last status seen),
    ``record`` (the JSON-safe record last seen), ``detected_at`` (ISO-8601 UTC).

    What was reported (the cursor) is kept in the watched asset's ``asset_state_store`` (Airflow 3.3.2+),
    written only once Airflow has stored the events (see :mod:`.acked_cursor`), so a restarted triggerer
    reports each fax and event once, but for the events Airflow had not yet acknowledged stored.
    Elsewhere (older Airflow, a watcher of several assets, a trigger outside a watcher) it is kept in
    memory and lost when the triggerer restarts: faxes present then count as already in the outbox.

    :param report_existing: required, so the choice is explicit. With no cursor yet (the first start),
        whether faxes already in the outbox are reported as ``entered`` (True) or taken as the starting
        point (False; they are still reported when they leave).
    :param user_id: whose outbox (``self``: the token's user).
    :param faxplus_conn_id: the ``faxplus`` connection, read in the triggerer.
    :param events: which kinds to report: ``entered``, ``left`` or both (default).
    :param poll_interval: seconds between list calls; transient errors back off from it.
    """

    # The floor of poll_interval (a class attribute so that tests can lower it explicitly).
    min_poll_interval: float = MIN_POLL_INTERVAL

    def __init__(
        self,
        *,
        report_existing: bool,
        user_id: str = "self",
        faxplus_conn_id: str = "faxplus_default",
        events: Iterable[str] = EVENTS,
        poll_interval: float = 60.0,
    ) -> None:
        super().__init__()
        if not isinstance(report_existing, bool):
            raise ValueError(f"report_existing must be True or False, got {report_existing!r}")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"user_id must be a non-empty string, got {user_id!r}")
        if not isinstance(faxplus_conn_id, str) or not faxplus_conn_id:
            raise ValueError(f"faxplus_conn_id must be a non-empty string, got {faxplus_conn_id!r}")
        if isinstance(events, str):
            raise ValueError(f"events must be a list of event kinds, not the string {events!r}")
        chosen = list(events)
        unknown = [kind for kind in chosen if kind not in EVENTS]
        if unknown or not chosen:
            raise ValueError(f"events must be a non-empty list of {list(EVENTS)}, got {chosen!r}")
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, int | float)
            or not math.isfinite(poll_interval)
            or poll_interval < type(self).min_poll_interval
        ):
            raise ValueError(
                "poll_interval must be a finite number of seconds, at least "
                f"{type(self).min_poll_interval:g}, got {poll_interval!r}"
            )
        self.report_existing = report_existing
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.events = [kind for kind in EVENTS if kind in chosen]
        self.poll_interval = float(poll_interval)
        self._report_existing = report_existing
        self._loaded = False  # the stored cursor has been read
        # What this process has reported (None: nothing yet and no stored cursor), and what the store
        # holds as far as this process knows.
        self._known: dict[str, Entry] | None = None
        # What the store holds as far as this process knows: the number of parts (None: nothing in
        # this version's format) and each part's entries.
        self._layout: int | None = None
        self._parts: list[dict[str, Entry]] = []
        self._changed = False  # _known differs from the state last handed to the cursor
        self._cursor_store: CursorStore | None = None
        self._config: FaxPlusConfig | None = None
        self._poll: AccountPoll | None = None
        self._poll_stack: contextlib.AsyncExitStack | None = None
        self._parked: str | None = None  # why the polls stopped (a refused token or list call)
        self._failures = 0  # turns failed in a row (the store, a bug): their back-off
        self._list_failures = 0  # list calls failed in a row (transient): their back-off
        self._last_seen: dict[str, OutboxFax] = {}  # a "left" event carries the fax's last record
        self.stored: dict[str, Entry] | None = None  # the state last written by save_cursor
        # report_existing=False: the server's time of the first start's list answer; a fax submitted
        # before it was in the outbox already, whenever a list answer first shows it.
        self._since: float | None = None
        self._skipped: set[str] = set()  # ids of list records skipped (warned once each)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "report_existing": self.report_existing,
                "user_id": self.user_id,
                "faxplus_conn_id": self.faxplus_conn_id,
                "events": list(self.events),
                "poll_interval": self.poll_interval,
            },
        )

    @property
    def cursor_key(self) -> str:
        """The state-store key: several watchers may share one asset, each with its own cursor."""
        identity = json.dumps([self.faxplus_conn_id, self.user_id, self.events])
        return "faxplus.outbox_events." + hashlib.sha256(identity.encode()).hexdigest()[:32]

    def cursor_store(self) -> CursorStore:
        """The watched asset's state store where Airflow gives one with async access, else memory."""
        store = getattr(self, "asset_state_store", None)
        if store is not None and hasattr(store, "aget") and hasattr(store, "aset"):
            total = getattr(store, "_total", 1)
            if total == 1:
                return store  # type: ignore[no-any-return]
            log.warning(
                "This watcher watches %d assets; the Fax.Plus outbox cursor is kept in memory only "
                "(a triggerer restart may report faxes again or miss some): watch one asset",
                total,
            )
        else:
            log.warning(
                "No asset state store with async access (Airflow 3.3.2+ in an AssetWatcher): the "
                "Fax.Plus outbox cursor is kept in memory and lost when the triggerer restarts"
            )
        return _MEMORY

    def describe(self) -> str:
        return f"the outbox watcher of {self.user_id!r}"

    def _prepare(self) -> CursorStore:
        store = self.cursor_store()
        if isinstance(store, MemoryCursorStore) and self.report_existing:
            # A memory cursor cannot tell a first start from a triggerer restart: reporting the faxes
            # already there would report them again at every restart.
            log.warning(
                "report_existing=True needs the asset state store: with the cursor in memory, faxes "
                "already in the outbox of %r when this triggerer starts count as already known",
                self.user_id,
            )
            self._report_existing = False
        return store

    async def poll_turn(self, due: float) -> AsyncIterator[TriggerEvent]:
        """One look at the outbox (see :mod:`acked_cursor`): a refused token or list call is logged once
        as an error, then the turns only read the connection until it changes. Any other failure (the
        state store unreachable included) backs off, growing while it lasts; nothing escapes."""
        if self._cursor_store is None:
            self._cursor_store = self._prepare()
        store = self._cursor_store
        looked: tuple[OutboxSnapshot, set[str]] | None = None
        try:
            if self._parked is not None and not await self._connection_changed():
                return
            if not self._loaded:
                await self._load(store)
                self._loaded = True
                if self._known is not None:
                    log.info(
                        "Resuming the outbox of %r: %d faxes already known", self.user_id, len(self._known)
                    )
            if self._config is None:
                self._config = await load_connection(self.faxplus_conn_id)
            looked = await self._look(self._config, due)
        except _Parked as parked:
            await self._park(parked.reason)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except FaxPlusError as exc:  # the connection cannot be read or used
            await self._park(_redacted(str(exc), self._config))
        except Exception as exc:
            from airflow.exceptions import AirflowNotFoundException

            if isinstance(exc, AirflowNotFoundException):
                self._config = None
                await self._park(f"the connection {self.faxplus_conn_id!r} is not visible to the triggerer")
            else:  # the state store, a bug or an unforeseen answer: back off, never a hot loop
                self._failures += 1
                wait = max(self.poll_interval, backoff_seconds(self._failures, 1.0))
                log.error(
                    "OutboxEventTrigger for the outbox of %r failed, again in %.0f s: %s",
                    self.user_id,
                    wait,
                    _redacted(f"{type(exc).__name__}: {exc}", self._config),
                )
                self.resume_at = time.monotonic() + wait
        if looked is None:
            return
        snapshot, gone = looked
        if self._known is None and not self._report_existing and self._since is None:
            self._since = snapshot.server_time if snapshot.server_time is not None else time.time()
        fired, after = await self.compare(self._known, snapshot, gone)
        for number, payload in enumerate(fired, 1):
            if number % LOOP_CHUNK == 0:
                await asyncio.sleep(0)  # 10,000 events of a first turn: let the loop run
            log.info(
                "Outbox fax %s %s the outbox of %r", payload["outbox_fax_id"], payload["event"], self.user_id
            )
            yield TriggerEvent(payload)
        if after != self._known:
            # Reported by this process from now on, whatever the store says.
            self._known = after
            self._changed = True
        self._failures = 0  # a whole turn went through: the back-off starts afresh

    async def _look(self, config: FaxPlusConfig, due: float) -> tuple[OutboxSnapshot, set[str]] | None:
        """The turn's list answer and the known faxes confirmed gone; None after a transient error
        (the next turns are skipped for a growing back-off)."""
        renewed = False
        while True:
            try:
                poll = await self._open_poll(config)
                snapshot = await poll.snapshot(due=due, interval=self.poll_interval)
                token = await access_token(poll.lease, config)
                gone = await self._confirm_absent(poll, config, token, snapshot)
            except ListUnavailable as exc:
                reason = f"the API refuses to list the outbox: {exc.cause}"
                raise _Parked(_redacted(reason, config)) from None
            except FaxPlusRequestError as exc:
                if isinstance(exc, FaxPlusAuthError) and exc.status == 401:
                    if config.uses_oauth_refresh and not oauth.is_token_error(exc) and not renewed:
                        renewed = True  # the access token expired early: refresh it once
                        refused = oauth.source_for(config).valid_token()
                        if refused:
                            oauth.source_for(config).invalidate(refused)
                        continue
                    raise _Parked(_redacted(str(exc), config)) from None
                if protocol.is_permanent(exc):  # no retry can fix it
                    raise _Parked(_redacted(str(exc), config)) from None
                self._list_failures += 1
                wait = max(
                    self.poll_interval,
                    backoff_seconds(self._list_failures, config.initial_backoff, exc.retry_after),
                )
                log.warning(
                    "Transient error #%d, listing the outbox again in %.1f s: %s",
                    self._list_failures,
                    wait,
                    exc,
                )
                self.resume_at = time.monotonic() + wait
                return None
            self._list_failures = 0
            return snapshot, gone

    async def _open_poll(self, config: FaxPlusConfig) -> AccountPoll:
        """The account's shared poll, held from the first turn until the trigger stops or parks."""
        if self._poll is None:
            stack = contextlib.AsyncExitStack()
            self._poll = await stack.enter_async_context(account_poll(config, self.user_id))
            self._poll_stack = stack
        return self._poll

    async def close_turns(self) -> None:
        stack, self._poll_stack, self._poll = self._poll_stack, None, None
        if stack is not None:
            await stack.aclose()

    def take_cursor_state(self) -> dict[str, Entry] | None:
        if not self._changed or self._known is None:
            return None
        self._changed = False
        return self._known

    async def save_cursor(self, state: dict[str, Entry]) -> None:
        assert self._cursor_store is not None  # a state exists only after a turn
        await self._store(self._cursor_store, state)
        self.stored = state

    async def _park(self, reason: str) -> None:
        """Log the refusal once; from then on every ``PARKED_RECHECK_SECONDS`` a turn reads the
        connection (no API call) until it differs from the refused one."""
        log.error(
            "OutboxEventTrigger for the outbox of %r stops polling: %s. It polls again once connection "
            "%r changes.",
            self.user_id,
            reason,
            self.faxplus_conn_id,
        )
        self._parked = reason
        self.resume_at = time.monotonic() + max(PARKED_RECHECK_SECONDS, self.poll_interval)
        await self.close_turns()

    async def _connection_changed(self) -> bool:
        self.resume_at = time.monotonic() + max(PARKED_RECHECK_SECONDS, self.poll_interval)
        try:
            fresh = await load_connection(self.faxplus_conn_id)
        except Exception as exc:  # still unusable: keep waiting
            log.debug(
                "Connection %r still unusable: %s", self.faxplus_conn_id, _redacted(str(exc), self._config)
            )
            return False
        if fresh == self._config:
            return False
        log.info("Connection %r changed: polling the outbox again", self.faxplus_conn_id)
        self._config, self._parked = fresh, None
        self.resume_at = -math.inf
        return True

    def part_key(self, parts: int, index: int) -> str:
        return f"{self.cursor_key}.{parts}.{index}"

    async def _load(self, store: CursorStore) -> None:
        """Read the cursor: its first value, then its other parts (if it has any)."""
        values = {self.cursor_key: await store.aget(self.cursor_key)}
        parts = _parts_of(values[self.cursor_key])
        if parts is not None and parts > 1:
            for index in range(parts):
                key = self.part_key(parts, index)
                values[key] = await store.aget(key)
        self._known, self._layout = _decode(values, self.cursor_key)
        if self._known is not None and self._layout is None:  # the old format, or a part missing
            self._changed = True  # rewritten in this version's format
        elif self._known is not None and self._layout is not None:
            self._parts = _split(self._known, self._layout)

    async def _store(self, store: CursorStore, state: dict[str, Entry]) -> None:
        """Write ``state``: only the parts that changed, unless the number of parts changes (then every
        part under its new keys, the first value last: a stop in between leaves the old cursor whole)."""
        limit = value_limit()
        count = _plan_parts(state, limit, self._layout)
        while True:
            parts = _split(state, count)
            values = []
            for index, part in enumerate(parts):
                values.append(_encode(part))
                if index % 4 == 3:
                    await asyncio.sleep(0)
            largest = max(len(json.dumps(value)) for value in values)
            if largest <= limit or count >= MAX_CURSOR_PARTS:
                break
            count *= 2  # an uneven split or very long ids
        if largest > limit:
            log.warning(
                "The outbox cursor of %r needs %d parts of up to %d bytes, over the state store's "
                "max_value_storage_bytes (%d)",
                self.user_id,
                count,
                largest,
                limit,
            )
        relayout = count != self._layout
        if count == 1:
            if relayout or parts[0] != self._parts[0]:
                await store.aset(self.cursor_key, {"v": CURSOR_VERSION, "parts": 1, **values[0]})
        else:
            for index, part in enumerate(parts):
                if relayout or part != self._parts[index]:
                    await store.aset(self.part_key(count, index), {"v": CURSOR_VERSION, **values[index]})
                    if not relayout:
                        self._parts[index] = part  # written: a failure further on does not redo it
            if relayout:
                await store.aset(self.cursor_key, {"v": CURSOR_VERSION, "parts": count})
        before = self._layout
        self._layout, self._parts = count, parts
        if relayout and before is not None and before > 1:
            await self._forget(store, before)

    async def _forget(self, store: CursorStore, parts: int) -> None:
        """Delete the parts of a layout no longer in use (best effort: the first value no longer names
        them, so one left behind is only a stale value)."""
        delete = getattr(store, "adelete", None)
        if delete is None:
            return
        for index in range(parts):
            try:
                await delete(self.part_key(parts, index))
            except Exception as exc:
                log.debug("Could not delete an old outbox cursor part: %s: %s", type(exc).__name__, exc)
                return

    async def _confirm_absent(
        self, poll: AccountPoll, config: FaxPlusConfig, token: str, snapshot: OutboxSnapshot
    ) -> set[str]:
        """The known faxes missing from the list that have really left: one *Get outgoing fax* each
        (an absence from one list answer is never a verdict), at most ``CONFIRM_PER_TICK`` per tick."""
        missing = [fax_id for fax_id in (self._known or {}) if fax_id not in snapshot.records]
        gone: set[str] = set()
        stop_at = time.monotonic() + CONFIRM_BUDGET_SECONDS
        for done, fax_id in enumerate(missing[:CONFIRM_PER_TICK]):
            if time.monotonic() >= stop_at:  # the rest are confirmed by the next turns
                log.info("Outbox of %r: %d faxes left to confirm", self.user_id, len(missing) - done)
                break
            try:
                record = await fetch_outbox_fax(poll.lease, config, fax_id, self.user_id, token)
            except FaxPlusNotFoundError:
                gone.add(fax_id)
                continue
            except FaxPlusInputError as exc:  # an id the client refuses (a cursor of an older version)
                self._skip(fax_id, str(exc))
                continue
            log.info("Outbox fax %s is missing from a list answer but still in the outbox", fax_id)
            self._last_seen[fax_id] = record
        return gone

    async def compare(
        self, known: dict[str, Entry] | None, snapshot: OutboxSnapshot, gone: set[str]
    ) -> tuple[list[dict[str, Any]], dict[str, Entry]]:
        """The events of one snapshot against the cursor, and the cursor after them. ``known`` None:
        no cursor yet (the first start); ``gone``: the known faxes missing from the snapshot whose
        absence a GET confirmed (the others stay known). The cursor: per fax in the outbox, its last
        status and the events reported for it; a fax that left is dropped (outbox ids are never reused)."""
        first = known is None
        before = known or {}
        after: dict[str, Entry] = {}
        fired: list[dict[str, Any]] = []
        for number, fax_id in enumerate(snapshot.records, 1):
            if number % LOOP_CHUNK == 0:
                await asyncio.sleep(0)  # a record is parsed on first use: 10,000 take ~0.5 s
            entry = before.get(fax_id)
            record = self._record(snapshot, fax_id)
            if record is None:  # no fax of ours: never in the cursor, never an event
                if entry is not None:
                    after[fax_id] = entry  # known: its record only is unreadable in this answer
                continue
            status = str(record.status)
            if entry is None:
                reported: tuple[str, ...] = ()
                existing = (first and not self._report_existing) or self._before_start(record)
                if not existing and "entered" in self.events:
                    fired.append(self._payload("entered", fax_id, status, record))
                    reported = _ENTERED
                after[fax_id] = (status, reported)
            else:  # the same tuple while nothing changes: no new object for the collector to track
                after[fax_id] = entry if entry[0] == status else (status, entry[1])
            self._last_seen[fax_id] = record
        for fax_id, entry in before.items():
            if fax_id in snapshot.records:
                continue
            if fax_id not in gone:  # missing from this answer only: still in the outbox
                after[fax_id] = entry
                continue
            if fax_id not in snapshot.records:
                seen = self._last_seen.pop(fax_id, None)
                if "left" in self.events:
                    fired.append(self._payload("left", fax_id, entry[0], seen))
        return fired, after

    def _record(self, snapshot: OutboxSnapshot, fax_id: str) -> OutboxFax | None:
        """The fax's record, or None (warned once per id) when the client would refuse its id or the
        record does not parse as an Outbox: no fax this trigger can follow."""
        try:
            protocol.validate_path_param("outbox_fax_id", fax_id)
            return snapshot.records[fax_id]
        except FaxPlusError as exc:
            self._skip(fax_id, str(exc))
            return None

    def _skip(self, fax_id: str, reason: str) -> None:
        if fax_id in self._skipped:
            return
        if len(self._skipped) >= MAX_SKIPPED_WARNED:
            self._skipped.clear()
        self._skipped.add(fax_id)
        log.warning(
            "Outbox of %r: list record with id %s skipped (not a fax this watcher can follow): %s",
            self.user_id,
            _redacted(repr(fax_id[:80]) + ("..." if len(fax_id) > 80 else ""), self._config),
            _redacted(reason[:300], self._config),
        )

    def _before_start(self, record: OutboxFax) -> bool:
        """report_existing=False: the fax was submitted before the first start's list answer."""
        if self._since is None or record.submit_time is None:
            return False
        return bool(record.submit_time.timestamp() < self._since)

    def _payload(
        self, event: str, fax_id: str, status: str | None, record: OutboxFax | None
    ) -> dict[str, Any]:
        return {
            "outbox_fax_id": fax_id,
            "user_id": self.user_id,
            "event": event,
            "status": status,
            "record": None if record is None else record.to_dict(),
            "detected_at": datetime.now(UTC).isoformat(),
        }


PAYLOAD_KEYS = ("outbox_fax_id", "user_id", "event", "status", "record", "detected_at")


def read_event(payload: Any) -> dict[str, Any]:
    """The payload of an asset event, checked to be one :class:`OutboxEventTrigger` yields.

    An asset may receive events from elsewhere (the REST API, another producer; on SQLite even a stale
    trigger of ``airflow dags test`` whose row id Airflow gave to the watcher: see the README), and a DAG
    should not take one for a fax.

    :raises ValueError: naming what is missing or wrong.
    """
    if not isinstance(payload, dict):
        raise ValueError(
            f"not an OutboxEventTrigger event: the payload is {type(payload).__name__}, not an object"
        )
    missing = [key for key in PAYLOAD_KEYS if key not in payload]
    if missing:
        raise ValueError(
            f"not an OutboxEventTrigger event: the payload lacks {missing} (it has {sorted(payload)})"
        )
    if payload["event"] not in EVENTS:
        raise ValueError(
            f"not an OutboxEventTrigger event: event {payload['event']!r} is none of {list(EVENTS)}"
        )
    if not isinstance(payload["outbox_fax_id"], str) or not payload["outbox_fax_id"]:
        raise ValueError(f"not an OutboxEventTrigger event: outbox_fax_id {payload['outbox_fax_id']!r}")
    return payload


def value_limit() -> int:
    """The state store's ``[state_store] max_value_storage_bytes`` (its default where unset or 0)."""
    try:
        from airflow.configuration import conf

        limit = conf.getint("state_store", "max_value_storage_bytes", fallback=DEFAULT_VALUE_LIMIT)
    except Exception:  # an Airflow without the option, or a malformed value: the default
        return DEFAULT_VALUE_LIMIT
    return limit if limit > 0 else DEFAULT_VALUE_LIMIT


def _part_of(fax_id: str, parts: int) -> int:
    return zlib.crc32(fax_id.encode()) % parts


def _split(state: Mapping[str, Entry], parts: int) -> list[dict[str, Entry]]:
    split: list[dict[str, Entry]] = [{} for _ in range(parts)]
    for fax_id, entry in state.items():
        split[_part_of(fax_id, parts) if parts > 1 else 0][fax_id] = entry
    return split


def _plan_parts(state: Mapping[str, Entry], limit: int, current: int | None) -> int:
    """A power of two: each part planned at half the limit; the current count kept while it fits
    (at up to three quarters) and is not four times too many."""
    estimate = sum(len(fax_id) + 4 for fax_id in state) + 200
    needed = 1
    while estimate / needed > limit / 2 and needed < MAX_CURSOR_PARTS:
        needed *= 2
    if current is not None and needed <= current < needed * 4 and estimate / current <= limit * 0.75:
        return current
    return needed


def _encode(part: Mapping[str, Entry]) -> dict[str, Any]:
    """The ids grouped by last status and events reported: ``{"g": [[status, reported, [ids]]]}``."""
    groups: dict[Entry, list[str]] = {}
    for fax_id, entry in part.items():
        groups.setdefault(entry, []).append(fax_id)
    return {"g": [[status, list(reported), ids] for (status, reported), ids in groups.items()]}


def _decode_groups(value: Any) -> dict[str, Entry] | None:
    if not isinstance(value, dict) or not isinstance(value.get("g"), list):
        return None
    known: dict[str, Entry] = {}
    for group in value["g"]:
        if not (isinstance(group, list) and len(group) == 3 and isinstance(group[1], list)):
            return None
        status, reported, ids = group
        if not isinstance(ids, list):
            return None
        entry = (None if status is None else str(status), tuple(str(kind) for kind in reported))
        for fax_id in ids:
            known[str(fax_id)] = entry
    return known


def _loaded(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _parts_of(first: Any) -> int | None:
    first = _loaded(first)
    if isinstance(first, dict) and first.get("v") == CURSOR_VERSION:
        parts = first.get("parts")
        if isinstance(parts, int) and not isinstance(parts, bool) and 1 <= parts <= MAX_CURSOR_PARTS:
            return parts
    return None


def _decode(values: Mapping[str, Any], key: str) -> tuple[dict[str, Entry] | None, int | None]:
    """The stored cursor from its values by key, and its number of parts (None for the old format, a
    part missing, or no cursor). The known faxes are None when there is no cursor (or one this version
    cannot read)."""
    first = _loaded(values.get(key))
    if first is None:
        return None, None
    if isinstance(first, dict) and first.get("v") == 1 and isinstance(first.get("known"), dict):
        known: dict[str, Entry] = {}
        for fax_id, entry in first["known"].items():
            if isinstance(entry, dict) and isinstance(entry.get("reported"), list):
                status = entry.get("status")
                reported = tuple(str(kind) for kind in entry["reported"])
                known[str(fax_id)] = (None if status is None else str(status), reported)
        return known, None
    parts = _parts_of(first)
    if parts == 1:
        known_one = _decode_groups(first)
        if known_one is not None:
            return known_one, 1
    elif parts is not None:
        merged: dict[str, Entry] = {}
        whole = True
        for index in range(parts):
            part = _decode_groups(_loaded(values.get(f"{key}.{parts}.{index}")))
            if part is None:  # deleted by hand: its faxes may be reported again
                log.warning(
                    "Outbox cursor part %d of %d is missing or unreadable: read as empty", index, parts
                )
                whole = False
                continue
            merged.update(part)
        return merged, parts if whole else None  # None: rewritten whole
    log.warning("Ignoring an outbox cursor this version cannot read: starting afresh")
    return None, None


def decode_cursor(values: Mapping[str, Any], key: str) -> dict[str, dict[str, Any]] | None:
    """The known faxes of a stored cursor (``{id: {"status", "reported"}}``) from the state store's
    values by key (JSON text or decoded) and the trigger's ``cursor_key``; None when there is none."""
    known = _decode(values, key)[0]
    if known is None:
        return None
    return {
        fax_id: {"status": status, "reported": list(reported)} for fax_id, (status, reported) in known.items()
    }


class _Parked(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
