"""FaxPlusHook: the two outbox operations of the Fax.Plus REST API v3 over one keep-alive session."""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cached_property
from typing import IO, Any

import requests
from airflow.providers.common.compat.sdk import BaseHook
from requests.adapters import HTTPAdapter
from tenacity import Retrying, retry_if_exception
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

from airflow_provider_faxplus import downloads, files, oauth, protocol, records, redaction, send
from airflow_provider_faxplus.config import (
    FaxPlusConfig,
    TlsSettings,
    config_from_airflow_connection,
    requests_proxies,
    tls_settings,
)
from airflow_provider_faxplus.constants import CONN_TYPE, DEFAULT_CONN_ID
from airflow_provider_faxplus.exceptions import (
    FaxPlusAPIError,
    FaxPlusConfigError,
    FaxPlusError,
    FaxPlusInputError,
    FaxPlusNotFoundError,
    FaxPlusNotSentError,
    FaxPlusRequestError,
    FaxPlusResponseError,
    FaxPlusTLSError,
)
from airflow_provider_faxplus.models import OutboxFax
from airflow_provider_faxplus.records import FaxRecord
from airflow_provider_faxplus.retry import retry_kwargs
from airflow_provider_faxplus.send import SentFax, UploadedFile

log = logging.getLogger(__name__)

# test_connection() reads an outbox id that cannot exist: the least scope the provider needs
# (fax:fax:read) proves the token without touching any fax.
CONNECTION_TEST_FAX_ID = "airflow-connection-test"
# What is read of a download's answer that is no file (an error body) for the error message.
DOWNLOAD_ERROR_BODY_BYTES = 64 * 1024


class BearerAuth(requests.auth.AuthBase):
    """Adds ``Authorization: Bearer``; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


class FaxPlusHook(BaseHook):
    """Interact with the Fax.Plus REST API v3 outbox.

    :param faxplus_conn_id: The ``faxplus`` connection: API token in the password, optional base URL
        in the host, optional ``client_id``, OAuth2 refresh (``client_secret``, ``refresh_token``,
        ``token_url``), ``timeout``, ``verify``, ``ca_bundle`` and retry settings in the extra.
    :param timeout: Seconds per request, whole request (connect, headers, body); overrides the
        connection's ``timeout``.
    :param max_attempts: Attempts per call, first one included; overrides the connection.
    :param max_retry_seconds: Total time budget for the retries of one call; overrides the connection.
    """

    conn_name_attr = "faxplus_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Fax.Plus"
    _tls: TlsSettings

    def __init__(
        self,
        faxplus_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
        max_retry_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.faxplus_conn_id = faxplus_conn_id
        # A configuration error is raised on first use rather than here, so that test_connection() can
        # word it for the connection form (where Airflow gives the connection a random id).
        self._config: FaxPlusConfig | None = None
        self._config_error: FaxPlusConfigError | None = None
        self._overrides = {
            "timeout": timeout,
            "max_attempts": max_attempts,
            "max_retry_seconds": max_retry_seconds,
        }
        try:
            self._config = self._load_config().with_overrides(**self._overrides)
        except FaxPlusConfigError as exc:
            self._config_error = exc

    @property
    def config(self) -> FaxPlusConfig:
        """The validated connection; raises its :class:`FaxPlusConfigError` if it is not valid."""
        if self._config is None:
            assert self._config_error is not None
            raise self._config_error
        return self._config

    def _load_config(self) -> FaxPlusConfig:
        conn = self.get_connection(self.faxplus_conn_id)
        config = config_from_airflow_connection(self.faxplus_conn_id, conn, conn.extra_dejson)
        oauth.mask(
            config.token,
            config.client_secret,
            config.refresh_token,
            client_id=config.client_id,
            client_secret=config.client_secret,
        )
        return config

    def __repr__(self) -> str:
        name = type(self).__name__
        base_url = self._config.base_url if self._config else "(invalid connection)"
        return f"{name}(faxplus_conn_id={self.faxplus_conn_id!r}, base_url={base_url!r})"

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook. Retries are ours (tenacity), not urllib3's."""
        config = self.config
        # The same TLS and proxy rules as the trigger (config.py); a bad CA bundle fails here, at once.
        tls = tls_settings(config)
        if tls.ca_bundle is not None:
            tls.ssl_context()
        session = requests.Session()
        adapter = _DeadlineAdapter(max_retries=0, pool_connections=1, pool_maxsize=4)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update(protocol.base_headers(config))
        # requests re-reads the environment (proxies, CA bundle) on every request when trust_env is on,
        # about a fifth of a call's cost here: read it once per session instead.
        session.trust_env = False
        session.proxies = {scheme: url for scheme, url in requests_proxies(config.base_url).items() if url}
        session.verify = tls.requests_verify()
        self._tls = tls
        return session

    def get_conn(self) -> requests.Session:
        return self.session

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    # The two operations ---------------------------------------------------------------------------

    def get_outbox_fax(self, outbox_fax_id: str, user_id: str = "self") -> OutboxFax:
        """*Get outgoing fax*: the typed record of a fax that is still in the outbox.

        :raises FaxPlusNotFoundError: the outbox id does not resolve (the fax left the outbox, or a wrong id).
        :raises FaxPlusAuthError: the token is rejected or lacks ``fax:fax:read``.
        """
        call = protocol.get_outbox_fax_call(self.config, outbox_fax_id, user_id)
        status, headers, body = self._send(call)
        record = protocol.parse_get_response(self.config, call, status, headers, body)
        self._warn_parse(record, "Outbox fax")
        return record

    def update_outbox_fax(self, outbox_fax_id: str, *, comment: str, user_id: str = "self") -> None:
        """*Modify an outgoing fax*: set its comment. Sends exactly ``{"comment": comment}``.

        :raises FaxPlusConflictError: the API refuses to modify the fax in its current state.
        :raises FaxPlusNotFoundError: the outbox id does not resolve.
        """
        call = protocol.update_outbox_fax_call(self.config, outbox_fax_id, comment, user_id)
        status, headers, body = self._send(call)
        protocol.check_update_response(self.config, call, status, headers, body)
        if status != 204 or body:
            log.warning(
                "%s answered HTTP %d with %d body bytes; the spec says 204 with no body",
                call.describe(),
                status,
                len(body),
            )

    # Sending (send.py builds the calls and reads the answers) ------------------------------------

    def upload_file(
        self,
        source: Any,
        *,
        file_name: str | None = None,
        format: str | None = None,
        user_id: str = "self",
    ) -> UploadedFile:
        """*Upload a file*: a local path, ``bytes`` (with ``file_name``) or an ``ObjectStoragePath``,
        streamed. Returns the transient path to pass in :meth:`send_fax`'s ``files``. An upload creates
        nothing that costs money, so it is retried like a read."""
        from airflow_provider_faxplus.files import MultipartBody, file_source

        src = file_source(source, file_name)
        send.validate_sizes({src.file_name: src.size})
        boundary = send.new_boundary()
        call = send.upload_call(self.config, src.file_name, boundary, user_id, format)
        head, tail = send.multipart_parts(src.file_name, boundary)
        status, headers, body = self._send(call, data=lambda: MultipartBody(head, src, tail, _touch_deadline))
        path = send.parse_upload_response(self.config, call, status, headers, body)
        shown = redaction.for_config(self.config)(path)
        log.info("Uploaded %s (%d bytes) as %s", src.file_name, src.size, shown)
        return UploadedFile(path=path, file_name=src.file_name, size=src.size)

    def send_fax(
        self,
        to: str | list[str],
        files: list[str],
        *,
        from_number: str = send.NO_NUMBER,
        comment: str | None = None,
        comment_tags: list[str] | None = None,
        send_time: datetime | None = None,
        retry_count: int | None = None,
        retry_delay: int | None = None,
        enhancement: bool | None = None,
        cover_page: Mapping[str, Any] | None = None,
        user_id: str = "self",
    ) -> SentFax:
        """*Send a fax* to each destination (``return_ids: true``); returns the outbox id per destination.

        Never sent twice by this call: it is retried only when the request provably did not reach the
        API (DNS failure, refused connection, connect timeout) or was refused unprocessed (408, 429).

        :raises FaxPlusSendUncertainError: the request may have reached the API (read timeout, dropped
            connection, 3xx, 5xx, malformed answer): the fax may exist. Look for it before sending again.
            ``known_ids`` holds the ids a partial answer gave. ``send.send_outcome`` is the whole rule.
        """
        payload = send.send_payload(
            to=to,
            files=files,
            from_number=from_number,
            comment=comment,
            comment_tags=comment_tags,
            send_time=send_time,
            retry_count=retry_count,
            retry_delay=retry_delay,
            enhancement=enhancement,
            cover_page=cover_page,
        )
        call = send.send_call(self.config, payload, user_id)
        # A pooled keep-alive connection the server has closed would fail after the request was written,
        # which looks like a lost answer: a send starts on a fresh connection.
        for adapter in self.session.adapters.values():
            adapter.close()
        try:
            status, headers, body = self._send(
                call,
                retry_statuses=send.SEND_NOT_PROCESSED_STATUSES,
                retry=retry_if_exception(_send_not_processed),
            )
            ids = send.parse_send_response(self.config, call, status, headers, body, payload["to"])
        except FaxPlusTLSError:
            raise  # no TLS session, so no request was written
        except send.FaxPlusSendUncertainError:
            raise
        except FaxPlusRequestError as exc:
            if send.send_outcome("send", exc) == send.NOT_SENT:
                raise  # certainly not sent: the caller may fix it and send again
            # A 3xx, a 5xx, a lost or malformed answer: the fax may exist.
            raise send.uncertain(call, exc) from None
        log.info("Sent a fax to %d destination(s): outbox ids %s", len(ids), ", ".join(ids.values()))
        return SentFax(outbox_fax_ids=ids)

    def list_outbox_faxes(self, user_id: str = "self") -> list[OutboxFax]:
        """*List outgoing faxes*: the typed record of every fax in the user's outbox (no pagination in
        the API), retried like :meth:`get_outbox_fax`.

        :raises FaxPlusResponseError: the answer is malformed, or one of its records is no ``Outbox``
            (the message names it): a list with a hole could hide the fax a caller looks for.
        :raises FaxPlusAuthError: the token is rejected or lacks ``fax:fax:read``.
        """
        call = send.list_outbox_call(self.config, user_id)
        status, headers, body = self._send(call)
        records = send.parse_list_response(self.config, call, status, headers, body)
        for record in records:
            self._warn_parse(record, "Outbox fax")
        return records

    def cancel_outbox_fax(self, outbox_fax_id: str, user_id: str = "self") -> None:
        """Cancel an outgoing fax (``DELETE .../outbox/{id}``); retried: a second cancel changes nothing.

        :raises FaxPlusNotFoundError: the fax is no longer in the outbox (sent or failed) or a wrong id.
        """
        call = send.cancel_call(self.config, outbox_fax_id, user_id)
        status, headers, body = self._send(call)
        send.check_cancel_response(self.config, call, status, headers, body)

    # Fax records, files and reports (records.py builds the calls and reads the answers) -------------

    def list_faxes(
        self,
        category: str,
        *,
        after: datetime | str | None = None,
        before: datetime | str | None = None,
        limit: int | None = None,
        user_id: str = "self",
    ) -> list[FaxRecord]:
        """*List fax records* of one ``category`` (``inbox``, ``sent``, ``spam``), optionally between
        ``after`` and ``before`` (aware datetimes, or ``YYYY-MM-DD HH:mm:ss`` UTC strings).

        Pages as :class:`records.FaxListPager` does (by time, 50 per page, each page overlapping the last
        by one record): faxes arriving or deleted while it pages neither repeat nor hide a record.
        ``limit`` bounds the result; without it more than ``records.MAX_LIST_RECORDS`` records is an
        error, never a silently truncated list.
        """
        records.validate_category(category)
        after_s = None if after is None else records.format_api_time("after", after)
        before_s = None if before is None else records.format_api_time("before", before)
        if after_s is not None and before_s is not None and after_s >= before_s:
            raise FaxPlusInputError(f"after ({after_s}) must be earlier than before ({before_s})")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise FaxPlusInputError(f"limit must be a whole number >= 1, got {limit!r:.20}")
        pager = records.FaxListPager(
            self.config, category, after=after_s, before=before_s, limit=limit, user_id=user_id
        )
        while not pager.done:
            call = pager.call()
            try:
                pager.feed(call, *self._send(call))
            except FaxPlusResponseError:
                if not pager.over_max:
                    raise
                raise FaxPlusInputError(
                    f"more than {pager.max_records:,} {category} fax records"
                    f"{f' after {after_s}' if after_s else ''}{f' before {before_s}' if before_s else ''}: "
                    "narrow the window with after/before, or give limit"
                ) from None
        for record in pager.found.values():
            self._warn_parse(record)
        result = list(pager.found.values())
        return result if limit is None else result[:limit]

    def get_fax(self, fax_id: str, user_id: str = "self") -> FaxRecord:
        """*Get a fax record* (a sent or received fax).

        :raises FaxPlusNotFoundError: no fax record with this id.
        """
        call = records.get_fax_call(self.config, fax_id, user_id)
        status, headers, body = self._send(call)
        record = records.parse_get_fax_response(self.config, call, status, headers, body)
        self._warn_parse(record)
        return record

    def update_fax(
        self, fax_id: str, *, comment: str | None = None, is_read: bool | None = None, user_id: str = "self"
    ) -> None:
        """*Modify a fax record*: its ``comment`` and/or ``is_read`` (only what is given is sent)."""
        call = records.update_fax_call(self.config, fax_id, comment=comment, is_read=is_read, user_id=user_id)
        status, headers, body = self._send(call)
        records.check_no_content_response(self.config, call, status, headers, body)

    def delete_fax(self, fax_id: str, user_id: str = "self") -> None:
        """*Delete a fax record* (and its file). Retried like a read: a second delete changes nothing, but
        one whose answer was lost is then a not-found, raised as :class:`FaxPlusNotFoundError`."""
        call = records.delete_fax_call(self.config, fax_id, user_id)
        status, headers, body = self._send(call)
        records.check_no_content_response(self.config, call, status, headers, body)

    def download_fax(
        self, fax_id: str, destination: Any, *, format: str = "pdf", user_id: str = "self"
    ) -> Any:
        """The fax's file (``format`` ``pdf`` or ``tiff``) streamed to ``destination``: a local file path
        or directory, an object-storage URI or an ``ObjectStoragePath`` (a directory or a path ending in
        ``/`` gets ``<fax_id>.pdf``/``.tif``). Written atomically; returns where it was written (a
        string for a local path, else the ``ObjectStoragePath``)."""
        call = records.download_fax_call(self.config, fax_id, format, user_id)
        return self._download(call, destination, downloads.default_name(call.outbox_fax_id, format, False))

    def download_fax_report(self, fax_id: str, destination: Any, *, user_id: str = "self") -> Any:
        """The fax's confirmation report (PDF) streamed to ``destination`` as :meth:`download_fax` does
        (a directory gets ``<fax_id>-report.pdf``)."""
        call = records.download_report_call(self.config, fax_id, user_id)
        return self._download(call, destination, downloads.default_name(call.outbox_fax_id, "pdf", True))

    def _download(self, call: protocol.ApiCall, destination: Any, name: str) -> Any:
        target = downloads.Destination(destination, name)
        try:
            status, headers, body = self._send(call, sink=target.attempt)
            records.check_download_start(self.config, call, status, headers, body)
            written = target.commit()
        finally:
            target.discard()
        log.info("%s: fax %s written to %s", call.operation.name, call.outbox_fax_id, target)
        return written

    def _warn_parse(self, record: FaxRecord | OutboxFax, kind: str = "Fax record") -> None:
        if record.parse_warnings:
            # The warnings quote the answer's values: redacted like an error's text.
            redact = redaction.for_config(self.config)
            log.warning(
                "%s %s: field(s) that did not parse were left empty (the raw value is kept in "
                "record.raw): %s",
                kind,
                redact(record.id),
                redact("; ".join(record.parse_warnings)),
            )

    def test_connection(self) -> tuple[bool, str]:
        """Prove the token with *Get outgoing fax* on an id that cannot exist (needs only read scope).

        Airflow tests a connection under a random temporary id, so messages say "this connection"."""
        try:
            self.get_outbox_fax(CONNECTION_TEST_FAX_ID)
        except FaxPlusNotFoundError:
            pass
        except FaxPlusError as exc:
            message = str(exc).replace(
                f"Fax.Plus connection {self.faxplus_conn_id!r}", "this Fax.Plus connection"
            )
            return False, message[:1].upper() + message[1:]
        return True, f"Connection works: {self.config.base_url} accepted the API token (read scope)."

    # Transport -----------------------------------------------------------------------------------

    def _send(
        self,
        call: protocol.ApiCall,
        *,
        retry_statuses: frozenset[int] = protocol.RETRYABLE_STATUSES,
        data: Callable[[], Any] | None = None,
        sink: Callable[[], IO[bytes]] | None = None,
        **retry_overrides: Any,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send with retries on transient failures; return the final non-retryable answer.

        Retryable statuses are raised inside the loop so that tenacity can retry them. ``data`` makes
        a fresh (streamed) body per attempt; ``sink`` a fresh file per attempt into which a 200 answer's
        body is streamed (the returned body is then empty); ``retry_overrides`` replace tenacity arguments.
        """
        self.session  # noqa: B018 - a bad CA bundle or proxy is a configuration error, never retried
        renewed = False
        for attempt in Retrying(**{**retry_kwargs(self.config, log), **retry_overrides}):
            with attempt:
                token = self._access_token()
                status, headers, body = self._send_once(call, token, data, sink)
                if status == 401 and not renewed and self._renew_after_401(token):
                    # Once per call: a refreshed or rotated token gets one more try. The API refused the
                    # request unprocessed, so this is safe even for a send.
                    renewed = True
                    call = _rebased(call, self.config)
                    status, headers, body = self._send_once(call, self._access_token(), data, sink)
                if status in retry_statuses:
                    raise protocol.error_from_response(self.config, call, status, headers, body)
                return status, headers, body
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    # Tokens ----------------------------------------------------------------------------------------

    def _access_token(self) -> str:
        """The connection's token, or with OAuth2 refresh the process's current access token."""
        config = self.config
        if not config.uses_oauth_refresh:
            return config.token
        return oauth.source_for(config).token_sync(self._fetch_grant)

    def _fetch_grant(self, refresh_token: str) -> oauth.TokenGrant:
        """One refresh at the token endpoint; transient failures retry like API calls."""
        config = self.config
        call = oauth.refresh_call(config, refresh_token)
        proxies = requests_proxies(config.token_url)  # None entries remove the API's proxy
        for attempt in Retrying(**retry_kwargs(config, log)):
            with attempt:
                status, headers, body = self._exchange(
                    "POST",
                    call.url,
                    path=call.path,
                    headers=dict(call.headers),
                    data=call.body,
                    auth=None,
                    proxies=proxies,
                    # Not-sent or not does not matter here: asking for a token again is harmless.
                    transport_error=lambda reason, _not_sent: oauth.transport_error(call, reason),
                    tls_error=lambda reason: oauth.tls_error(call, self._tls, reason),
                    max_bytes=oauth.MAX_TOKEN_ANSWER_BYTES,
                    too_large=lambda status: oauth.too_large(call, status),
                )
                grant = oauth.parse_token_response(call, status, headers, body)
                log.info("Fax.Plus OAuth2 access token refreshed at %s", call.describe())
                return grant
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _renew_after_401(self, token: str) -> bool:
        """After a 401: with a refresh token, drop the refused access token (the next call refreshes);
        without one, read the connection once more (a token rotated in the connection or a secrets
        backend). Whether a new try is worth it."""
        config = self.config
        if config.uses_oauth_refresh:
            oauth.source_for(config).invalidate(token)
            log.info("Fax.Plus refused the OAuth2 access token (HTTP 401): refreshing it once")
            return True
        try:
            fresh = self._load_config().with_overrides(**self._overrides)
        except FaxPlusConfigError as exc:
            log.warning("Reading connection %r again after HTTP 401 failed: %s", self.faxplus_conn_id, exc)
            return False
        if fresh == config:
            return False
        log.info(
            "Connection %r changed since it was read: trying its new settings once", self.faxplus_conn_id
        )
        self.close()
        self._config = fresh
        self.session  # noqa: B018
        return True

    # Transport -----------------------------------------------------------------------------------

    def _send_once(
        self,
        call: protocol.ApiCall,
        token: str,
        data: Callable[[], Any] | None = None,
        sink: Callable[[], IO[bytes]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One attempt; ``data`` makes a fresh (streamed) body for it."""
        return self._exchange(
            call.method,
            call.url,
            path=call.path,
            # The session carries the headers common to every call; only the rest go per request.
            headers=_per_call_headers(call.headers, self.session.headers) or None,
            data=call.body if data is None else data(),
            auth=BearerAuth(token),
            proxies=None,
            transport_error=lambda reason, not_sent: protocol.transport_error(
                call, reason, not_sent=not_sent
            ),
            tls_error=lambda reason: protocol.tls_error(call, self._tls, reason),
            sink=sink,
            max_bytes=call.operation.max_answer_bytes,
            too_large=lambda status: protocol.answer_too_large(
                call.operation.name,
                call.method,
                call.path,
                status,
                call.operation.max_answer_bytes,
                call.outbox_fax_id or None,
            ),
        )

    def _exchange(
        self,
        method: str,
        url: str,
        *,
        path: str,
        headers: dict[str, str] | None,
        data: Any,
        auth: BearerAuth | None,
        proxies: dict[str, str | None] | None,
        transport_error: Callable[[str, bool], FaxPlusRequestError],
        tls_error: Callable[[str], FaxPlusRequestError],
        max_bytes: int,
        too_large: Callable[[int], FaxPlusRequestError],
        sink: Callable[[], IO[bytes]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange under the whole-request deadline; failures become the caller's errors
        (``transport_error(reason, not_sent)``: ``not_sent`` when the request provably never left;
        ``too_large(status)``: the answer is over ``max_bytes``)."""
        timeout = self.config.timeout
        started = time.monotonic()
        # requests' timeout bounds each socket operation; the deadline bounds the whole request
        # (connect, headers and body), as aiohttp's total timeout does in the trigger.
        deadline = _Deadline(timeout)
        try:
            with deadline:
                response = self.session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    auth=auth,
                    proxies=proxies,  # type: ignore[arg-type]
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                )
                # A download streams into its sink; any other answer is read, bounded.
                bounded = _stream(response, sink) if sink is not None else _read_bounded(response, max_bytes)
                if bounded is None:
                    raise too_large(response.status_code)
                body = bounded
        except requests.ConnectTimeout:
            # No connection, so no byte of the request left: provably not sent.
            reason = f"could not connect within {timeout:g} s"
            raise transport_error(reason, not deadline.expired) from None
        except requests.Timeout:
            raise transport_error(f"no answer within {timeout:g} s", False) from None
        except requests.RequestException as exc:
            if deadline.expired:
                raise transport_error(f"no answer within {timeout:g} s", False) from None
            if isinstance(exc, requests.exceptions.SSLError) and protocol.is_certificate_failure(exc):
                raise tls_error(_short(exc, redaction.for_config(self.config))) from None
            shown = _short(exc, redaction.for_config(self.config))
            raise transport_error(shown, _never_connected(exc)) from None
        log.debug(
            "%s %s -> HTTP %d (%d bytes) in %.0f ms",
            method,
            path,
            response.status_code,
            len(body),
            (time.monotonic() - started) * 1000,
        )
        return response.status_code, dict(response.headers), body

    # Connection form ----------------------------------------------------------------------------

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form on Airflow 2.11 (3.2+ reads the same ``conn-fields``)."""
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, PasswordField, StringField
        from wtforms.validators import NumberRange, Optional

        from airflow_provider_faxplus.get_provider_info import CONN_FIELDS

        widgets: dict[str, Any] = {}
        for name, spec in CONN_FIELDS.items():
            schema = spec["schema"]
            label = lazy_gettext(spec["label"])
            description = lazy_gettext(spec["description"])
            if "boolean" in schema["type"]:
                widgets[name] = BooleanField(label, description=description, default=schema.get("default"))
                continue
            # 2.11 accepts only String/Integer/Boolean/Password fields: a decimal number is a string
            # here, which config.py parses and checks (the Test button shows its message).
            if schema.get("format") == "password":  # a secret: masked, never shown back in the form
                widgets[name] = PasswordField(
                    label, description=description, validators=[Optional()], widget=BS3PasswordFieldWidget()
                )
                continue
            integer = "integer" in schema["type"]
            field_class = IntegerField if integer else StringField
            validators: list[Any] = [Optional()]
            if integer and "minimum" in schema:
                validators.append(NumberRange(min=schema["minimum"]))
            widgets[name] = field_class(
                label, description=description, validators=validators, widget=BS3TextFieldWidget()
            )
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields of the connection form on Airflow 2.11."""
        from airflow_provider_faxplus.get_provider_info import (
            CONN_FIELDS,
            HIDDEN_FIELDS,
            PLACEHOLDERS,
            RELABELING,
        )

        defaults = {
            name: str(spec["schema"]["default"])
            for name, spec in CONN_FIELDS.items()
            if "default" in spec["schema"] and "boolean" not in spec["schema"]["type"]
        }
        return {
            "hidden_fields": list(HIDDEN_FIELDS),
            "relabeling": dict(RELABELING),
            "placeholders": {
                **PLACEHOLDERS,
                **defaults,
            },
        }


class _Deadline:
    """Bounds a whole request: when ``seconds`` pass, shuts down the socket the request is using, so a
    server that trickles its answer cannot keep the call alive (each byte would reset requests'
    per-operation timeout)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = 0.0
        self.expired = False
        self.done = False
        self.connection: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> _Deadline:
        _ACTIVE.deadline = self
        self.at = time.monotonic() + self.seconds
        _WATCHDOG.watch(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.done = True
        _ACTIVE.deadline = None

    def touch(self) -> None:
        """Progress: the deadline moves to ``seconds`` from now (an upload is bounded by inactivity)."""
        self.at = time.monotonic() + self.seconds

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            sock = getattr(self.connection, "sock", None)
            if sock is not None:
                # The plain socket's shutdown (not SSLSocket's): the reading thread sees EOF.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One thread per process that expires deadlines; a thread per request would double a call's cost.

    Finished deadlines stay in the heap until they reach its top, so watching one costs a heap push."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # Airflow forks task processes

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _Deadline) -> None:
        with self._cond:
            earliest = not self._heap or deadline.at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="faxplus-deadlines", daemon=True)
                self._thread.start()
            elif earliest:
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    deadline = heapq.heappop(self._heap)[2]
                    if deadline.done:
                        continue
                    if deadline.at > now:  # touched since it was watched: wait for its new time
                        heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
                    else:
                        deadline.expire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
_ACTIVE = threading.local()


def _touch_deadline() -> None:
    deadline = getattr(_ACTIVE, "deadline", None)
    if deadline is not None:
        deadline.touch()


def _track(pool_class: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
    class Tracked(pool_class):  # type: ignore[valid-type,misc]
        def _get_conn(self, timeout: float | None = None) -> Any:
            conn = super()._get_conn(timeout)
            deadline = getattr(_ACTIVE, "deadline", None)
            if deadline is not None:
                deadline.connection = conn
            return conn

    Tracked.__name__ = f"Tracked{pool_class.__name__}"
    return Tracked


_TRACKED_POOLS = {"http": _track(HTTPConnectionPool), "https": _track(HTTPSConnectionPool)}


class _DeadlineAdapter(HTTPAdapter):
    """Lets a :class:`_Deadline` find the connection its request uses."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _TRACKED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _TRACKED_POOLS
        return manager


def _rebased(call: protocol.ApiCall, config: FaxPlusConfig) -> protocol.ApiCall:
    """The same call against a connection read again (its base URL or client id may have changed)."""
    headers = {**call.headers, **protocol.base_headers(config)}
    if not config.client_id:
        headers.pop("x-fax-clientid", None)
    return dataclasses.replace(call, url=config.base_url + call.path, headers=headers)


def _per_call_headers(headers: Mapping[str, str], common: Mapping[str, str | bytes]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if common.get(name) != value}


def _send_not_processed(exc: BaseException) -> bool:
    """A send that provably did not reach the API, or was refused before being processed."""
    if isinstance(exc, FaxPlusNotSentError):
        return True
    return isinstance(exc, FaxPlusAPIError) and exc.status in send.SEND_NOT_PROCESSED_STATUSES


def _never_connected(exc: BaseException) -> bool:
    """DNS failure or refused connection (urllib3's NewConnectionError anywhere in the chain)."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, NewConnectionError):
            return True
        pending.extend((item.__cause__, item.__context__, getattr(item, "reason", None), *item.args))
    return False


def _read_bounded(response: requests.Response, limit: int) -> bytes | None:
    """The body (decompressed), or ``None`` once it is over ``limit`` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            response.close()  # drops the connection: the rest is never read
            return None
        chunks.append(chunk)
    return b"".join(chunks)  # read to the end: the connection goes back to the pool


def _stream(response: requests.Response, sink: Callable[[], IO[bytes]]) -> bytes:
    """A 200 file answer's body into a fresh sink, chunk by chunk (never whole in memory); another
    answer's body (an error, JSON) read up to 64 KiB and returned."""
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    with response:
        if response.status_code != 200 or content_type == "application/json":
            body = b""
            for chunk in response.iter_content(8192):
                body += chunk
                if len(body) >= DOWNLOAD_ERROR_BODY_BYTES:
                    break
            return body[:DOWNLOAD_ERROR_BODY_BYTES]
        handle = sink()
        for chunk in response.iter_content(files.CHUNK_BYTES):
            handle.write(chunk)
    return b""


def _short(exc: BaseException, redact: redaction.Redactor) -> str:
    """The exception's text, redacted and then cut (a cut first could leave a secret's first characters)."""
    text = f"{type(exc).__name__}: {exc}"
    shown = redact(text)
    return shown if len(shown) <= 300 else redact(text, 297) + "..."
