"""Sending faxes without I/O: validate payloads, build the upload/send/list/cancel calls, parse answers,
and the mark that lets a retried task find the fax an earlier try may have sent.

Sources: Fax.Plus's SDK (faxplus-api 3.0.5 models ``PayloadOutbox``, ``OutboxOptions``, ``RetryOptions``,
``OutboxCoverPage``, ``SendFaxResponse``, ``FilePath``) and reference pages (see FAXPLUS_FACTS): at most
10 files and 150 MB in all per send; file types from apidoc.fax.plus/concepts/fax (DOC, DOCX, PDF, TXT,
RTF, JPG, PNG, TIFF, XLS, XLSX).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from airflow_provider_faxplus import oauth, redaction
from airflow_provider_faxplus.config import FaxPlusConfig
from airflow_provider_faxplus.exceptions import (
    FaxPlusAPIError,
    FaxPlusInputError,
    FaxPlusNotSentError,
    FaxPlusRequestError,
)
from airflow_provider_faxplus.models import OutboxFax, OutboxParseError, parse_outbox
from airflow_provider_faxplus.protocol import (
    MAX_LIST_ANSWER_BYTES,
    ApiCall,
    Operation,
    _malformed,
    base_headers,
    check_unicode,
    error_from_response,
    validate_path_param,
)

# The upload's scope is a file scope (faxplus-api 3.0.5, FilesApi.upload_file).
UPLOAD_FILE = Operation("Upload a file", "uploadFile", "POST", ("fax:all:edit", "fax:file:edit"))
SEND_FAX = Operation("Send a fax", "sendFax", "POST", ("fax:all:edit", "fax:fax:edit"))
LIST_OUTBOX = Operation(
    "List outgoing faxes",
    "listOutboxFaxes",
    "GET",
    ("fax:all:read", "fax:fax:read"),
    max_answer_bytes=MAX_LIST_ANSWER_BYTES,
)
CANCEL_OUTBOX_FAX = Operation(
    "Delete an outgoing fax", "deleteOutboxFax", "DELETE", ("fax:all:edit", "fax:fax:edit")
)

MAX_FILES = 10
MAX_TOTAL_BYTES = 150 * 1000 * 1000  # "150 MB in all" (FAXPLUS_FACTS); decimal megabytes, the stricter
MAX_DESTINATIONS = 4000
ACCEPTED_EXTENSIONS = frozenset(
    {"pdf", "doc", "docx", "txt", "rtf", "jpg", "jpeg", "png", "tif", "tiff", "xls", "xlsx"}
)
UPLOAD_FORMATS = frozenset({"pdf", "tiff"})
NO_NUMBER = "no_number"
# ITU-T E.164: a country code and subscriber number, 15 digits at most, no leading zero; Fax.Plus's SDK
# and docs write numbers as "+" and digits only. 7 digits at least: Niue (+683) and Tokelau (+690) have
# four-digit subscriber numbers.
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
COVER_PAGE_FIELDS = frozenset({"name_to", "name_from", "subject", "flags", "message"})
COVER_PAGE_FLAGS = frozenset({"urgent", "for_review", "please_reply", "confidential"})
MARK_PREFIX = "airflow-"
MARK_PATTERN = re.compile(r"airflow-[0-9a-f]{12}")


class FaxPlusSendUncertainError(FaxPlusRequestError):
    """The send request may have reached Fax.Plus but its answer was lost (timeout, dropped connection,
    3xx, 5xx): the fax may have been created. Never retried blindly; see the README's never-twice policy.
    ``known_ids``: outbox ids the answer did give (a partial answer), destination -> id."""

    known_ids: dict[str, str]

    def __init__(self, message: str, *, known_ids: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.known_ids = dict(known_ids or {})


@dataclass(frozen=True)
class UploadedFile:
    """A file uploaded with *Upload a file*: pass ``path`` in a send's ``files``."""

    path: str
    file_name: str
    size: int


@dataclass(frozen=True)
class SentFax:
    """The outbox id of each destination of one send."""

    outbox_fax_ids: dict[str, str]
    mark: str | None = None


# Validation -------------------------------------------------------------------------------------


def validate_number(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FaxPlusInputError(f"{name} must be a string fax number, got {type(value).__name__}")
    if not E164.fullmatch(value):
        raise FaxPlusInputError(
            f"{name} {value!r:.40} is not a fax number in E.164 form: '+', the country code and the "
            "number, 7 to 15 digits in all, no spaces or dashes (e.g. '+16699990000')"
        )
    return value


def validate_destinations(to: object) -> list[str]:
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list | tuple):
        raise FaxPlusInputError(f"to must be a fax number or a list of them, got {type(to).__name__}")
    if not to:
        raise FaxPlusInputError("to is empty: give at least one destination")
    if len(to) > MAX_DESTINATIONS:
        raise FaxPlusInputError(f"to has {len(to)} destinations; Fax.Plus accepts at most {MAX_DESTINATIONS}")
    numbers = [validate_number("destination", number) for number in to]
    duplicates = sorted({number for number in numbers if numbers.count(number) > 1})
    if duplicates:
        raise FaxPlusInputError(f"destination(s) given twice: {', '.join(duplicates)}")
    return numbers


def validate_file_name(file_name: object) -> str:
    if not isinstance(file_name, str) or not file_name.strip():
        raise FaxPlusInputError(f"file name must be a non-empty string, got {file_name!r:.60}")
    if any(ord(char) < 0x20 or char in '"\\/' for char in file_name):
        raise FaxPlusInputError(f"file name {file_name!r:.60} contains '/', '\\', '\"' or control characters")
    extension = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    if extension not in ACCEPTED_EXTENSIONS:
        raise FaxPlusInputError(
            f"file {file_name!r:.80} has a type Fax.Plus does not accept (.{extension or '?'}); accepted: "
            + ", ".join(sorted(ACCEPTED_EXTENSIONS))
        )
    return file_name


def validate_sizes(sizes: Mapping[str, int]) -> None:
    """At most ``MAX_FILES`` files and ``MAX_TOTAL_BYTES`` in all (names are shown, never contents)."""
    if len(sizes) > MAX_FILES:
        raise FaxPlusInputError(f"{len(sizes)} files given; Fax.Plus accepts at most {MAX_FILES} per fax")
    total = sum(sizes.values())
    if total > MAX_TOTAL_BYTES:
        listed = ", ".join(f"{name} ({size:,} bytes)" for name, size in sizes.items())
        raise FaxPlusInputError(
            f"the files add up to {total:,} bytes; Fax.Plus accepts at most {MAX_TOTAL_BYTES:,}: {listed}"
        )


def is_transient_path(value: object) -> bool:
    """A path answered by *Upload a file* (``/transient-...``), not a local file."""
    return isinstance(value, str) and value.startswith("/transient-")


def format_send_time(send_time: object) -> str:
    """``YYYY-MM-DD HH:mm:ss +0000`` from an aware datetime; a naive one is refused (its zone is a guess)."""
    if not isinstance(send_time, datetime):
        raise FaxPlusInputError(f"send_time must be a datetime, got {type(send_time).__name__}")
    if send_time.tzinfo is None or send_time.utcoffset() is None:
        raise FaxPlusInputError(
            f"send_time {send_time.isoformat()} has no time zone; give an aware datetime (e.g. in UTC)"
        )
    return send_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def _retry_option(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise FaxPlusInputError(f"{name} must be a whole number from 0 to {maximum}, got {value!r:.40}")
    return value


def validate_cover_page(cover_page: object) -> dict[str, Any]:
    if not isinstance(cover_page, Mapping):
        raise FaxPlusInputError(f"cover_page must be a mapping, got {type(cover_page).__name__}")
    unknown = sorted(set(map(str, cover_page)) - COVER_PAGE_FIELDS)
    if unknown:
        raise FaxPlusInputError(
            f"cover_page has unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(COVER_PAGE_FIELDS))}"
        )
    result: dict[str, Any] = {}
    for name, value in cover_page.items():
        if name == "flags":
            if not isinstance(value, list | tuple) or not all(flag in COVER_PAGE_FLAGS for flag in value):
                raise FaxPlusInputError(
                    f"cover_page flags {value!r:.80} must be a list of {', '.join(sorted(COVER_PAGE_FLAGS))}"
                )
            result[name] = list(value)
        elif not isinstance(value, str):
            raise FaxPlusInputError(f"cover_page {name} must be a string, got {type(value).__name__}")
        else:
            result[name] = value
    return result


def validate_tags(tags: object) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, list | tuple):
        raise FaxPlusInputError(f"comment_tags must be a list of strings, got {type(tags).__name__}")
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise FaxPlusInputError(f"comment tag {tag!r:.40} must be a non-empty string")
    return list(tags)


def send_payload(
    *,
    to: object,
    files: object,
    from_number: object = NO_NUMBER,
    comment: object = None,
    comment_tags: object = None,
    send_time: object = None,
    retry_count: object = None,
    retry_delay: object = None,
    enhancement: object = None,
    cover_page: object = None,
) -> dict[str, Any]:
    """The ``PayloadOutbox`` body, every field checked; ``return_ids`` is always true."""
    if from_number != NO_NUMBER:
        validate_number("from_number", from_number)
    if isinstance(files, str) or not isinstance(files, list | tuple) or not files:
        raise FaxPlusInputError("files must be a non-empty list of uploaded (/transient-...) paths")
    if len(files) > MAX_FILES:
        raise FaxPlusInputError(f"{len(files)} files given; Fax.Plus accepts at most {MAX_FILES} per fax")
    for path in files:
        if not is_transient_path(path):
            raise FaxPlusInputError(
                f"file {path!r:.80} is not an uploaded path (/transient-...): upload it first"
            )
    payload: dict[str, Any] = {
        "from": from_number,
        "to": validate_destinations(to),
        "files": list(files),  # type: ignore[arg-type]
        "return_ids": True,
    }
    if comment is not None and not isinstance(comment, str):
        raise FaxPlusInputError(f"comment must be a string, got {type(comment).__name__}")
    tags = validate_tags(comment_tags)
    if comment is not None or tags:
        payload["comment"] = {"tags": tags, "text": comment or ""}
    options: dict[str, Any] = {}
    if enhancement is not None:
        if not isinstance(enhancement, bool):
            raise FaxPlusInputError(f"enhancement must be true or false, got {enhancement!r:.40}")
        options["enhancement"] = enhancement
    if retry_count is not None or retry_delay is not None:
        options["retry"] = {
            "count": _retry_option("retry_count", 0 if retry_count is None else retry_count, 3),
            "delay": _retry_option("retry_delay", 0 if retry_delay is None else retry_delay, 180),
        }
    if options:
        payload["options"] = options
    if send_time is not None:
        payload["send_time"] = format_send_time(send_time)
    if cover_page is not None:
        payload["cover_page"] = validate_cover_page(cover_page)
    return payload


# The mark -----------------------------------------------------------------------------------------


def send_mark(dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """A short stable tag naming one task instance: the same on every try, different for any other.
    A hash, so it shows nothing of the DAG (and can hold no secret)."""
    key = "\x00".join((dag_id, task_id, run_id, str(map_index)))
    return MARK_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def find_marked(
    records: Iterable[OutboxFax], mark: str, *, tags: Iterable[str] = (), text: str | None = None
) -> dict[str, str]:
    """Destination -> outbox id of the faxes carrying ``mark`` (a comment tag) that are this send's:
    every tag of ``tags`` present too, and the comment text ``text`` (when given) the same. The mark
    names a task instance, not a deployment: two deployments sharing an account can share it."""
    wanted = {mark, *tags}
    found: dict[str, str] = {}
    for record in records:
        if not wanted <= set(record.comment.tags):
            continue
        if text is not None and record.comment.text.strip() != text.strip():
            continue
        for destination in record.to:
            found.setdefault(destination, record.id)
    return found


def marked_elsewhere(records: Iterable[OutboxFax], mark: str, found: Mapping[str, str]) -> list[str]:
    """Ids of faxes carrying ``mark`` that :func:`find_marked` did not take (another comment or tags)."""
    taken = set(found.values())
    return [r.id for r in records if mark in r.comment.tags and r.id not in taken]


# Calls --------------------------------------------------------------------------------------------


def _account_path(user_id: object, tail: str) -> str:
    user = validate_path_param("user_id", user_id)
    return f"/accounts/{quote(user, safe='')}/{tail}"


def _call(
    config: FaxPlusConfig, op: Operation, path: str, headers: dict[str, str], body: bytes | None = None
) -> ApiCall:
    return ApiCall(op, path, config.base_url + path, "", headers, body)


def upload_call(
    config: FaxPlusConfig, file_name: str, boundary: str, user_id: object = "self", fmt: object = None
) -> ApiCall:
    """*Upload a file*; the multipart body is streamed by the transport (see :func:`multipart_parts`)."""
    path = _account_path(user_id, "files")
    if fmt is not None:
        if fmt not in UPLOAD_FORMATS:
            raise FaxPlusInputError(f"format {fmt!r:.20} must be one of {', '.join(sorted(UPLOAD_FORMATS))}")
        path += "?" + urlencode({"format": fmt})
    validate_file_name(file_name)
    headers = {**base_headers(config), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    return _call(config, UPLOAD_FILE, path, headers)


def new_boundary() -> str:
    return "faxplus-" + uuid.uuid4().hex


def multipart_parts(file_name: str, boundary: str) -> tuple[bytes, bytes]:
    """The bytes before and after the file's contents in a ``fax_file`` multipart body."""
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="fax_file"; filename="{file_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode()


def send_call(config: FaxPlusConfig, payload: Mapping[str, Any], user_id: object = "self") -> ApiCall:
    path = _account_path(user_id, "outbox")
    headers = {**base_headers(config), "Content-Type": "application/json; charset=utf-8"}
    body = json.dumps(payload, ensure_ascii=False)
    check_unicode("the fax to send (its comment, tags or cover page)", body)
    return _call(config, SEND_FAX, path, headers, body.encode("utf-8"))


def list_outbox_call(config: FaxPlusConfig, user_id: object = "self") -> ApiCall:
    return _call(config, LIST_OUTBOX, _account_path(user_id, "outbox"), base_headers(config))


def cancel_call(config: FaxPlusConfig, outbox_fax_id: object, user_id: object = "self") -> ApiCall:
    fax_id = validate_path_param("outbox_fax_id", outbox_fax_id)
    path = _account_path(user_id, f"outbox/{quote(fax_id, safe='')}")
    return ApiCall(CANCEL_OUTBOX_FAX, path, config.base_url + path, fax_id, base_headers(config))


# Answers ------------------------------------------------------------------------------------------


def _json_object(call: ApiCall, status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed(call, status, f"the body is not JSON ({len(body)} bytes)") from None
    if not isinstance(decoded, dict):
        raise _malformed(call, status, "the body is not a JSON object")
    return decoded


def parse_upload_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> str:
    if not 200 <= status < 300:
        raise error_from_response(config, call, status, headers, body)
    path = _json_object(call, status, headers, body).get("path")
    if not isinstance(path, str) or not path:
        raise _malformed(call, status, "no 'path' in the answer")
    return path


def parse_send_response(
    config: FaxPlusConfig,
    call: ApiCall,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    destinations: Sequence[str],
) -> dict[str, str]:
    """Destination -> outbox id from ``{"ids": {...}}`` (``return_ids: true``)."""
    if not 200 <= status < 300:
        raise error_from_response(config, call, status, headers, body)
    ids = _json_object(call, status, headers, body).get("ids")
    if not isinstance(ids, dict) or not all(isinstance(v, str) and v for v in ids.values()):
        raise _malformed(call, status, "no 'ids' object of outbox ids in the answer (return_ids was true)")
    known = {d: ids[d] for d in destinations if d in ids}
    missing = [d for d in destinations if d not in ids]
    if missing:
        # The fax was made for some destinations at least: the ids given are kept, the rest are unknown.
        raise uncertain(
            call, _malformed(call, status, f"no outbox id for destination(s) {', '.join(missing)}"), known
        )
    return known


def list_records(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> list[Any]:
    """The decoded ``records`` of a *List outgoing faxes* answer, not yet parsed, or the exception."""
    if status != 200:
        raise error_from_response(config, call, status, headers, body)
    records = _json_object(call, status, headers, body).get("records")
    if not isinstance(records, list):
        raise _malformed(call, status, "no 'records' list in the answer")
    return records


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def iter_list_records(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> Iterator[Any]:
    """The decoded records of a *List outgoing faxes* answer one at a time, unparsed, so an async caller
    can let its event loop run between them (decoding 10,000 records at once blocks it for 100s of ms).
    Raises as :func:`list_records` does; what was yielded before an error is not an answer."""
    if status != 200:
        raise error_from_response(config, call, status, headers, body)
    not_json = _malformed(call, status, f"the body is not JSON ({len(body)} bytes)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise not_json from None
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        match = _WHITESPACE.match(text, pos)
        return pos if match is None else match.end()

    def value_at(pos: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, pos)
        except ValueError:
            raise not_json from None

    pos = skip(0)
    if not text.startswith("{", pos):
        value_at(pos)  # not JSON at all, or JSON but not an object
        raise _malformed(call, status, "the body is not a JSON object")
    pos, found = skip(pos + 1), False
    if text.startswith("}", pos):
        pos += 1
    else:
        while True:
            key, pos = value_at(pos)
            pos = skip(pos)
            if not isinstance(key, str) or not text.startswith(":", pos):
                raise not_json
            pos = skip(pos + 1)
            if key == "records" and not found and text.startswith("[", pos):
                found = True
                pos = skip(pos + 1)
                if text.startswith("]", pos):
                    pos += 1
                else:
                    while True:
                        record, pos = value_at(pos)
                        yield record
                        pos = skip(pos)
                        if text.startswith(",", pos):
                            pos = skip(pos + 1)
                        elif text.startswith("]", pos):
                            pos += 1
                            break
                        else:
                            raise not_json
            else:
                _, pos = value_at(pos)
                if key == "records":
                    raise _malformed(call, status, "no 'records' list in the answer")
            pos = skip(pos)
            if text.startswith(",", pos):
                pos = skip(pos + 1)
            elif text.startswith("}", pos):
                pos += 1
                break
            else:
                raise not_json
    if skip(pos) != len(text):
        raise not_json
    if not found:
        raise _malformed(call, status, "no 'records' list in the answer")


def parse_list_record(
    call: ApiCall, status: int, index: int, record: object, redact: Callable[[str], str]
) -> OutboxFax:
    """One record of a list answer as an :class:`OutboxFax`; a record that is no ``Outbox`` raises a
    malformed-response error naming it (its position, and its id where it has one), through ``redact``:
    the id and the reason are the answer's text."""
    try:
        return parse_outbox(record)
    except OutboxParseError as exc:
        fax_id = record.get("id") if isinstance(record, dict) else None
        named = f"record #{index}" + (f" (id {fax_id!r:.80})" if isinstance(fax_id, str) else "")
        raise _malformed(call, status, redact(f"{named} is not an Outbox: {exc}")) from None


def parse_list_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> list[OutboxFax]:
    """Every record of a *List outgoing faxes* answer; one that does not parse fails the whole answer
    (a list with a hole could hide the very fax a caller looks for)."""
    records = list_records(config, call, status, headers, body)
    redact = redaction.for_config(config)
    return [parse_list_record(call, status, index, record, redact) for index, record in enumerate(records)]


def check_cancel_response(
    config: FaxPlusConfig, call: ApiCall, status: int, headers: Mapping[str, str], body: bytes
) -> None:
    if not 200 <= status < 300:
        raise error_from_response(config, call, status, headers, body)


# Never twice: the one rule for every outcome of every request of a send ------------------------------

NOT_SENT = "not sent"  # certainly no fax was created by this request
SENT = "sent"  # certainly created, and its outbox ids are known
UNKNOWN = "unknown"  # may have created a fax whose ids are not known

# Answers to the send that prove a refusal before anything was made: 400 (invalid payload, unknown file,
# too many files or destinations), 401/403 (token or scope), 404 (no such account path), 413 (too
# large), 415 (not JSON), 422, and 408/429 (not processed: the server did not get the whole request, or
# refused it for the rate). Anything else that is no 2xx with ids is UNKNOWN: a 3xx (a proxy may have
# passed the POST on before redirecting), a 5xx (even 503), other 4xx, a lost or malformed answer.
SEND_REFUSED_STATUSES = frozenset({400, 401, 403, 404, 408, 413, 415, 422, 429})
SEND_NOT_PROCESSED_STATUSES = frozenset({408, 429})  # refused unprocessed: the hook retries the send

# What the operator's next try does after each outcome (the README's table says the same).
NEXT_TRY = {
    NOT_SENT: "made no fax: the record stays as it was, so the next try sends what no try may have sent "
    "(and first looks for what an earlier try may have)",
    SENT: "the ids are recorded before anything else: every later try adopts them, never sends again",
    UNKNOWN: "recorded as possibly sent: the next try lists the outbox for the mark and adopts what it "
    "finds; what it does not find follows on_ambiguous (fail, or resend)",
}


def send_outcome(request: str, exc: BaseException | None) -> str:
    """The outcome of one request of a send (``token``, ``list``, ``upload``, ``send``) that answered
    ``exc`` (``None``: it succeeded). Only *Send a fax* creates a fax: the token, the list and the upload
    create nothing that costs money, whatever they answer."""
    if request not in ("token", "list", "upload", "send"):
        raise ValueError(f"unknown request {request!r}")
    if request != "send":
        return NOT_SENT
    if exc is None:
        return SENT
    if isinstance(exc, FaxPlusSendUncertainError):
        return UNKNOWN
    if isinstance(exc, FaxPlusNotSentError):  # DNS, connection refused, connect timeout, token endpoint
        return NOT_SENT
    if oauth.is_token_error(exc):  # no access token, so the send was never made
        return NOT_SENT
    if isinstance(exc, FaxPlusAPIError) and exc.status in SEND_REFUSED_STATUSES:
        return NOT_SENT
    if isinstance(exc, FaxPlusInputError):  # checked before any request
        return NOT_SENT
    return UNKNOWN


def uncertain(
    call: ApiCall, exc: FaxPlusRequestError, known_ids: Mapping[str, str] | None = None
) -> FaxPlusSendUncertainError:
    return FaxPlusSendUncertainError(
        f"{exc} - the send may have reached Fax.Plus and created the fax: it is not retried blindly",
        known_ids=known_ids,
        operation=call.operation.name,
        method=call.method,
        path=call.path,
        status=exc.status,
        error=exc.error,
        description=exc.description,
    )
