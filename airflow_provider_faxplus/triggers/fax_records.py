"""FaxRecordEventTrigger: new fax records (faxes received, delivery outcomes) as asset events.

Needs Airflow 3 (``BaseEventTrigger``); Airflow 2 has no asset watchers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow import __version__ as _airflow_version

try:
    from airflow.triggers.base import BaseEventTrigger, TriggerEvent
except ImportError:  # Airflow 2.x
    raise ImportError(
        "airflow_provider_faxplus.triggers.fax_records needs Airflow 3.0 or later (asset watchers, "
        f"BaseEventTrigger); this is Airflow {_airflow_version}. On Airflow 2 list new records with "
        "FaxPlusHook.list_faxes in a scheduled DAG instead."
    ) from None

from airflow_provider_faxplus import oauth, protocol, records
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusAuthError, FaxPlusError, FaxPlusRequestError
from airflow_provider_faxplus.record_watch import WATCHED, RecordWindow, diff, first_window, payload
from airflow_provider_faxplus.retry import backoff_seconds
from airflow_provider_faxplus.triggers.outbox_events import (
    _MEMORY,
    CursorStore,
    MemoryCursorStore,
    value_limit,
)
from airflow_provider_faxplus.triggers.session import (
    _Lease,
    _redacted,
    access_token,
    load_connection,
    send_call,
    shared_session,
)

log = logging.getLogger(__name__)

# As OutboxEventTrigger's: the cursor is written only once Airflow has had the time to take the events
# (its triggerer hands them to the supervisor about once a second); stopped before, it reports them again.
SETTLE_SECONDS = 3.0
PARKED_RECHECK_SECONDS = 60.0
DEFAULT_LOOKBACK = 3600.0


class FaxRecordEventTrigger(BaseEventTrigger):
    """Watches the fax records of ``category`` for ``user_id`` (one *List fax records* per
    ``poll_interval``, paged) and yields one event per new record: ``inbox``, a fax received; ``sent``,
    the outcome of a fax sent (from Airflow or elsewhere).

    Event payload: ``fax_id``, ``user_id``, ``category``, ``status``, ``record`` (the JSON-safe record),
    ``detected_at`` (ISO-8601 UTC).

    The cursor (a time window: see :mod:`airflow_provider_faxplus.record_watch`) is kept in the watched
    asset's ``asset_state_store`` (Airflow 3.3.2+); elsewhere in memory, lost when the triggerer
    restarts. A record is new if it appears in the list within ``lookback`` seconds of the newest record
    seen; one that appears later than that is not reported.

    :param category: ``inbox`` or ``sent``.
    :param report_existing: required, so the choice is explicit. With no cursor yet (the first start),
        whether the records already there are reported (True: every record of the category) or taken as
        the starting point (False).
    :param user_id: whose records (``self``: the token's user).
    :param faxplus_conn_id: the ``faxplus`` connection, read in the triggerer.
    :param poll_interval: seconds between lists; transient errors back off from it.
    :param lookback: seconds a record may take to appear in the list after its own time (its
        ``start_time``) and still be reported.
    """

    def __init__(
        self,
        *,
        category: str,
        report_existing: bool,
        user_id: str = "self",
        faxplus_conn_id: str = "faxplus_default",
        poll_interval: float = 60.0,
        lookback: float = DEFAULT_LOOKBACK,
    ) -> None:
        super().__init__()
        if category not in WATCHED:
            raise ValueError(f"category must be one of {list(WATCHED)}, got {category!r}")
        if not isinstance(report_existing, bool):
            raise ValueError(f"report_existing must be True or False, got {report_existing!r}")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"user_id must be a non-empty string, got {user_id!r}")
        if not isinstance(faxplus_conn_id, str) or not faxplus_conn_id:
            raise ValueError(f"faxplus_conn_id must be a non-empty string, got {faxplus_conn_id!r}")
        for name, value in (("poll_interval", poll_interval), ("lookback", lookback)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.category = category
        self.report_existing = report_existing
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.poll_interval = float(poll_interval)
        self.lookback = float(lookback)
        self._report_existing = report_existing
        # What this process has reported (None: no cursor read yet); it wins over the store, so a store
        # that cannot be written never makes this process report a record twice.
        self._window: RecordWindow | None = None
        self._loaded = False
        self._unstored: tuple[float, RecordWindow] | None = None  # latest state to store, and from when
        self._stored: dict[str, Any] | None = None
        self._write_failures = 0
        self._write_retry_at = -math.inf
        self._failures = 0

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "category": self.category,
                "report_existing": self.report_existing,
                "user_id": self.user_id,
                "faxplus_conn_id": self.faxplus_conn_id,
                "poll_interval": self.poll_interval,
                "lookback": self.lookback,
            },
        )

    @property
    def cursor_key(self) -> str:
        identity = json.dumps([self.faxplus_conn_id, self.user_id, self.category])
        return "faxplus.fax_records." + hashlib.sha256(identity.encode()).hexdigest()[:32]

    def cursor_store(self) -> CursorStore:
        """The watched asset's state store where Airflow gives one with async access, else memory."""
        store = getattr(self, "asset_state_store", None)
        if store is not None and hasattr(store, "aget") and hasattr(store, "aset"):
            if getattr(store, "_total", 1) == 1:
                return store  # type: ignore[no-any-return]
            log.warning("This watcher watches several assets: the fax record cursor is kept in memory")
        else:
            log.warning(
                "No asset state store with async access (Airflow 3.3.2+ in an AssetWatcher): the fax "
                "record cursor is kept in memory and lost when the triggerer restarts"
            )
        return _MEMORY

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Never returns on its own: a refused token or list is logged once as an error, then the trigger
        waits for the connection to change; any other failure backs off, growing while it lasts."""
        store = self.cursor_store()
        if isinstance(store, MemoryCursorStore) and self.report_existing:
            log.warning(
                "report_existing=True needs the asset state store: with the cursor in memory, the %s "
                "records of %r already there when this triggerer starts count as already known",
                self.category,
                self.user_id,
            )
            self._report_existing = False
        config: FaxPlusConfig | None = None
        while True:
            try:
                if not self._loaded:
                    stored = await store.aget(self.cursor_key)
                    self._window = RecordWindow.decode(stored)
                    self._stored = None if self._window is None else self._window.encode()
                    self._loaded = True
                if config is None:
                    config = await load_connection(self.faxplus_conn_id)
                async for event in self._watch(config, store):
                    yield event
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except _Parked as parked:
                config = await self._park(parked.reason, config)
            except FaxPlusError as exc:  # the connection cannot be read or used
                config = await self._park(_redacted(str(exc), config), config)
            except Exception as exc:
                from airflow.exceptions import AirflowNotFoundException

                if isinstance(exc, AirflowNotFoundException):
                    reason = f"the connection {self.faxplus_conn_id!r} is not visible to the triggerer"
                    config = await self._park(reason, None)
                    continue
                self._failures += 1  # the state store, or a bug: back off, never a hot loop
                wait = max(self.poll_interval, backoff_seconds(self._failures, 1.0))
                log.error(
                    "FaxRecordEventTrigger (%s of %r) failed, again in %.0f s: %s",
                    self.category,
                    self.user_id,
                    wait,
                    _redacted(f"{type(exc).__name__}: {exc}", config),
                )
                await asyncio.sleep(wait)

    async def _park(self, reason: str, config: FaxPlusConfig | None) -> FaxPlusConfig:
        log.error(
            "FaxRecordEventTrigger (%s of %r) stops polling: %s. It polls again once connection %r changes.",
            self.category,
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
                log.info("Connection %r changed: listing fax records again", self.faxplus_conn_id)
                return fresh

    async def _watch(self, config: FaxPlusConfig, store: CursorStore) -> AsyncIterator[TriggerEvent]:
        failures = 0
        renewed = False
        async with shared_session(config) as lease:
            while True:
                started = time.monotonic()
                baseline = self._window is None and not self._report_existing
                window = self._window or first_window(
                    datetime.now(UTC), self.lookback, report_existing=self._report_existing
                )
                try:
                    listed = await self._list(lease, config, window)
                except FaxPlusRequestError as exc:
                    if isinstance(exc, FaxPlusAuthError) and exc.status == 401:
                        if config.uses_oauth_refresh and not oauth.is_token_error(exc) and not renewed:
                            renewed = True  # the access token expired early: refresh it once
                            refused = oauth.source_for(config).valid_token()
                            if refused:
                                oauth.source_for(config).invalidate(refused)
                            continue
                        raise _Parked(_redacted(str(exc), config)) from None
                    if protocol.is_permanent(exc):
                        raise _Parked(_redacted(str(exc), config)) from None
                    # A malformed answer (a proxy's HTML page) included: nothing is concluded from it.
                    failures += 1
                    wait = max(
                        self.poll_interval, backoff_seconds(failures, config.initial_backoff, exc.retry_after)
                    )
                    log.warning(
                        "Transient error #%d, listing %s records again in %.1f s: %s",
                        failures,
                        self.category,
                        wait,
                        exc,
                    )
                    await self._wait_writing(store, time.monotonic() + wait)
                    continue
                failures = 0
                renewed = False
                fresh, after = diff(window, listed, lookback=self.lookback, baseline=baseline)
                detected_at = datetime.now(UTC)
                for record in fresh:
                    log.info(
                        "New %s fax record %s (%s) of %r",
                        self.category,
                        record.id,
                        record.status,
                        self.user_id,
                    )
                    yield TriggerEvent(
                        payload(record, user_id=self.user_id, category=self.category, detected_at=detected_at)
                    )
                if after != self._window:
                    self._window = after
                    self._queue(after, settle=bool(fresh))
                await self._wait_writing(store, started + self.poll_interval)
                self._failures = 0

    async def _list(
        self, lease: _Lease, config: FaxPlusConfig, window: RecordWindow
    ) -> list[records.FaxRecord]:
        """Every record of the window (records.FaxListPager: paged to the end, never shortened)."""
        pager = records.FaxListPager(config, self.category, after=window.after(), user_id=self.user_id)
        while not pager.done:
            call = pager.call()
            pager.feed(call, *await send_call(lease, config, call, await access_token(lease, config)))
        return list(pager.found.values())

    def _queue(self, state: RecordWindow, *, settle: bool) -> None:
        """The latest state to store, from when it may be (each state holds those before it)."""
        at = time.monotonic() + (SETTLE_SECONDS if settle else 0.0)
        if self._unstored is not None:
            at = max(at, self._unstored[0])
        self._unstored = (at, state)

    async def _wait_writing(self, store: CursorStore, until: float) -> None:
        """Sleep until ``until`` (monotonic), writing the settled cursor meanwhile; a failed write is
        retried with a growing back-off and never delays the lists."""
        while True:
            now = time.monotonic()
            if self._unstored is not None and self._unstored[0] <= now and self._write_retry_at <= now:
                await self._write(store, now)
                continue
            if now >= until:
                return
            wake = until
            if self._unstored is not None:
                wake = min(wake, max(self._unstored[0], self._write_retry_at))
            await asyncio.sleep(max(0.0, wake - now))

    async def _write(self, store: CursorStore, now: float) -> None:
        assert self._unstored is not None
        state = self._unstored[1]
        value = state.encode()
        try:
            if value != self._stored:
                size = len(json.dumps(value))
                if size > value_limit():
                    log.warning(
                        "The %s record cursor of %r is %d bytes, over the state store's "
                        "max_value_storage_bytes (%d): lower lookback",
                        self.category,
                        self.user_id,
                        size,
                        value_limit(),
                    )
                await store.aset(self.cursor_key, value)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            self._write_failures += 1
            wait = backoff_seconds(self._write_failures, 1.0)
            self._write_retry_at = now + wait
            log.warning(
                "Could not store the %s record cursor (failure #%d, again in %.1f s; what this triggerer "
                "reported is not reported again meanwhile): %s: %s",
                self.category,
                self._write_failures,
                wait,
                type(exc).__name__,
                str(exc)[:300],
            )
            return
        self._stored = value
        self._write_failures = 0
        self._write_retry_at = -math.inf
        if self._unstored is not None and self._unstored[1] is state:
            self._unstored = None


class _Parked(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
