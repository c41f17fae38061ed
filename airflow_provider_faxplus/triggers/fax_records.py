"""FaxRecordEventTrigger: new fax records (faxes received, delivery outcomes) as asset events.

Needs Airflow 3 (``BaseEventTrigger``); Airflow 2 has no asset watchers. Its cursor is written once
Airflow acknowledged the events (:mod:`acked_cursor`); what is new is decided by :mod:`record_watch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from airflow import __version__ as _airflow_version

try:
    from airflow.triggers.base import TriggerEvent

    from airflow_provider_faxplus.triggers.acked_cursor import AckedCursorTrigger
except ImportError:  # Airflow 2.x
    raise ImportError(
        "airflow_provider_faxplus.triggers.fax_records needs Airflow 3.0 or later (asset watchers, "
        f"BaseEventTrigger); this is Airflow {_airflow_version}. On Airflow 2 list new records with "
        "FaxPlusHook.list_faxes in a scheduled DAG instead."
    ) from None

from airflow_provider_faxplus import oauth, protocol, records
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusAuthError, FaxPlusError, FaxPlusRequestError
from airflow_provider_faxplus.record_watch import (
    WATCHED,
    RecordWindow,
    diff,
    first_window,
    payload,
    refused_id,
)
from airflow_provider_faxplus.retry import backoff_seconds
from airflow_provider_faxplus.triggers.outbox_events import (
    _MEMORY,
    CursorStore,
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

PARKED_RECHECK_SECONDS = 60.0
DEFAULT_LOOKBACK = 3600.0


class FaxRecordEventTrigger(AckedCursorTrigger):
    """Watches the fax records of ``category`` for ``user_id`` (one *List fax records* per
    ``poll_interval``, paged) and yields one event per new record: ``inbox``, a fax received; ``sent``,
    the outcome of a fax sent (from Airflow or elsewhere).

    Event payload: ``fax_id``, ``user_id``, ``category``, ``status``, ``record`` (the JSON-safe record),
    ``detected_at`` (ISO-8601 UTC).

    The cursor (a time window: see :mod:`airflow_provider_faxplus.record_watch`) is kept in the watched
    asset's ``asset_state_store`` (Airflow 3.3.2+) and written once Airflow has stored the events;
    elsewhere it is kept in memory, lost when the triggerer restarts. A record is new if it appears in
    the list within ``lookback`` seconds of the newest record seen, by the server's clock (the answer's
    ``Date``); one that appears later is not reported. An id the hook would refuse yields no event (one
    warning); string fields over ``record_watch.MAX_FIELD_CHARS`` are cut.

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
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite positive number of seconds, got {value!r}")
        self.category = category
        self.report_existing = report_existing
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.poll_interval = float(poll_interval)
        self.lookback = float(lookback)
        self._report_existing = report_existing
        # What this process has reported (None: no cursor yet); it wins over the store, so a store that
        # cannot be written never makes this process report a record twice.
        self._window: RecordWindow | None = None
        self._loaded = False
        self._changed = False  # _window differs from the state last handed to the cursor
        self._store: CursorStore | None = None
        self._stored: dict[str, Any] | None = None  # the value last written
        self._config: FaxPlusConfig | None = None
        self._lease: _Lease | None = None
        self._lease_stack: contextlib.AsyncExitStack | None = None
        self._parked: str | None = None
        self._failures = 0  # turns failed in a row (the store, a bug)
        self._list_failures = 0  # lists failed in a row (transient)
        self._too_many = False  # the "more than max_records" error was logged
        self._local_clock = False  # the "no Date header" warning was logged
        self._refused: set[str] = set()  # ids the hook would refuse, warned about once

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

    def describe(self) -> str:
        return f"the {self.category} record watcher of {self.user_id!r}"

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
        if self.report_existing:
            # A memory cursor cannot tell a first start from a restart: it would report them every time.
            log.warning(
                "report_existing=True needs the asset state store: with the cursor in memory, the %s "
                "records of %r already there when this triggerer starts count as already known",
                self.category,
                self.user_id,
            )
            self._report_existing = False
        return _MEMORY

    async def poll_turn(self, due: float) -> AsyncIterator[TriggerEvent]:
        """One list and diff (see :mod:`acked_cursor`): a refused token or list is logged once as an
        error, then the turns only read the connection until it changes; any other failure backs off,
        growing while it lasts; nothing escapes."""
        if self._store is None:
            self._store = self.cursor_store()
        listed: list[records.FaxRecord] | None = None
        window: RecordWindow | None = None
        server_now = 0
        try:
            if self._parked is not None and not await self._connection_changed():
                return
            if not self._loaded:
                self._window = RecordWindow.decode(await self._store.aget(self.cursor_key))
                self._stored = None if self._window is None else self._window.encode()
                self._loaded = True
            if self._config is None:
                self._config = await load_connection(self.faxplus_conn_id)
            # A first start lists by this machine's clock; the window then comes from the server's.
            window = self._window or first_window(
                int(datetime.now(UTC).timestamp()), self.lookback, report_existing=self._report_existing
            )
            looked = await self._look(self._config, window)
            if looked is not None:
                listed, server_now = looked
                if self._window is None:
                    window = first_window(server_now, self.lookback, report_existing=self._report_existing)
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
            else:  # the state store or a bug: back off, never a hot loop
                self._failures += 1
                wait = max(self.poll_interval, backoff_seconds(self._failures, 1.0))
                log.error(
                    "FaxRecordEventTrigger (%s of %r) failed, again in %.0f s: %s",
                    self.category,
                    self.user_id,
                    wait,
                    _redacted(f"{type(exc).__name__}: {exc}", self._config),
                )
                self.resume_at = time.monotonic() + wait
        if listed is None or window is None:
            return
        fresh, after = diff(
            window, listed, lookback=self.lookback, server_now=server_now, first=self._window is None
        )
        after = after.fit(value_limit())
        detected_at = datetime.now(UTC)
        for record in fresh:
            reason = refused_id(record.id)
            if reason is not None:  # counted as seen, never an event a DAG would fail on
                if record.id not in self._refused and len(self._refused) < 1000:
                    self._refused.add(record.id)
                    log.warning(
                        "Skipping %s fax record %.80r of %r: the hook would refuse its id (%.200s)",
                        self.category,
                        record.id,
                        self.user_id,
                        reason,
                    )
                continue
            log.info("New %s fax record %s (%s) of %r", self.category, record.id, record.status, self.user_id)
            yield TriggerEvent(
                payload(record, user_id=self.user_id, category=self.category, detected_at=detected_at)
            )
        if after != self._window:
            self._window = after  # reported by this process from now on, whatever the store says
            self._changed = True
        self._failures = 0

    async def _look(
        self, config: FaxPlusConfig, window: RecordWindow
    ) -> tuple[list[records.FaxRecord], int] | None:
        """The window's records and the server's time; None after a transient error (a malformed answer
        included: nothing is concluded from it), the next turns then skipped for a growing back-off."""
        renewed = False
        while True:
            try:
                listed = await self._list(config, window)
            except _TooMany as exc:
                wait = max(self.poll_interval, PARKED_RECHECK_SECONDS)
                if not self._too_many:
                    self._too_many = True
                    log.error(
                        "FaxRecordEventTrigger (%s of %r) cannot list its records: %s. %s Listing again "
                        "every %.0f s.",
                        self.category,
                        self.user_id,
                        exc,
                        "Use report_existing=False, or delete old records."
                        if window.horizon is None
                        else "Lower lookback.",
                        wait,
                    )
                self.resume_at = time.monotonic() + wait
                return None
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
                self._list_failures += 1
                wait = max(
                    self.poll_interval,
                    backoff_seconds(self._list_failures, config.initial_backoff, exc.retry_after),
                )
                log.warning(
                    "Transient error #%d, listing %s records again in %.1f s: %s",
                    self._list_failures,
                    self.category,
                    wait,
                    exc,
                )
                self.resume_at = time.monotonic() + wait
                return None
            self._list_failures = 0
            self._too_many = False
            return listed

    async def _list(self, config: FaxPlusConfig, window: RecordWindow) -> tuple[list[records.FaxRecord], int]:
        """Every record of the window (records.FaxListPager: paged to the end, never shortened) and the
        server's time of the first page (its ``Date``; this machine's clock without one)."""
        if self._lease is None:
            stack = contextlib.AsyncExitStack()
            self._lease = await stack.enter_async_context(shared_session(config))
            self._lease_stack = stack
        lease = self._lease
        pager = records.FaxListPager(config, self.category, after=window.after(), user_id=self.user_id)
        server_now: int | None = None
        while not pager.done:
            call = pager.call()
            status, headers, body = await send_call(lease, config, call, await access_token(lease, config))
            if server_now is None:
                server_now = self._server_time(headers)
            try:
                pager.feed(call, status, headers, body)
            except FaxPlusRequestError:
                if len(pager.found) > pager.max_records:
                    raise _TooMany(
                        f"more than {pager.max_records:,} {self.category} records to list"
                        + (" (report_existing=True lists every record)" if window.horizon is None else "")
                    ) from None
                raise
        assert server_now is not None
        return list(pager.found.values()), server_now

    def _server_time(self, headers: Mapping[str, str]) -> int:
        value = next((v for k, v in headers.items() if k.lower() == "date"), None)
        try:
            return int(parsedate_to_datetime(value).timestamp()) if value else self._local_time()
        except (TypeError, ValueError):
            return self._local_time()

    def _local_time(self) -> int:
        if not self._local_clock:
            self._local_clock = True
            log.warning(
                "The %s list answer has no usable Date header: new records are decided by this machine's "
                "clock",
                self.category,
            )
        return int(datetime.now(UTC).timestamp())

    async def close_turns(self) -> None:
        stack, self._lease_stack, self._lease = self._lease_stack, None, None
        if stack is not None:
            await stack.aclose()

    def take_cursor_state(self) -> RecordWindow | None:
        if not self._changed or self._window is None:
            return None
        self._changed = False
        return self._window

    async def save_cursor(self, state: RecordWindow) -> None:
        assert self._store is not None  # a state exists only after a turn
        value = state.encode()
        if value == self._stored:
            return
        size = len(json.dumps(value))
        if size > value_limit():
            log.warning(
                "The %s record cursor of %r is %d bytes, over the state store's max_value_storage_bytes "
                "(%d): lower lookback",
                self.category,
                self.user_id,
                size,
                value_limit(),
            )
        await self._store.aset(self.cursor_key, value)
        self._stored = value

    async def _park(self, reason: str) -> None:
        """Log the refusal once; then every ``PARKED_RECHECK_SECONDS`` a turn reads the connection (no
        API call) until it differs from the refused one."""
        log.error(
            "FaxRecordEventTrigger (%s of %r) stops polling: %s. It polls again once connection %r changes.",
            self.category,
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
        log.info("Connection %r changed: listing fax records again", self.faxplus_conn_id)
        self._config, self._parked = fresh, None
        self.resume_at = -math.inf
        return True


class _TooMany(Exception):
    """The list holds more records than the pager takes."""


class _Parked(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
