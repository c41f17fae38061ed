"""FaxDeliveryTrigger: FaxDeliverySensor's wait in the triggerer.

While the fax is in the outbox it rides the account's shared outbox poll (outbox_poll.py: one list per
account and interval for every waiting trigger); once it has left, it looks for the sent record in the
account's shared listing of sent records (sent_poll.py: one listing per account and interval for every
delivery trigger), or, with no fields to match by, by the outbox id alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_faxplus import delivery, oauth, protocol, records
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.constants import DEFAULT_NOT_FOUND_GRACE_PERIOD
from airflow_provider_faxplus.exceptions import FaxPlusAuthError, FaxPlusError, FaxPlusNotFoundError
from airflow_provider_faxplus.records import FaxRecord
from airflow_provider_faxplus.retry import backoff_seconds
from airflow_provider_faxplus.triggers.outbox_poll import AccountPoll, ListUnavailable, account_poll
from airflow_provider_faxplus.triggers.sent_poll import ListingTooLarge, SentRecordsPoll, sent_records_poll
from airflow_provider_faxplus.triggers.session import (
    _exchange,
    _Lease,
    _redacted,
    access_token,
    fetch_outbox_fax,
    load_connection,
)
from airflow_provider_faxplus.waiting import WaitPolicy, WaitProgress, observe_not_found

log = logging.getLogger(__name__)


class FaxDeliveryTrigger(BaseTrigger):
    """Fire once the fax's sent record is found: ``{"status": "found", "result": <the sensor's XCom>}``;
    ``{"status": "checkpoint", "sent", "left_at", "deferred_at"}`` when it saw the fax leave and what it
    learned must outlive a triggerer restart (the sensor defers again with it); or ``{"status": "error",
    "kind": "ambiguous" | "fatal" | "config", "message"}``.

    A 401 with an OAuth2 refresh-token connection drops the refused access token and retries once (the
    refresh is shared by every trigger of the identity). ``record_grace_period`` (None in kwargs stored
    before it existed: no limit) bounds, from ``left_at``, the wait for a record that can only be found by
    the outbox id. ``sent`` is a ``SentFax`` dict, or when the task started in the triggerer
    (``start_from_trigger``) the SendFaxOperator's XCom (a mapping, or its JSON) as rendered there.
    """

    def __init__(
        self,
        *,
        outbox_fax_id: str,
        user_id: str,
        faxplus_conn_id: str,
        poke_interval: float,
        sent: Any = None,
        left: bool = False,
        record_grace_period: float | None = None,
        left_at: float | None = None,
        deferred_at: float | None = None,
        timeout: float | None = None,
        not_found_grace_period: float | None = None,
        first_look_at: float | None = None,
        seen: bool = False,
    ) -> None:
        super().__init__()
        self.outbox_fax_id = outbox_fax_id
        self.user_id = user_id
        self.faxplus_conn_id = faxplus_conn_id
        self.poke_interval = float(poke_interval)
        self.sent = sent
        self.left = bool(left)
        self.record_grace_period = None if record_grace_period is None else float(record_grace_period)
        self.left_at = None if left_at is None else float(left_at)
        # No deferred_at: the task started in the triggerer (start_from_trigger); this trigger looks first.
        self.first_look_here = deferred_at is None
        self.deferred_at = time.time() if deferred_at is None else float(deferred_at)
        self._deferred_at_given = deferred_at is not None
        self.timeout = None if timeout is None else float(timeout)
        # None in kwargs stored before it existed: OutboxFaxSensor's default.
        self.not_found_grace_period = (
            DEFAULT_NOT_FOUND_GRACE_PERIOD
            if not_found_grace_period is None
            else float(not_found_grace_period)
        )
        self.first_look_at = None if first_look_at is None else float(first_look_at)
        self.seen = bool(seen)
        self._given: delivery.SentFax | None = None  # ``sent`` as the kwargs give it
        self._known: delivery.SentFax | None = None  # that, merged with what the outbox showed

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
                "record_grace_period": self.record_grace_period,
                "left_at": self.left_at,
                "deferred_at": self.deferred_at if self._deferred_at_given else None,
                "timeout": self.timeout,
                "not_found_grace_period": self.not_found_grace_period,
                "first_look_at": self.first_look_at,
                "seen": self.seen,
            },
        )

    def _fix_deferred_at(self) -> None:
        """Started in the triggerer: the deferral time from the deadline Airflow stored when the task
        deferred (``timeout_after`` less the sensor's timeout), so a triggerer restart never pushes the
        deadline of a later deferral back."""
        if self._deferred_at_given or self.timeout is None:
            return
        deadline = getattr(self, "timeout_after", None)
        if deadline is not None and hasattr(deadline, "timestamp"):
            self.deferred_at = float(deadline.timestamp()) - self.timeout
            self._deferred_at_given = True

    def _sent_fax(self) -> delivery.SentFax:
        if self._known is None:
            sent = self.sent
            if isinstance(sent, str):  # a template rendered to the XCom's JSON
                sent = json.loads(sent) if sent.strip() else None
            if isinstance(sent, Mapping) and "faxes" not in sent and "outbox_fax_id" in sent:
                self._known = delivery.SentFax.from_dict(sent)
            else:
                self._known = delivery.sent_fax_from_send_result(self.outbox_fax_id, sent)
            self._given = self._known
        return self._known

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The event is yielded once the polls are let go: `dags test` leaves the generator open after it.
        config: FaxPlusConfig | None = None
        event: dict[str, Any]
        try:
            self._fix_deferred_at()
            if self.first_look_here:
                log.info(
                    "Started in the triggerer (start_from_trigger): the first look at outbox fax %r is "
                    "this trigger's",
                    self.outbox_fax_id,
                )
            try:
                self._sent_fax()
            except (FaxPlusError, ValueError) as exc:
                event = {"status": "error", "kind": "fatal", "message": f"sent: {exc}"}
            else:
                config = await load_connection(self.faxplus_conn_id)
                async with (
                    account_poll(config, self.user_id) as poll,
                    sent_records_poll(config, self.user_id) as sent_poll,
                ):
                    event = await self._wait(poll, sent_poll, config)
        except FaxPlusError as exc:
            kind = "fatal" if protocol.is_permanent(exc) or config is None else "error"
            event = {"status": "error", "kind": kind, "message": _redacted(str(exc), config)}
        yield TriggerEvent(event)

    async def _wait(
        self, poll: AccountPoll, sent_poll: SentRecordsPoll, config: FaxPlusConfig
    ) -> dict[str, Any]:
        due = time.monotonic()
        renewed = False
        failures = 0
        wanted: list[object] = []
        try:
            while True:
                token = ""
                try:
                    token = await access_token(poll.lease, config)
                    event = await self._look(poll, sent_poll, config, token, due, wanted)
                    renewed = False
                    failures = 0
                except delivery.AmbiguousRecordError as exc:
                    return {"status": "error", "kind": "ambiguous", "message": str(exc)}
                except FaxPlusAuthError as exc:
                    if (
                        exc.status != 401
                        or oauth.is_token_error(exc)
                        or renewed
                        or not config.uses_oauth_refresh
                    ):
                        raise
                    # Once: the next look refreshes, one refresh for every trigger of the identity.
                    renewed = True
                    oauth.source_for(config).invalidate(token)
                    log.info("Fax.Plus refused the OAuth2 access token (HTTP 401): refreshing it once")
                    continue
                except ListingTooLarge as exc:
                    # Not a verdict on any fax: the look failed; the sensor's timeout bounds the tries.
                    log.warning("%s", exc)
                    event = None
                except FaxPlusError as exc:
                    if not protocol.is_retryable(exc):
                        raise
                    # A transient failure of the look (a malformed list answer included): back off and
                    # look again; the sensor's timeout bounds the tries.
                    failures += 1
                    wait = max(
                        self.poke_interval,
                        backoff_seconds(failures, config.initial_backoff, getattr(exc, "retry_after", None)),
                    )
                    log.warning("transient error #%d, will look again in %.1f s: %s", failures, wait, exc)
                    due = time.monotonic() + wait
                    continue
                if event is not None:
                    return event
                due = time.monotonic() + self.poke_interval
        finally:
            for handle in wanted:
                sent_poll.unwant(handle)

    async def _look(
        self,
        poll: AccountPoll,
        sent_poll: SentRecordsPoll,
        config: FaxPlusConfig,
        token: str,
        due: float,
        wanted: list[object],
    ) -> dict[str, Any] | None:
        lease = poll.lease
        if not self.left:
            outbox = None
            try:
                snapshot = await poll.snapshot(due=due, interval=self.poke_interval)
                outbox = snapshot.records.get(self.outbox_fax_id)
            except ListUnavailable:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            else:
                # Absent from a list answer is no verdict: within the grace period a never-seen id
                # waits; otherwise one *Get outgoing fax* confirms, as OutboxFaxTrigger does.
                if outbox is None and self._not_found().action != "left":
                    return None
            if outbox is None:
                try:
                    outbox = await fetch_outbox_fax(lease, config, self.outbox_fax_id, self.user_id, token)
                except FaxPlusNotFoundError:
                    absent = self._not_found()
                    if absent.action != "left":
                        log.debug("%s", absent.message)
                        return None
            if outbox is not None:
                self.seen = True
                self._known = delivery.SentFax.from_outbox(outbox).merged(self._sent_fax())
                if outbox.in_outbox_state:
                    return None
            self.left = True
            if self.left_at is None:
                self.left_at = time.time()
            log.info("outbox fax %r has left the outbox; looking for its sent record", self.outbox_fax_id)
            if self._known != self._given or self._grace_applies():
                # What a rebuilt trigger would not know (the outbox's fields, when the fax left) goes to
                # the sensor, which defers again with it.
                return {
                    "status": "checkpoint",
                    "sent": self._sent_fax().to_dict(),
                    "left_at": self.left_at,
                    "deferred_at": self.deferred_at,
                }
        sent = self._sent_fax()
        match: delivery.Match | None = None
        if sent.fields_known():
            assert sent.submitted_at is not None
            after = sent.submitted_at - delivery.SUBMIT_TOLERANCE
            if not wanted:
                wanted.append(sent_poll.want(after))
            listing = await sent_poll.snapshot(due=due, interval=self.poke_interval)
            if not listing.covers(after):  # listed for later faxes only (this one just joined): again
                listing = await sent_poll.snapshot(due=time.monotonic(), interval=self.poke_interval)
            if not listing.covers(after):  # older than the shared span: this fax lists its own
                listing = await sent_poll.list_alone(after)
            by_id = listing.by_id.get(self.outbox_fax_id)
            if by_id is not None:
                match = delivery.match_by_id(by_id, sent)
            else:
                match = delivery.match_by_fields(listing.by_to.get(sent.to, ()), sent)
        else:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                match = delivery.match_by_id(await self._fetch_record(lease, config, token), sent)
            except FaxPlusNotFoundError:
                match = None
            if match is None and self._grace_over():
                return {
                    "status": "error",
                    "kind": "fatal",
                    "message": delivery.no_record_message(sent, self.record_grace_period or 0.0),
                }
        if match is None:
            log.debug("outbox fax %r: its sent record is not there yet", self.outbox_fax_id)
            return None
        return {"status": "found", "result": delivery.delivery_xcom(match, sent)}

    def _not_found(self) -> Any:
        """OutboxFaxSensor's rule for an outbox id that is not found (never seen: a grace period)."""
        started = self.first_look_at if self.first_look_at is not None else self.deferred_at
        submitted = self._sent_fax().submitted_at
        if submitted is not None:
            started = min(started, submitted.timestamp())
        progress = WaitProgress(started_at=started, ever_seen=self.seen)
        policy = WaitPolicy(not_found_grace_period=self.not_found_grace_period, fail_if_never_seen=False)
        return observe_not_found(self.outbox_fax_id, progress, policy, time.time(), self.user_id)

    def _grace_applies(self) -> bool:
        return self.record_grace_period is not None and not self._sent_fax().fields_known()

    def _grace_over(self) -> bool:
        return (
            self._grace_applies()
            and self.left_at is not None
            and time.time() - self.left_at >= (self.record_grace_period or 0.0)
        )

    async def _fetch_record(self, lease: _Lease, config: FaxPlusConfig, token: str) -> FaxRecord:
        call = records.get_fax_call(config, self.outbox_fax_id, self.user_id)
        status, headers, body = await _exchange(
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
        return records.parse_get_fax_response(config, call, status, headers, body)
