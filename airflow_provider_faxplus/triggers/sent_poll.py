"""The account's sent fax records, listed once per tick for every delivery trigger of an event loop.

One :class:`SentRecordsPoll` per account (as ``outbox_poll``'s), on the tick of ``shared_poll``. Each
trigger waiting for a sent record says from when it needs the records (:meth:`SentRecordsPoll.want`: its
fax's submit time, less the matching tolerance); a tick lists the ``sent`` records since the earliest of
those within :data:`SHARED_SPAN` of the latest, page by page, and indexes them by id and by destination,
so that each trigger finds its record among thousands without reading them all. A fax submitted longer
ago than that (a cleared task, a rerun) does not widen the listing of every other trigger: it lists its
own (:meth:`SentRecordsPoll.list_alone`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pendulum import DateTime

from airflow_provider_faxplus import protocol, records
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusError, FaxPlusResponseError
from airflow_provider_faxplus.models import format_utc
from airflow_provider_faxplus.records import FaxRecord
from airflow_provider_faxplus.triggers.outbox_poll import MalformedListAnswer, poll_key
from airflow_provider_faxplus.triggers.session import _exchange, _Lease, access_token, shared_session
from airflow_provider_faxplus.triggers.shared_poll import SharedPoll, held

log = logging.getLogger(__name__)

# A listing that would hold more sent records than this stops: a transient failure of that look (the
# waiters try again at their next interval), never a verdict. A window of a few minutes holds far fewer
# (10,000 in one window lists in 200 pages).
MAX_RECORDS = 50_000
# The shared listing reaches back this far from the latest fax waited on; an older one lists alone.
SHARED_SPAN = timedelta(hours=1)


class ListingTooLarge(FaxPlusError):
    """More than :data:`MAX_RECORDS` sent records in a window: this look failed, nothing is decided."""


@dataclass(frozen=True)
class SentSnapshot:
    """One listing of the ``sent`` records of ``user_id`` since ``after``."""

    user_id: str
    started_at: float  # time.monotonic() when the first page was asked for
    after: DateTime
    by_id: Mapping[str, FaxRecord]
    by_to: Mapping[str | None, list[FaxRecord]]
    pages: int

    def covers(self, after: DateTime) -> bool:
        return self.after <= after


class SentRecordsPoll(SharedPoll[SentSnapshot]):
    """The shared *List fax records* (``sent``) poll of one account; see :func:`sent_records_poll`."""

    def __init__(self, lease: _Lease, config: FaxPlusConfig, user_id: str) -> None:
        super().__init__(lease)
        self.config = config
        self.user_id = user_id
        self._wanted: dict[object, DateTime] = {}

    @property
    def shared(self) -> bool:
        return True  # one listing serves a lone trigger as well as a GET and a listing would

    def want(self, after: DateTime) -> object:
        """Ask that the listings cover the records since ``after``; the handle is for :meth:`unwant`."""
        handle = object()
        self._wanted[handle] = after
        return handle

    def unwant(self, handle: object) -> None:
        self._wanted.pop(handle, None)

    def shared_after(self) -> DateTime:
        """From when the shared listing lists: the earliest wanted time within SHARED_SPAN of the latest."""
        latest = max(self._wanted.values())
        return min(after for after in self._wanted.values() if after >= latest - SHARED_SPAN)

    async def _list(self, started_at: float) -> SentSnapshot:
        if not self._wanted:
            raise RuntimeError("a sent-records tick with nobody wanting records")
        return await self._list_since(self.shared_after(), started_at)

    async def list_alone(self, after: DateTime) -> SentSnapshot:
        """The sent records since ``after`` for one trigger, outside the tick (older than the shared span)."""
        return await self._list_since(after, time.monotonic())

    async def _list_since(self, after: DateTime, started_at: float) -> SentSnapshot:
        after_s = records.format_api_time("after", after)
        by_id: dict[str, FaxRecord] = {}
        by_to: dict[str | None, list[FaxRecord]] = {}
        offset = pages = 0
        while True:
            call = records.list_faxes_call(
                self.config, "sent", after=after_s, offset=offset, user_id=self.user_id
            )
            token = await access_token(self.lease, self.config)
            self.requests_sent += 1
            pages += 1
            status, headers, body = await self._send(call, token)
            try:
                page = records.parse_list_faxes_response(self.config, call, status, headers, body)
            except FaxPlusResponseError as exc:  # e.g. a proxy's HTML page: every waiter tries again
                raise MalformedListAnswer(exc) from None
            new = [record for record in page if record.id not in by_id]
            if page and not new:
                raise FaxPlusResponseError(
                    f"{call.describe()} answered offset {offset} with records already listed: the server "
                    "does not page by offset, so the sent records cannot be listed",
                    operation=call.operation.name,
                    method=call.method,
                    path=call.path,
                    status=status,
                )
            for record in new:
                by_id[record.id] = record
                by_to.setdefault(record.to, []).append(record)
            # Only an empty page ends the listing (a server may cap its pages below the size asked).
            if not page:
                break
            offset += len(page)
            if len(by_id) > MAX_RECORDS:
                raise ListingTooLarge(
                    f"more than {MAX_RECORDS:,} sent fax records of user {self.user_id!r} since "
                    f"{format_utc(after)}: too many to look for the faxes waited on among them; "
                    "trying again at the next interval"
                )
            await asyncio.sleep(0)  # the other triggers run between pages
        log.debug("listed %d sent records since %s in %d page(s)", len(by_id), after_s, pages)
        return SentSnapshot(self.user_id, started_at, after, by_id, by_to, pages)

    async def _send(self, call: protocol.ApiCall, token: str) -> tuple[int, dict[str, str], bytes]:
        lease = self.lease
        return await _exchange(
            lease,
            self.config,
            call.method,
            call.url,
            headers={**call.headers, "Authorization": f"Bearer {token}"},
            data=None,
            proxy=lease.proxy,
            transport_error=lambda reason: protocol.transport_error(call, reason),
            tls_error=lambda reason: protocol.tls_error(call, lease.tls, reason),
            max_bytes=call.operation.max_answer_bytes,
            too_large=lambda status: protocol.answer_too_large(
                call.operation.name, call.method, call.path, status, call.operation.max_answer_bytes
            ),
        )


_POLLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def sent_records_poll(config: FaxPlusConfig, user_id: str) -> AsyncIterator[SentRecordsPoll]:
    """The event loop's poll of ``user_id``'s sent records through connection ``config``, held while in
    use; one per account (the outbox poll's key)."""
    async with shared_session(config) as lease:
        make = lambda: SentRecordsPoll(lease, config, user_id)  # noqa: E731
        async with held(_POLLS, poll_key(config, user_id), lease, make) as poll:
            yield poll
