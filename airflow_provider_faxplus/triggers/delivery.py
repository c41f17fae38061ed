"""FaxDeliveryTrigger: FaxDeliverySensor's wait in the triggerer.

While the fax is in the outbox it rides the account's shared outbox poll (outbox_poll.py: one list per
account and interval for every waiting trigger); once it has left, it looks for the sent record (by the
outbox id, else by fields: delivery.py) at each interval until it is there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_faxplus import delivery, protocol, records
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusError, FaxPlusNotFoundError
from airflow_provider_faxplus.records import FaxRecord
from airflow_provider_faxplus.triggers.outbox_poll import AccountPoll, ListUnavailable, account_poll
from airflow_provider_faxplus.triggers.session import (
    _exchange,
    _Lease,
    _redacted,
    access_token,
    fetch_outbox_fax,
    load_connection,
)

log = logging.getLogger(__name__)

# Pages of *List fax records* read for one match by fields (50 records each): far more than the sent
# faxes of a few minutes; past it the look fails rather than miss the record.
MAX_PAGES = 40


class FaxDeliveryTrigger(BaseTrigger):
    """Fire once the fax's sent record is found: ``{"status": "found", "result": <the sensor's XCom>}``,
    or ``{"status": "error", "kind": "ambiguous" | "fatal" | "config", "message"}``."""

    def __init__(
        self,
        *,
        outbox_fax_id: str,
        user_id: str,
        faxplus_conn_id: str,
        poke_interval: float,
        sent: dict[str, Any],
        left: bool = False,
    ) -> None:
        super().__init__()
        self.outbox_fax_id = outbox_fax_id
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.poke_interval = float(poke_interval)
        self.sent = dict(sent)
        self.left = bool(left)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "outbox_fax_id": self.outbox_fax_id,
                "user_id": self.user_id,
                "faxplus_conn_id": self.faxplus_conn_id,
                "poke_interval": self.poke_interval,
                "sent": self.sent,
                "left": self.left,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        config: FaxPlusConfig | None = None
        try:
            config = await load_connection(self.faxplus_conn_id)
            async with account_poll(config, self.user_id) as poll:
                yield TriggerEvent(await self._wait(poll, config))
        except FaxPlusError as exc:
            kind = "fatal" if protocol.is_permanent(exc) or config is None else "error"
            yield TriggerEvent({"status": "error", "kind": kind, "message": _redacted(str(exc), config)})

    async def _wait(self, poll: AccountPoll, config: FaxPlusConfig) -> dict[str, Any]:
        due = time.monotonic()
        while True:
            try:
                result = await self._look(poll, config, due)
            except delivery.AmbiguousRecordError as exc:
                return {"status": "error", "kind": "ambiguous", "message": str(exc)}
            except FaxPlusError as exc:
                if not protocol.is_retryable(exc):
                    raise
                log.info("transient error, will look again in %g s: %s", self.poke_interval, exc)
                result = None
            if result is not None:
                return {"status": "found", "result": result}
            due = time.monotonic() + self.poke_interval
            if self.left:
                await asyncio.sleep(self.poke_interval)

    async def _look(self, poll: AccountPoll, config: FaxPlusConfig, due: float) -> dict[str, Any] | None:
        lease = poll.lease
        token = await access_token(lease, config)
        if not self.left:
            outbox = None
            try:
                snapshot = await poll.snapshot(due=due, interval=self.poke_interval)
                outbox = snapshot.records.get(self.outbox_fax_id)
            except ListUnavailable:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                try:
                    outbox = await fetch_outbox_fax(lease, config, self.outbox_fax_id, self.user_id, token)
                except FaxPlusNotFoundError:
                    outbox = None
            if outbox is not None:
                seen = delivery.SentFax.from_outbox(outbox)
                self.sent = seen.merged(delivery.SentFax.from_dict(self.sent)).to_dict()
                if outbox.in_outbox_state:
                    return None
            self.left = True
            log.info("outbox fax %r has left the outbox; looking for its sent record", self.outbox_fax_id)
        sent = delivery.SentFax.from_dict(self.sent)
        try:
            by_id = await self._fetch_record(lease, config, token)
            match: delivery.Match | None = delivery.match_by_id(by_id, sent)
        except FaxPlusNotFoundError:
            match = None
        if match is None and sent.fields_known():
            match = delivery.match_by_fields(await self._list_sent(lease, config, token, sent), sent)
        return None if match is None else delivery.delivery_xcom(match, sent)

    async def _call(
        self, lease: _Lease, config: FaxPlusConfig, token: str, call: protocol.ApiCall
    ) -> tuple[int, dict[str, str], bytes]:
        return await _exchange(
            lease,
            config,
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

    async def _fetch_record(self, lease: _Lease, config: FaxPlusConfig, token: str) -> FaxRecord:
        call = records.get_fax_call(config, self.outbox_fax_id, self.user_id)
        status, headers, body = await self._call(lease, config, token, call)
        return records.parse_get_fax_response(config, call, status, headers, body)

    async def _list_sent(
        self, lease: _Lease, config: FaxPlusConfig, token: str, sent: delivery.SentFax
    ) -> list[FaxRecord]:
        assert sent.submitted_at is not None
        after = records.format_api_time("after", sent.submitted_at - delivery.SUBMIT_TOLERANCE)
        found: list[FaxRecord] = []
        for page in range(MAX_PAGES):
            call = records.list_faxes_call(
                config, "sent", after=after, offset=page * records.PAGE_SIZE, user_id=self.user_id
            )
            status, headers, body = await self._call(lease, config, token, call)
            batch = records.parse_list_faxes_response(config, call, status, headers, body)
            found += batch
            if len(batch) < records.PAGE_SIZE:
                return found
        raise delivery.AmbiguousRecordError(
            f"outbox fax {self.outbox_fax_id!r}: more than {MAX_PAGES * records.PAGE_SIZE} sent records "
            f"since {after}: too many to match it by its fields"
        )
