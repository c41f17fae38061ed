"""The account's outbox poll: *List outgoing faxes* answers, shared by the triggers of one event loop.

One :class:`AccountPoll` per event loop, connection identity (the shared session's key) and ``user_id``,
held while triggers use it. Callers ask for a snapshot no older than a moment (``due``); all callers of a
tick share one list request, and the poll never sends more than one list request per the shortest
interval of its waiting callers (the tick is ``shared_poll.SharedPoll``'s). The answer is decoded a chunk
of records at a time, the event loop running between chunks, and each record is parsed into an
``OutboxFax`` on first use: a triggerer waiting on a few faxes of a 10,000-fax outbox parses those few.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from airflow_provider_faxplus import protocol, redaction, send
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import (
    FaxPlusRequestError,
    FaxPlusResponseError,
    FaxPlusTransportError,
)
from airflow_provider_faxplus.models import OutboxFax
from airflow_provider_faxplus.triggers.session import (
    _exchange,
    _Lease,
    access_token,
    session_key,
    shared_session,
)
from airflow_provider_faxplus.triggers.shared_poll import (
    MAX_TOLERANCE,
    SETTLE_SLICE,
    ListUnavailable,
    SharedPoll,
    held,
    tolerance,
)

__all__ = [
    "DECODE_CHUNK",
    "LIST_UNAVAILABLE_STATUSES",
    "MAX_TOLERANCE",
    "SETTLE_SLICE",
    "AccountPoll",
    "ListUnavailable",
    "MalformedListAnswer",
    "OutboxRecords",
    "OutboxSnapshot",
    "account_poll",
    "poll_key",
    "tolerance",
]

log = logging.getLogger(__name__)

# Answers that mean the API refuses the list operation itself: fall back to per-fax GETs.
LIST_UNAVAILABLE_STATUSES = frozenset({403, 404, 405})
# Records decoded between two turns of the event loop: ~600 bytes each, a few ms per chunk.
DECODE_CHUNK = 200


class OutboxRecords(Mapping[str, OutboxFax]):
    """The records of one list answer by outbox id, each parsed on first use.

    A record that does not parse raises :class:`FaxPlusResponseError` naming it, for the caller that
    asks for that id alone (as a malformed *Get outgoing fax* answer would).
    """

    def __init__(
        self,
        call: protocol.ApiCall,
        status: int,
        raw: dict[str, tuple[int, Any]],
        redact: Callable[[str], str],
    ) -> None:
        self._call = call
        self._status = status
        self._redact = redact
        # By id: the record's position in the answer, and the decoded record or, once parsed (or equal to
        # the last answer's parsed record), its OutboxFax.
        self._raw = raw

    def __getitem__(self, outbox_fax_id: str) -> OutboxFax:
        index, value = self._raw[outbox_fax_id]
        if isinstance(value, OutboxFax):
            return value
        record = send.parse_list_record(self._call, self._status, index, value, self._redact)
        self._raw[outbox_fax_id] = (index, record)
        return record

    def parsed(self, outbox_fax_id: str) -> OutboxFax | None:
        """The record if it has been parsed already (never parses)."""
        entry = self._raw.get(outbox_fax_id)
        return entry[1] if entry is not None and isinstance(entry[1], OutboxFax) else None

    def __contains__(self, outbox_fax_id: object) -> bool:
        return outbox_fax_id in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@dataclass(frozen=True)
class OutboxSnapshot:
    """One answer of *List outgoing faxes*: the whole outbox of ``user_id``."""

    user_id: str
    started_at: float  # time.monotonic() when the request was sent: a wall-clock step moves no schedule
    records: Mapping[str, OutboxFax]  # by outbox fax id
    server_time: float | None = None  # the answer's Date header (POSIX seconds), if it had one


class MalformedListAnswer(FaxPlusTransportError):
    """A list answer that could not be understood (an HTML page from a proxy, a cut body): a transient
    failure of the poll, retried after a back-off by every waiter alike, never a verdict on any fax."""

    def __init__(self, cause: FaxPlusResponseError) -> None:
        super().__init__(
            str(cause),
            operation=cause.operation,
            method=cause.method,
            path=cause.path,
            status=cause.status,
            error=cause.error,
            description=cause.description,
        )


class AccountPoll(SharedPoll[OutboxSnapshot]):
    """The shared list poll of one account's outbox; see :func:`account_poll`."""

    def __init__(self, lease: _Lease, config: FaxPlusConfig, user_id: str) -> None:
        super().__init__(lease)
        self.config = config
        self.user_id = user_id
        self._skipped_warned = False

    def _refused(self, exc: ListUnavailable) -> None:
        log.warning(
            "Fax.Plus refused List outgoing faxes for user %r (%s). The %d trigger(s) waiting on this "
            "account now each send their own Get outgoing fax per poll instead of sharing one list "
            "request per tick: one request per waiting fax per interval. After a 403, a token with the "
            "scope fax:all:read or fax:fax:read allows the list; shared_poll=False on the sensors "
            "silences this.",
            self.user_id,
            exc.cause,
            self.holders,
        )

    async def _list(self, started_at: float) -> OutboxSnapshot:
        call = send.list_outbox_call(self.config, self.user_id)
        token = await access_token(self.lease, self.config)
        self.requests_sent += 1
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
            max_bytes=call.operation.max_answer_bytes,
            too_large=lambda status: protocol.answer_too_large(
                call.operation.name, call.method, call.path, status, call.operation.max_answer_bytes
            ),
        )
        log.debug("%s %s -> HTTP %d (%d bytes)", call.method, call.path, status, len(body))
        by_id: dict[str, tuple[int, Any]] = {}
        skipped: list[int] = []
        last = self._last.records if self._last is not None else None
        previous = last if isinstance(last, OutboxRecords) else None
        try:
            for index, record in enumerate(send.iter_list_records(self.config, call, status, headers, body)):
                fax_id = record.get("id") if isinstance(record, dict) else None
                if isinstance(fax_id, str):
                    # A record equal to the one the last answer parsed is that OutboxFax again: no parse,
                    # and the decoded copy is freed at once (10,000 decoded records held until the next
                    # tick are ~250,000 objects for the garbage collector's full passes to walk).
                    before = previous.parsed(fax_id) if previous is not None else None
                    by_id[fax_id] = (index, before if before is not None and before.raw == record else record)
                else:
                    skipped.append(index)
                if index % DECODE_CHUNK == DECODE_CHUNK - 1:
                    await asyncio.sleep(0)  # let the other triggers run
        except FaxPlusResponseError as exc:
            raise MalformedListAnswer(exc) from None
        except FaxPlusRequestError as exc:
            if exc.status in LIST_UNAVAILABLE_STATUSES:
                raise ListUnavailable(exc) from None
            raise
        if skipped:
            # No waiting fax can be one without an id; said once per poll, not every tick.
            log.log(
                logging.DEBUG if self._skipped_warned else logging.WARNING,
                "%s answered %d record(s) without a string id (record #%s), skipped: no waiting fax can "
                "be one of them",
                call.describe(),
                len(skipped),
                ", #".join(str(index) for index in skipped[:10]),
            )
            self._skipped_warned = True
        return OutboxSnapshot(
            self.user_id,
            started_at,
            OutboxRecords(call, status, by_id, redaction.for_config(self.config)),
            protocol.server_time(headers),
        )


_POLLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def poll_key(config: FaxPlusConfig, user_id: str) -> tuple[Any, ...]:
    """One account: the connection identity (the shared session's key, and the OAuth2 refresh token:
    two identities may share a pool, never an account's answers) and ``user_id``."""
    identity = hashlib.sha256((config.refresh_token or "").encode()).hexdigest()
    return (*session_key(config), identity, user_id)


@asynccontextmanager
async def account_poll(config: FaxPlusConfig, user_id: str) -> AsyncIterator[AccountPoll]:
    """The event loop's poll of ``user_id``'s outbox through connection ``config``, held while in use;
    one per account (:func:`poll_key`)."""
    async with (
        shared_session(config) as lease,
        held(_POLLS, poll_key(config, user_id), lease, lambda: AccountPoll(lease, config, user_id)) as poll,
    ):
        yield poll
