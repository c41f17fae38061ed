"""The account's outbox poll: *List outgoing faxes* answers, shared by the triggers of one event loop.

INTERFACE SKELETON: every ``snapshot()`` sends its own list request for now; sharing one request per
tick between all triggers of a connection and ``user_id`` comes next (issue 13).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from airflow_provider_faxplus import protocol, send
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import FaxPlusRequestError
from airflow_provider_faxplus.models import OutboxFax, OutboxParseError, parse_outbox
from airflow_provider_faxplus.triggers.outbox import _exchange, _Lease, access_token, shared_session


@dataclass(frozen=True)
class OutboxSnapshot:
    """One answer of *List outgoing faxes*: the whole outbox of ``user_id``."""

    user_id: str
    started_at: float  # epoch seconds (UTC) when the request was sent
    records: Mapping[str, OutboxFax]  # by outbox fax id


class ListUnavailable(Exception):
    """The API refuses the list operation (403 for a narrower scope, 404/405 from a server without it):
    poll each fax with *Get outgoing fax* instead."""

    def __init__(self, cause: FaxPlusRequestError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class AccountPoll:
    def __init__(self, lease: _Lease, config: FaxPlusConfig, user_id: str) -> None:
        self.lease = lease
        self.config = config
        self.user_id = user_id

    async def snapshot(self, *, due: float, interval: float) -> OutboxSnapshot:
        """The first list answer whose request was sent at or after ``due`` (epoch seconds), shared with
        every other waiter of this account; at most one list request per ``interval`` for them all.

        :raises FaxPlusRequestError: the list call failed (the same error for every waiter of it).
        :raises ListUnavailable: the API refuses the list operation.
        """
        del due, interval  # the skeleton asks at once
        call = send.list_outbox_call(self.config, self.user_id)
        token = await access_token(self.lease, self.config)
        started_at = time.time()
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
        )
        try:
            entries = send.parse_list_response(self.config, call, status, headers, body)
        except FaxPlusRequestError as exc:
            if exc.status in (403, 404, 405):
                raise ListUnavailable(exc) from None
            raise
        records: dict[str, OutboxFax] = {}
        for entry in entries:
            try:
                records[entry.id] = parse_outbox(dict(entry.raw))
            except OutboxParseError:
                continue  # the skeleton skips what it cannot read
        return OutboxSnapshot(self.user_id, started_at, records)


@asynccontextmanager
async def account_poll(config: FaxPlusConfig, user_id: str) -> AsyncIterator[AccountPoll]:
    """The event loop's poll of ``user_id``'s outbox through connection ``config``, held while in use."""
    async with shared_session(config) as lease:
        yield AccountPoll(lease, config, user_id)
