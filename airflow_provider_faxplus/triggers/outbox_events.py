"""OutboxEventTrigger: faxes entering and leaving the outbox, as asset events of an ``AssetWatcher``.

Needs Airflow 3 (``BaseEventTrigger``); Airflow 2 has no asset watchers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from airflow import __version__ as _airflow_version

try:
    from airflow.triggers.base import BaseEventTrigger, TriggerEvent
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

EVENTS = ("entered", "left")
CURSOR_VERSION = 1
# Airflow's triggerer hands yielded events to its supervisor about once a second; the cursor is written
# only after that, so a triggerer stopped in between reports the event again rather than never.
SETTLE_SECONDS = 3.0
# Known faxes missing from a list answer, confirmed gone with one GET each, at most this many per tick.
CONFIRM_PER_TICK = 50
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


_MEMORY = MemoryCursorStore()


class OutboxEventTrigger(BaseEventTrigger):
    """Watches the outbox of ``user_id`` through connection ``faxplus_conn_id`` (one *List outgoing
    faxes* per ``poll_interval``, shared with every sensor and watcher of that account in the triggerer)
    and yields one event per fax and kind: ``entered`` when a fax appears in the outbox, ``left`` when
    it is gone from it.

    Event payload: ``outbox_fax_id``, ``user_id``, ``event``, ``status`` (the last status seen),
    ``record`` (the JSON-safe record last seen), ``detected_at`` (ISO-8601 UTC).

    What was reported (the cursor) is kept in the watched asset's ``asset_state_store`` (Airflow 3.3.2+),
    so a restarted triggerer reports each fax and event once; elsewhere (older Airflow, a watcher of
    several assets, a trigger outside a watcher) it is kept in memory and lost when the triggerer
    restarts: faxes present then count as already in the outbox.

    :param report_existing: required, so the choice is explicit. With no cursor yet (the first start),
        whether faxes already in the outbox are reported as ``entered`` (True) or taken as the starting
        point (False; they are still reported when they leave).
    :param user_id: whose outbox (``self``: the token's user).
    :param faxplus_conn_id: the ``faxplus`` connection, read in the triggerer.
    :param events: which kinds to report: ``entered``, ``left`` or both (default).
    :param poll_interval: seconds between list calls; transient errors back off from it.
    """

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
            or poll_interval <= 0
        ):
            raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        self.report_existing = report_existing
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.events = [kind for kind in EVENTS if kind in chosen]
        self.poll_interval = float(poll_interval)
        self._report_existing = report_existing
        self._loaded = False  # the stored cursor has been read
        # What this process has reported (None: nothing yet and no stored cursor), and what the store
        # holds as far as this process knows.
        self._known: dict[str, dict[str, Any]] | None = None
        self._stored: dict[str, dict[str, Any]] | None = None
        # States not yet stored, each with the monotonic time from which it may be.
        self._unstored: list[tuple[float, dict[str, dict[str, Any]]]] = []
        self._write_failures = 0
        self._write_retry_at = -math.inf
        self._failures = 0
        self._last_seen: dict[str, OutboxFax] = {}  # a "left" event carries the fax's last record

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

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Never returns on its own (Airflow starts a returned watcher again at once): a refused token or
        list call is logged once as an error, then the trigger waits for the connection to change. Any
        other failure (the state store unreachable included) backs off, growing while it lasts."""
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
        config: FaxPlusConfig | None = None
        while True:
            try:
                if not self._loaded:
                    self._known = self._stored = _read_cursor(await store.aget(self.cursor_key))
                    self._loaded = True
                    if self._known is not None:
                        log.info(
                            "Resuming the outbox of %r: %d faxes already known",
                            self.user_id,
                            len(self._known),
                        )
                if config is None:
                    config = await load_connection(self.faxplus_conn_id)
                async for event in self._watch(config, store):
                    yield event
            except _Parked as parked:
                config = await self._park(parked.reason, config)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except FaxPlusError as exc:  # the connection cannot be read or used
                config = await self._park(_redacted(str(exc), config), config)
            except Exception as exc:
                from airflow.exceptions import AirflowNotFoundException

                if isinstance(exc, AirflowNotFoundException):
                    reason = f"the connection {self.faxplus_conn_id!r} is not visible to the triggerer"
                    config = await self._park(reason, None)
                else:  # the state store, a bug or an unforeseen answer: back off, never a hot loop
                    self._failures += 1
                    wait = max(self.poll_interval, backoff_seconds(self._failures, 1.0))
                    log.error(
                        "OutboxEventTrigger for the outbox of %r failed, again in %.0f s: %s",
                        self.user_id,
                        wait,
                        _redacted(f"{type(exc).__name__}: {exc}", config),
                    )
                    await asyncio.sleep(wait)

    async def _park(self, reason: str, config: FaxPlusConfig | None) -> FaxPlusConfig:
        """Log the refusal once, then read the connection every ``PARKED_RECHECK_SECONDS`` (no API
        call) until it differs from the refused one."""
        log.error(
            "OutboxEventTrigger for the outbox of %r stops polling: %s. It polls again once connection "
            "%r changes.",
            self.user_id,
            reason,
            self.faxplus_conn_id,
        )
        while True:
            await asyncio.sleep(max(PARKED_RECHECK_SECONDS, self.poll_interval))
            try:
                fresh = await load_connection(self.faxplus_conn_id)
            except Exception as exc:  # still unusable: keep waiting
                log.debug(
                    "Connection %r still unusable: %s", self.faxplus_conn_id, _redacted(str(exc), config)
                )
                continue
            if fresh != config:
                log.info("Connection %r changed: polling the outbox again", self.faxplus_conn_id)
                return fresh

    async def _watch(self, config: FaxPlusConfig, store: CursorStore) -> AsyncIterator[TriggerEvent]:
        failures = 0
        renewed = False
        due = time.monotonic()
        async with account_poll(config, self.user_id) as poll:
            while True:
                try:
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
                    failures += 1
                    wait = max(
                        self.poll_interval, backoff_seconds(failures, config.initial_backoff, exc.retry_after)
                    )
                    log.warning(
                        "Transient error #%d, listing the outbox again in %.1f s: %s", failures, wait, exc
                    )
                    await self._wait_writing(store, time.monotonic() + wait)
                    due = time.monotonic()
                    continue
                failures = 0
                renewed = False
                fired, after = self.compare(self._known, snapshot, gone)
                for payload in fired:
                    log.info(
                        "Outbox fax %s %s the outbox of %r",
                        payload["outbox_fax_id"],
                        payload["event"],
                        self.user_id,
                    )
                    yield TriggerEvent(payload)
                if after != self._known:
                    # Reported by this process from now on, whatever the store says; stored once Airflow
                    # has had the time to take the events (a triggerer stopped before reports them again).
                    self._known = after
                    self._queue(after, settle=bool(fired))
                due = snapshot.started_at + self.poll_interval
                await self._wait_writing(store, due)
                self._failures = 0  # a whole tick went through: run()'s back-off starts afresh

    def _queue(self, state: dict[str, dict[str, Any]], *, settle: bool) -> None:
        """A state to store once its events have settled, and never sooner than an earlier state: each
        state holds the events of those before it."""
        at = time.monotonic() + (SETTLE_SECONDS if settle else 0.0)
        if self._unstored:
            at = max(at, self._unstored[-1][0])
        self._unstored.append((at, state))

    async def _wait_writing(self, store: CursorStore, until: float) -> None:
        """Sleep until ``until`` (monotonic), writing the cursor whenever a state has settled meanwhile;
        a failed write is retried with a growing back-off, and never delays the polls."""
        while True:
            now = time.monotonic()
            if self._unstored and self._unstored[0][0] <= now and self._write_retry_at <= now:
                await self._write_settled(store, now)
                continue
            if now >= until:
                return
            wake = until
            if self._unstored:
                wake = min(wake, max(self._unstored[0][0], self._write_retry_at))
            await asyncio.sleep(max(0.0, wake - now))

    async def _write_settled(self, store: CursorStore, now: float) -> None:
        ready = [state for at, state in self._unstored if at <= now]
        latest = ready[-1]
        try:
            if latest != self._stored:
                await store.aset(self.cursor_key, {"v": CURSOR_VERSION, "known": latest})
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            self._write_failures += 1
            # Only the latest settled state is worth writing: keep one, not one per tick of the outage.
            del self._unstored[: len(ready) - 1]
            wait = backoff_seconds(self._write_failures, 1.0)
            self._write_retry_at = now + wait
            log.warning(
                "Could not store the outbox cursor (failure #%d, again in %.1f s; what this triggerer "
                "reported is not reported again meanwhile): %s: %s",
                self._write_failures,
                wait,
                type(exc).__name__,
                str(exc)[:300],
            )
            return
        self._stored = latest
        self._write_failures = 0
        self._write_retry_at = -math.inf
        del self._unstored[: len(ready)]

    async def _confirm_absent(
        self, poll: AccountPoll, config: FaxPlusConfig, token: str, snapshot: OutboxSnapshot
    ) -> set[str]:
        """The known faxes missing from the list that have really left: one *Get outgoing fax* each
        (an absence from one list answer is never a verdict), at most ``CONFIRM_PER_TICK`` per tick."""
        missing = [fax_id for fax_id in (self._known or {}) if fax_id not in snapshot.records]
        gone: set[str] = set()
        for fax_id in missing[:CONFIRM_PER_TICK]:
            try:
                record = await fetch_outbox_fax(poll.lease, config, fax_id, self.user_id, token)
            except FaxPlusNotFoundError:
                gone.add(fax_id)
                continue
            log.info("Outbox fax %s is missing from a list answer but still in the outbox", fax_id)
            self._last_seen[fax_id] = record
        return gone

    def compare(
        self, known: dict[str, dict[str, Any]] | None, snapshot: OutboxSnapshot, gone: set[str]
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The events of one snapshot against the cursor, and the cursor after them. ``known`` None:
        no cursor yet (the first start); ``gone``: the known faxes missing from the snapshot whose
        absence a GET confirmed (the others stay known). The cursor: per fax in the outbox, its last
        status and the events reported for it; a fax that left is dropped (outbox ids are never reused)."""
        first = known is None
        before = known or {}
        after: dict[str, dict[str, Any]] = {}
        fired: list[dict[str, Any]] = []
        for fax_id in snapshot.records:
            record = self._record(snapshot, fax_id)
            status = None if record is None else str(record.status)
            entry = before.get(fax_id)
            reported = list(entry["reported"]) if entry else []
            if entry is None and (self._report_existing or not first) and "entered" in self.events:
                fired.append(self._payload("entered", fax_id, status, record))
                reported.append("entered")
            after[fax_id] = {"status": status, "reported": reported}
            if record is not None:
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
                    fired.append(self._payload("left", fax_id, entry.get("status"), seen))
        return fired, after

    def _record(self, snapshot: OutboxSnapshot, fax_id: str) -> OutboxFax | None:
        """The fax's record, or None when it does not parse: the fax is in the outbox all the same."""
        try:
            return snapshot.records[fax_id]
        except FaxPlusError as exc:
            log.warning("Outbox fax %s: its record in the list does not parse: %s", fax_id, exc)
            return None

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


def _read_cursor(stored: Any) -> dict[str, dict[str, Any]] | None:
    """The stored cursor, or None when there is none (or one this version cannot read: logged)."""
    if stored is None:
        return None
    if isinstance(stored, str):
        try:
            stored = json.loads(stored)
        except ValueError:
            stored = None
    if (
        isinstance(stored, dict)
        and stored.get("v") == CURSOR_VERSION
        and isinstance(stored.get("known"), dict)
    ):
        known: dict[str, dict[str, Any]] = {}
        for fax_id, entry in stored["known"].items():
            if isinstance(entry, dict) and isinstance(entry.get("reported"), list):
                known[str(fax_id)] = {"status": entry.get("status"), "reported": list(entry["reported"])}
        return known
    log.warning("Ignoring an outbox cursor this version cannot read: starting afresh")
    return None


class _Parked(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
