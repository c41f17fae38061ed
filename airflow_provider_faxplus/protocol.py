"""The two Fax.Plus outbox operations without I/O: build requests, interpret responses.

The sync hook (requests) and the async trigger share these functions, so they can never disagree on
URLs, headers, error mapping or parsing.
"""

from __future__ import annotations

import email.utils
import json
import math
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_faxplus import __version__, redaction
from airflow_provider_faxplus.config import FaxPlusConfig, TlsSettings
from airflow_provider_faxplus.exceptions import (
    FaxPlusAPIError,
    FaxPlusAuthError,
    FaxPlusConfigError,
    FaxPlusConflictError,
    FaxPlusInputError,
    FaxPlusNotFoundError,
    FaxPlusNotSentError,
    FaxPlusRateLimitError,
    FaxPlusRequestError,
    FaxPlusResponseError,
    FaxPlusServerError,
    FaxPlusTLSError,
    FaxPlusTransportError,
)
from airflow_provider_faxplus.models import OutboxFax, OutboxParseError, parse_outbox
from airflow_provider_faxplus.redaction import Redactor

MAX_PATH_PARAM_LENGTH = 256
# 408 (Request Timeout) is transient by definition, like 429 and these 5xx.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Error fields are cut to these lengths in messages.
MAX_ERROR_CHARS = 200
MAX_DESCRIPTION_CHARS = 500
# Path segments that URL normalisation (RFC 3986 dot segments) would remove or turn into "go up".
DOT_SEGMENTS = frozenset({".", ".."})
# A 400 with one of these codes means the outbox id does not resolve. Fax.Plus does not document the
# code it uses once a fax has left the outbox; these are the plausible spellings (an assumption).
NOT_FOUND_ERROR_CODES = frozenset(
    {"not_found", "fax_not_found", "outbox_not_found", "outbox_fax_not_found", "invalid_outbox_fax_id"}
)
USER_AGENT = f"airflow-provider-faxplus/{__version__}"


# The largest answer read, per operation: a hostile endpoint (or a man in the middle with verify off)
# could otherwise fill the memory within the timeout. Bytes after decompression.
MAX_ANSWER_BYTES = 1 << 20
# The whole outbox in one answer (no pagination): ~600 bytes a record, so ~400,000 records.
MAX_LIST_ANSWER_BYTES = 256 << 20


@dataclass(frozen=True)
class Operation:
    name: str  # the spec's summary, used in messages
    operation_id: str
    method: str
    scopes: tuple[str, ...]
    max_answer_bytes: int = MAX_ANSWER_BYTES


GET_OUTBOX_FAX = Operation("Get outgoing fax", "getOutboxFax", "GET", ("fax:all:read", "fax:fax:read"))
UPDATE_OUTBOX_FAX = Operation(
    "Modify an outgoing fax", "updateOutboxFax", "PUT", ("fax:all:edit", "fax:fax:edit")
)


@dataclass(frozen=True)
class ApiCall:
    """One request, ready to send. ``headers`` never include the token: transports add it."""

    operation: Operation
    path: str
    url: str
    outbox_fax_id: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    # What the id names: an outbox id, or the id of a fax record (records.py), which errors say apart.
    kind: str = "outbox fax"

    @property
    def method(self) -> str:
        return self.operation.method

    @property
    def id_kwargs(self) -> dict[str, Any]:
        """The id as an exception attribute: ``outbox_fax_id`` or ``fax_id``."""
        return {"outbox_fax_id" if self.kind == "outbox fax" else "fax_id": self.outbox_fax_id}

    def describe(self) -> str:
        return f"{self.operation.name} ({self.method} {self.path})"


def validate_path_param(name: str, value: object) -> str:
    """Return ``value`` if it is safe as one path segment; raise :class:`FaxPlusInputError` otherwise."""
    if not isinstance(value, str):
        raise FaxPlusInputError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise FaxPlusInputError(f"{name} is empty")
    if value != value.strip():
        raise FaxPlusInputError(f"{name} {value!r} has leading or trailing whitespace")
    if len(value) > MAX_PATH_PARAM_LENGTH:
        raise FaxPlusInputError(f"{name} is {len(value)} characters long; at most {MAX_PATH_PARAM_LENGTH}")
    if value in DOT_SEGMENTS:
        raise FaxPlusInputError(f"{name} {value!r} must not be '.' or '..': it would change the request path")
    if "/" in value or "\\" in value or ".." in value:
        raise FaxPlusInputError(f"{name} {value!r} must not contain '/', '\\' or '..'")
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in value):
        raise FaxPlusInputError(f"{name} {value!r} contains control characters")
    check_unicode(name, value)
    return value


def check_unicode(name: str, value: str) -> None:
    """Refuse text that cannot be sent as UTF-8: a lone surrogate (from a wrongly decoded byte)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FaxPlusInputError(
            f"{name} is not valid Unicode text: a lone surrogate (U+{ord(value[exc.start]):04X}) at "
            f"character {exc.start}, usually bytes decoded with errors='surrogateescape'"
        ) from None


def validate_comment(comment: object) -> str:
    if not isinstance(comment, str):
        raise FaxPlusInputError(f"comment must be a string, got {type(comment).__name__}")
    check_unicode("comment", comment)
    return comment


def base_headers(config: FaxPlusConfig) -> dict[str, str]:
    """Headers sent on every request, except ``Authorization`` (added by the transport)."""
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if config.client_id:
        headers["x-fax-clientid"] = config.client_id
    return headers


def _outbox_path(user_id: object, outbox_fax_id: object) -> tuple[str, str]:
    user = validate_path_param("user_id", user_id)
    fax_id = validate_path_param("outbox_fax_id", outbox_fax_id)
    return f"/accounts/{quote(user, safe='')}/outbox/{quote(fax_id, safe='')}", fax_id


def get_outbox_fax_call(config: FaxPlusConfig, outbox_fax_id: object, user_id: object = "self") -> ApiCall:
    path, fax_id = _outbox_path(user_id, outbox_fax_id)
    return ApiCall(GET_OUTBOX_FAX, path, config.base_url + path, fax_id, base_headers(config))


def update_outbox_fax_call(
    config: FaxPlusConfig, outbox_fax_id: object, comment: object, user_id: object = "self"
) -> ApiCall:
    path, fax_id = _outbox_path(user_id, outbox_fax_id)
    # The payload allows nothing but "comment" (additionalProperties: false).
    body = json.dumps({"comment": validate_comment(comment)}, ensure_ascii=False).encode("utf-8")
    headers = {**base_headers(config), "Content-Type": "application/json; charset=utf-8"}
    return ApiCall(UPDATE_OUTBOX_FAX, path, config.base_url + path, fax_id, headers, body)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or ``None``."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def server_time(headers: Mapping[str, str]) -> float | None:
    """The server's clock (POSIX seconds) from an answer's ``Date`` header, or ``None`` without a
    readable one."""
    value = _header(headers, "date")
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    stamp = when.timestamp()
    return stamp if math.isfinite(stamp) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def redact_and_cut(text: str, secret: str, limit: int) -> str:
    """``text`` without ``secret`` (nor its encoded forms or fragments), cut to ``limit`` characters."""
    return Redactor((secret,))(text, limit)


def _error_fields(body: bytes, redact: Redactor) -> tuple[str | None, str | None]:
    """Fax.Plus's ``error`` and ``description`` from an ``Error`` body, else a short excerpt of the body."""
    text = body.decode("utf-8", errors="replace")
    try:
        decoded = json.loads(text) if text else None
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and ("error" in decoded or "description" in decoded):
        error = decoded.get("error")
        description = decoded.get("description")
        return (
            redact(str(error), MAX_ERROR_CHARS) if error is not None else None,
            redact(str(description), MAX_DESCRIPTION_CHARS) if description is not None else None,
        )
    excerpt = redact(" ".join(text.split()), MAX_ERROR_CHARS)
    return None, (excerpt or None)


def error_from_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> FaxPlusRequestError:
    """The exception for a non-success response, with everything a person needs to act on it."""
    error, description = _error_fields(body, redaction.for_config(config))
    said = " ".join(part for part in (error, f"- {description}" if description else None) if part)
    message = f"{call.describe()} failed{_for_fax(call)}: HTTP {status}"
    if said:
        message += f" {said}"
    kwargs: dict[str, Any] = {
        "operation": call.operation.name,
        "method": call.method,
        "path": call.path,
        **call.id_kwargs,
        "status": status,
        "error": error,
        "description": description,
    }
    if status in (401, 403):
        message += (
            f". Check the API token of the connection: it needs one of the scopes "
            f"{' or '.join(call.operation.scopes)}"
            + (" (an OAuth2 token also needs the connection's client_id)" if not config.client_id else "")
        )
        return FaxPlusAuthError(message, **kwargs)
    if status == 404 and not call.outbox_fax_id:
        # A call on the whole account (send, upload, list) names no fax: its path itself is unknown.
        return FaxPlusAPIError(
            message + ". No such path on this API: check the connection's base URL and the user_id (self, "
            "or a member's user id)",
            **kwargs,
        )
    if call.kind != "outbox fax" and (status == 404 or (status == 400 and error in NOT_FOUND_ERROR_CODES)):
        return FaxPlusNotFoundError(
            message + f". No {call.kind} with this id: a wrong id, deleted, or not recorded yet", **kwargs
        )
    if status == 404 or (status == 400 and error in NOT_FOUND_ERROR_CODES):
        return FaxPlusNotFoundError(
            message + ". The outbox id does not resolve: the fax has left the outbox (sent or failed) "
            "or the id is wrong",
            **kwargs,
        )
    if status == 409:
        return FaxPlusConflictError(message + ". The fax cannot be modified in its current state", **kwargs)
    if 300 <= status < 400:
        # The host is the answer's text too: a server can echo the token as a host name.
        host = redaction.for_config(config)(_location_host(_header(headers, "location") or ""))
        return FaxPlusAPIError(
            message + f". Redirects are not followed (the token must not leave the configured host); "
            f"check the base URL (redirect target host: {host!r})",
            **kwargs,
        )
    retry_after = parse_retry_after(_header(headers, "retry-after"))
    if status == 429:
        return FaxPlusRateLimitError(message, retry_after=retry_after, **kwargs)
    if status >= 500:
        return FaxPlusServerError(message, retry_after=retry_after, **kwargs)
    if status == 408:
        return FaxPlusAPIError(message + " (request timeout: transient)", retry_after=retry_after, **kwargs)
    return FaxPlusAPIError(message, **kwargs)


def _location_host(location: str) -> str:
    try:
        return urlsplit(location).hostname or "(same host)"
    except ValueError:
        return "(unparseable)"


def _for_fax(call: ApiCall) -> str:
    # Calls on the whole outbox (send, list, upload) name no fax.
    return f" for {call.kind} {call.outbox_fax_id!r}" if call.outbox_fax_id else ""


def transport_error(call: ApiCall, reason: str, *, not_sent: bool = False) -> FaxPlusTransportError:
    cls = FaxPlusNotSentError if not_sent else FaxPlusTransportError
    return cls(
        f"{call.describe()} failed{_for_fax(call)}: {reason}",
        operation=call.operation.name,
        method=call.method,
        path=call.path,
        **call.id_kwargs,
    )


def is_certificate_failure(exc: BaseException) -> bool:
    """Whether an exception of requests or aiohttp comes from a failed certificate check (anywhere in
    its chain of causes): no retry can fix that, unlike a dropped TLS handshake."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return True
        pending.extend((item.__cause__, item.__context__, getattr(item, "reason", None)))
        pending.extend(getattr(item, "args", ()))
        pending.append(getattr(item, "certificate_error", None))  # aiohttp's certificate error
    return False


def tls_error(call: ApiCall, tls: TlsSettings, reason: str) -> FaxPlusTLSError:
    return FaxPlusTLSError(
        f"{call.describe()} failed{_for_fax(call)}: the server's TLS certificate "
        f"could not be verified with {tls.source} ({reason}). No retry can fix this: set the "
        "connection's CA bundle (extra 'ca_bundle') to the CA that signed the server's certificate "
        "(or REQUESTS_CA_BUNDLE for every connection), or, for a test server only, set 'verify' to false",
        operation=call.operation.name,
        method=call.method,
        path=call.path,
        **call.id_kwargs,
    )


def answer_too_large(
    operation: str, method: str, path: str, status: int, limit: int, outbox_fax_id: str | None = None
) -> FaxPlusResponseError:
    """An answer over its operation's size limit: refused unread past the limit."""
    return FaxPlusResponseError(
        f"{operation} ({method} {path}) answered HTTP {status} with a body larger than {limit} bytes, this "
        "provider's limit for it: refused unread (a misbehaving server or something in between)",
        operation=operation,
        method=method,
        path=path,
        outbox_fax_id=outbox_fax_id,
        status=status,
    )


def _malformed(call: ApiCall, status: int, reason: str) -> FaxPlusResponseError:
    return FaxPlusResponseError(
        f"{call.describe()} returned a malformed response{_for_fax(call)} (HTTP {status}): {reason}",
        operation=call.operation.name,
        method=call.method,
        path=call.path,
        **call.id_kwargs,
        status=status,
    )


def parse_get_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> OutboxFax:
    """The outbox record of a successful *Get outgoing fax*, or the matching exception."""
    if 200 < status < 300:
        raise _malformed(call, status, "expected HTTP 200 with an Outbox object")
    if status != 200:
        raise error_from_response(config, call, status, headers, body)
    try:
        decoded = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        content_type = _header(headers, "content-type") or "no content type"
        raise _malformed(call, status, f"the body is not JSON ({content_type}, {len(body)} bytes)") from None
    try:
        return parse_outbox(decoded)
    except OutboxParseError as exc:
        raise _malformed(call, status, str(exc)) from None


def check_update_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> None:
    """Succeed on a 2xx answer to *Modify an outgoing fax* (the spec says 204), else raise."""
    if not 200 <= status < 300:
        raise error_from_response(config, call, status, headers, body)


def is_permanent(exc: BaseException) -> bool:
    """Failures that no retry, of the call or of the task, can fix: bad configuration or input, a
    rejected token, a certificate that does not verify, any other 3xx/4xx answer except 408 and 429.
    A malformed response is not one of them (it can come from a proxy in between); nor is a not-found,
    which callers interpret themselves."""
    if isinstance(exc, FaxPlusConfigError | FaxPlusInputError | FaxPlusAuthError | FaxPlusTLSError):
        return True
    if isinstance(exc, FaxPlusNotFoundError) or not isinstance(exc, FaxPlusAPIError):
        return False
    return exc.status is not None and 300 <= exc.status < 500 and exc.status not in RETRYABLE_STATUSES


def is_retryable(exc: BaseException) -> bool:
    """Transient failures: connection problems, timeouts, 408, 429 and 500/502/503/504. Never other
    4xx, nor a failed certificate check."""
    if isinstance(exc, FaxPlusTransportError):
        return True
    return isinstance(exc, FaxPlusAPIError) and exc.status in RETRYABLE_STATUSES
