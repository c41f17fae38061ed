"""The fault matrix: what each component does when Fax.Plus misbehaves.

One row per fault. tests/test_fault_matrix.py drives every row through the hook (GET and PUT), the
sensor (poke and the deferrable first look), the trigger and the operator against the sandbox;
``render()`` turns the same rows into the table of docs/reliability.md (a test keeps the two equal).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_faxplus.exceptions import (
    FaxPlusAPIError,
    FaxPlusAuthError,
    FaxPlusConflictError,
    FaxPlusNotFoundError,
    FaxPlusRateLimitError,
    FaxPlusRequestError,
    FaxPlusResponseError,
    FaxPlusServerError,
    FaxPlusTransportError,
)

# The connection every matrix test uses: two attempts per call, short backoff and timeout.
MAX_ATTEMPTS = 2
TIMEOUT = 0.6
EXTRA = {"max_attempts": MAX_ATTEMPTS, "initial_backoff": 0.01, "timeout": TIMEOUT}
# The fax the matrix talks to, and the rest of what a 200 needs to be an Outbox record.
FAX_ID = "f1"
ERROR_BODY = '{{"error": "{code}", "description": "{text}"}}'


def _http_date_in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@dataclass(frozen=True)
class Fault:
    key: str
    title: str
    # Keyword arguments of SandboxClient.add_fault (a callable: computed when injected); None means
    # no sandbox at all: the connection points at a port where nothing listens.
    inject: dict[str, Any] | Callable[[], dict[str, Any]] | None
    transient: bool = False
    # What the hook raises (for a transient fault: once the retry budget is spent); None: it succeeds.
    get_error: type[FaxPlusRequestError] | None = None
    put_error: type[FaxPlusRequestError] | None = None
    put_applies: bool = True
    # Words the error message must contain besides the operation and the fax id.
    says: tuple[str, ...] = ()
    # One of: "waits", "fails" (AirflowFailException: no task retry), "raises" (the task's retries
    # apply), "left", "grace" (a not-found fax never seen waits out the grace period), "unknown" (a status
    # the spec does not know: waits).
    sensor: str = "waits"
    # One of: "waits" (backs off, then the fax is followed to the end), "left", "unknown" (a status the
    # spec does not know: waits), or "error:<kind>".
    trigger: str = "waits"
    # One of: "ok", "fails", "raises".
    operator: str = "ok"
    min_gap: float = 0.0  # seconds the trigger must wait after the first of these faults (Retry-After)
    notes: str = ""

    def fault_spec(self) -> dict[str, Any]:
        assert self.inject is not None
        return dict(self.inject() if callable(self.inject) else self.inject)


def _err(code: str, text: str) -> str:
    return ERROR_BODY.format(code=code, text=text)


TRANSIENT_SERVER = [
    Fault(
        f"{status}",
        f"HTTP {status}",
        {"status": status},
        transient=True,
        get_error=FaxPlusServerError,
        put_error=FaxPlusServerError,
        says=(f"HTTP {status}",),
        operator="raises",
    )
    for status in (500, 502, 503, 504)
]

FAULTS: list[Fault] = [
    Fault(
        "429",
        "429 without `Retry-After`",
        {"status": 429},
        transient=True,
        get_error=FaxPlusRateLimitError,
        put_error=FaxPlusRateLimitError,
        says=("HTTP 429",),
        operator="raises",
    ),
    Fault(
        "429-retry-after-seconds",
        "429 with `Retry-After: 1`",
        {"status": 429, "retry_after": "1"},
        transient=True,
        get_error=FaxPlusRateLimitError,
        put_error=FaxPlusRateLimitError,
        says=("HTTP 429",),
        operator="raises",
        min_gap=0.95,
        notes="every wait is the server's second, not the backoff",
    ),
    Fault(
        "429-retry-after-date",
        "429 with `Retry-After` as an HTTP-date 2 s ahead",
        lambda: {"status": 429, "retry_after": _http_date_in(2)},
        transient=True,
        get_error=FaxPlusRateLimitError,
        put_error=FaxPlusRateLimitError,
        says=("HTTP 429",),
        operator="raises",
        notes="a date has whole seconds: no retry before it; later ones, past the date, are short",
    ),
    *TRANSIENT_SERVER,
    Fault(
        "408",
        "HTTP 408 (request timeout)",
        {"status": 408},
        transient=True,
        get_error=FaxPlusAPIError,
        put_error=FaxPlusAPIError,
        says=("HTTP 408",),
        operator="raises",
        notes="transient by definition: retried like 429 and 5xx",
    ),
    Fault(
        "dropped",
        "connection dropped mid-response",
        {"drop": True},
        transient=True,
        get_error=FaxPlusTransportError,
        put_error=FaxPlusTransportError,
        operator="raises",
        notes="PUT sets a value, so repeating it is safe",
    ),
    Fault(
        "read-timeout",
        f"read timeout (an answer 0.9 s late, timeout {TIMEOUT:g} s)",
        {"delay": 0.9, "status": 503},
        transient=True,
        get_error=FaxPlusTransportError,
        put_error=FaxPlusTransportError,
        says=(f"no answer within {TIMEOUT:g} s",),
        operator="raises",
    ),
    Fault(
        "refused",
        "connection refused",
        None,
        transient=True,
        get_error=FaxPlusTransportError,
        put_error=FaxPlusTransportError,
        says=("ConnectionError",),
        operator="raises",
        notes="nothing listens, so there is no short burst: each call spends its budget",
    ),
    Fault(
        "slow-success",
        "slow but successful answer (0.2 s)",
        {"delay": 0.2},
        notes="within the timeout: one request, no retry",
    ),
    Fault(
        "html-200",
        "200 with an HTML page",
        {"status": 200, "body": "<html><body>Bad gateway</body></html>", "content_type": "text/html"},
        get_error=FaxPlusResponseError,
        says=("HTTP 200", "not JSON", "text/html"),
        sensor="raises",
        trigger="error:api",
        notes="PUT: any 2xx is success (its body is unused); the hook logs that the spec says 204",
    ),
    Fault(
        "truncated-json",
        "200 with truncated JSON",
        {"status": 200, "body": '{"id": "f1", "uid": "u1", "sta'},
        get_error=FaxPlusResponseError,
        says=("HTTP 200", "not JSON"),
        sensor="raises",
        trigger="error:api",
    ),
    Fault(
        "missing-status",
        "200 with JSON missing `status`",
        {"status": 200, "body": '{"id": "f1", "uid": "u1"}'},
        get_error=FaxPlusResponseError,
        says=("HTTP 200", "status"),
        sensor="raises",
        trigger="error:api",
    ),
    Fault(
        "unknown-status",
        "200 with an unknown `status` (`archived`)",
        {"status": 200, "body": '{"id": "f1", "uid": "u1", "status": "archived"}'},
        put_applies=False,
        sensor="unknown",
        trigger="unknown",
        notes="a record *Get outgoing fax* answers is still in the outbox, whatever its status: it has left "
        "when its id stops resolving (or it takes a known status outside `waiting_statuses`)",
    ),
    Fault(
        "204-with-body",
        "204 with a body",
        {"status": 204, "body": '{"unexpected": true}'},
        get_error=FaxPlusResponseError,
        says=("HTTP 204", "expected HTTP 200"),
        sensor="raises",
        trigger="error:api",
        notes="the stray bytes never fail a call: read with the answer, or read as a broken next answer and "
        "retried (hook and trigger alike)",
    ),
    Fault(
        "400-error",
        "400 with an `Error` body",
        {"status": 400, "body": _err("invalid_user_id", "Invalid user id given")},
        get_error=FaxPlusAPIError,
        put_error=FaxPlusAPIError,
        says=("HTTP 400 invalid_user_id - Invalid user id given",),
        sensor="fails",
        trigger="error:rejected",
        operator="fails",
    ),
    Fault(
        "400-empty",
        "400 without a body",
        {"status": 400, "body": ""},
        get_error=FaxPlusAPIError,
        put_error=FaxPlusAPIError,
        says=("HTTP 400",),
        sensor="fails",
        trigger="error:rejected",
        operator="fails",
    ),
    Fault(
        "401",
        "401",
        {"status": 401, "body": _err("invalid_token", "Missing or invalid access token")},
        get_error=FaxPlusAuthError,
        put_error=FaxPlusAuthError,
        says=("HTTP 401 invalid_token", "scopes"),
        sensor="fails",
        trigger="error:auth",
        operator="fails",
        notes="the message names the scopes the operation needs",
    ),
    Fault(
        "403",
        "403",
        {"status": 403, "body": _err("insufficient_scope", "The token lacks the scope")},
        get_error=FaxPlusAuthError,
        put_error=FaxPlusAuthError,
        says=("HTTP 403 insufficient_scope", "scopes"),
        sensor="fails",
        trigger="error:auth",
        operator="fails",
    ),
    Fault(
        "404",
        "404",
        {"status": 404, "body": _err("fax_not_found", "Outbox fax not found")},
        get_error=FaxPlusNotFoundError,
        put_error=FaxPlusNotFoundError,
        says=("HTTP 404 fax_not_found",),
        sensor="grace",
        trigger="left",
        operator="fails",
        notes="a fax seen before has left; one never seen waits out `not_found_grace_period`, then fails",
    ),
    Fault(
        "409",
        "409",
        {"status": 409, "body": _err("fax_not_modifiable", "A fax that is sending cannot be modified")},
        get_error=FaxPlusConflictError,
        put_error=FaxPlusConflictError,
        says=("HTTP 409 fax_not_modifiable",),
        sensor="fails",
        trigger="error:rejected",
        operator="fails",
    ),
    Fault(
        "redirect",
        "302 to another host",
        {"status": 302, "body": "", "headers": {"Location": "https://elsewhere.invalid/v3/steal"}},
        get_error=FaxPlusAPIError,
        put_error=FaxPlusAPIError,
        says=("HTTP 302", "Redirects are not followed", "elsewhere.invalid"),
        sensor="fails",
        trigger="error:rejected",
        operator="fails",
        notes="not followed: the token never leaves the configured host",
    ),
]


# The table of docs/reliability.md --------------------------------------------------------------


@dataclass(frozen=True)
class _Texts:
    hook: str
    sensor: str
    trigger: str
    operator: str


def _hook_text(fault: Fault, error: type[FaxPlusRequestError] | None, method: str) -> str:
    if fault.transient:
        burst = "" if fault.inject is None else f"{MAX_ATTEMPTS - 1} in a row: retried, succeeds; "
        return f"{method}: {burst}{MAX_ATTEMPTS} in a row: `{error.__name__}` after {MAX_ATTEMPTS} attempts"
    if error is None:
        return f"{method}: succeeds, 1 request"
    return f"{method}: `{error.__name__}`, 1 request"


SENSOR_TEXT = {
    "waits": "waits: the fax is still in the outbox",
    "fails": "fails, no task retry (`AirflowFailException`)",
    "raises": "raises; the task's retries apply",
    "left": "done: the fax has left",
    "grace": "waits within the grace period (never seen), done if seen before",
    "unknown": "waits: still in the outbox; a WARNING once per fax and status",
}
TRIGGER_TEXT = {
    "waits": "follows the fax to the end",
    "left": "success event: the fax has left",
    "unknown": "waits (a WARNING once per fax and status), then follows the fax to the end",
}
OPERATOR_TEXT = {
    "ok": "sets the comment",
    "fails": "fails, no task retry (`AirflowFailException`)",
    "raises": "raises after the budget; the task's retries apply",
}


def texts(fault: Fault) -> _Texts:
    hook = [_hook_text(fault, fault.get_error, "GET")]
    if fault.put_applies:
        hook.append(_hook_text(fault, fault.put_error, "PUT"))
    sensor = SENSOR_TEXT[fault.sensor]
    trigger = TRIGGER_TEXT.get(fault.trigger) or (
        f"one request, error event `{fault.trigger.partition(':')[2]}`"
    )
    operator = OPERATOR_TEXT[fault.operator] if fault.put_applies else "n/a (PUT answers no status)"
    if fault.transient:
        sensor = "waits: a look that fails after the budget is a wait (the deferrable first look defers)"
        if fault.inject is None:
            trigger = (
                "keeps waiting, each poll >= poke_interval apart and backing off, until the sensor's timeout"
            )
        else:
            trigger = (
                f"{MAX_ATTEMPTS} in a row: polls again after max(poke_interval, backoff or Retry-After), "
                "then follows the fax to the end"
            )
            operator = f"{MAX_ATTEMPTS - 1} in a row: sets the comment; {MAX_ATTEMPTS}: {operator}"
    return _Texts("<br>".join(hook), sensor, trigger, operator)


def render() -> str:
    lines = [
        "| Fault | Hook | Sensor (poke, deferrable first look) | Trigger | Operator | Notes | Test id |",
        "|---|---|---|---|---|---|---|",
    ]
    for fault in FAULTS:
        text = texts(fault)
        cells = [
            fault.title,
            text.hook,
            text.sensor,
            text.trigger,
            text.operator,
            fault.notes,
            f"`{fault.key}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


START, END = "<!-- fault-matrix:start -->\n", "<!-- fault-matrix:end -->"


# The send path: one row per fault of one request of a send --------------------------------------------

SEND_PATHS = {"send": "/outbox", "upload": "/files", "list": "/outbox", "token": "/token"}
SEND_METHODS = {"send": "POST", "upload": "POST", "list": "GET", "token": "POST"}


@dataclass(frozen=True)
class SendFault:
    key: str
    title: str
    request: str  # "send", "upload", "list" or "token" (send.send_outcome's names; a token row sends)
    # SandboxClient.add_fault arguments (method and path are added); None: nothing listens.
    inject: dict[str, Any] | None
    raises: type[FaxPlusRequestError]
    outcome: str  # send.NOT_SENT or send.UNKNOWN
    # Whether the sandbox made the fax all the same (the client cannot tell, which is why it is unknown).
    made: bool = False
    attempts: int = 1


def _send_faults() -> list[SendFault]:
    from airflow_provider_faxplus.exceptions import FaxPlusNotSentError
    from airflow_provider_faxplus.send import NOT_SENT, UNKNOWN, FaxPlusSendUncertainError

    uncertain = FaxPlusSendUncertainError
    return [
        SendFault(
            "send-drop-after",
            "send: made, answer cut off",
            "send",
            {"drop_after": True},
            uncertain,
            UNKNOWN,
            made=True,
        ),
        SendFault(
            "send-late",
            f"send: made after the client gave up (timeout {TIMEOUT:g} s)",
            "send",
            {"delay": TIMEOUT + 0.6, "late": True},
            uncertain,
            UNKNOWN,
            made=True,
        ),
        SendFault(
            "send-303-processed",
            "send: made, then 303 (a proxy passed it on)",
            "send",
            {"processed": True, "status": 303, "headers": {"location": "http://127.0.0.1/x"}},
            uncertain,
            UNKNOWN,
            made=True,
        ),
        SendFault("send-500", "send: HTTP 500", "send", {"status": 500}, uncertain, UNKNOWN),
        SendFault("send-503", "send: HTTP 503", "send", {"status": 503}, uncertain, UNKNOWN),
        SendFault(
            "send-truncated-201",
            "send: 201 with truncated JSON",
            "send",
            {"status": 201, "body": '{"ids": {'},
            uncertain,
            UNKNOWN,
        ),
        SendFault(
            "send-418",
            "send: a 4xx the API does not document (418)",
            "send",
            {"status": 418},
            uncertain,
            UNKNOWN,
        ),
        SendFault(
            "send-400",
            "send: HTTP 400",
            "send",
            {"status": 400, "body": _err("invalid_payload", "bad")},
            FaxPlusAPIError,
            NOT_SENT,
        ),
        SendFault(
            "send-401",
            "send: HTTP 401",
            "send",
            {"status": 401},
            FaxPlusAuthError,
            NOT_SENT,
        ),
        SendFault("send-404", "send: HTTP 404", "send", {"status": 404}, FaxPlusAPIError, NOT_SENT),
        SendFault("send-413", "send: HTTP 413", "send", {"status": 413}, FaxPlusAPIError, NOT_SENT),
        SendFault(
            "send-429",
            "send: HTTP 429, 2 in a row",
            "send",
            {"status": 429, "retry_after": "0", "times": MAX_ATTEMPTS},
            FaxPlusRateLimitError,
            NOT_SENT,
            attempts=MAX_ATTEMPTS,
        ),
        SendFault(
            "send-408",
            "send: HTTP 408, 2 in a row",
            "send",
            {"status": 408, "times": MAX_ATTEMPTS},
            FaxPlusAPIError,
            NOT_SENT,
            attempts=MAX_ATTEMPTS,
        ),
        SendFault(
            "send-refused",
            "send: connection refused",
            "send",
            None,
            FaxPlusNotSentError,
            NOT_SENT,
            attempts=0,
        ),
        SendFault(
            "upload-503",
            "upload: HTTP 503, 2 in a row",
            "upload",
            {"status": 503, "retry_after": "0", "times": MAX_ATTEMPTS},
            FaxPlusServerError,
            NOT_SENT,
            attempts=MAX_ATTEMPTS,
        ),
        SendFault(
            "upload-drop-after",
            "upload: answer cut off, 2 in a row",
            "upload",
            {"drop_after": True, "times": MAX_ATTEMPTS},
            FaxPlusTransportError,
            NOT_SENT,
            attempts=MAX_ATTEMPTS,
        ),
        SendFault(
            "token-500",
            "token (OAuth2 refresh before a send): HTTP 500, 2 in a row",
            "token",
            {"status": 500, "times": MAX_ATTEMPTS},
            FaxPlusServerError,
            NOT_SENT,
            attempts=MAX_ATTEMPTS,
        ),
        SendFault(
            "token-invalid-grant",
            "token (OAuth2 refresh before a send): 400 `invalid_grant`",
            "token",
            {"status": 400, "body": _err("invalid_grant", "revoked")},
            FaxPlusAuthError,
            NOT_SENT,
        ),
        SendFault(
            "list-500",
            "list: HTTP 500, 2 in a row",
            "list",
            {"status": 500, "times": MAX_ATTEMPTS},
            FaxPlusServerError,
            NOT_SENT,
            attempts=MAX_ATTEMPTS,
        ),
        SendFault(
            "list-truncated",
            "list: 200 with truncated JSON",
            "list",
            {"status": 200, "body": '{"records": ['},
            FaxPlusResponseError,
            NOT_SENT,
        ),
    ]


SEND_FAULTS = _send_faults()


def render_send() -> str:
    from airflow_provider_faxplus.send import NEXT_TRY

    lines = [
        "| Fault | Hook raises | Outcome (`send_outcome`) | Fax made by the sandbox "
        "| The operator's next try | Test id |",
        "|---|---|---|---|---|---|",
    ]
    for fault in SEND_FAULTS:
        cells = [
            fault.title,
            f"`{fault.raises.__name__}`",
            fault.outcome,
            "yes" if fault.made else "no",
            NEXT_TRY[fault.outcome],
            f"`{fault.key}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SEND_START, SEND_END = "<!-- send-fault-matrix:start -->\n", "<!-- send-fault-matrix:end -->"


def write_doc(path: Path) -> None:
    """Replace the tables between the markers of docs/reliability.md with ``render()``, ``render_send()``."""
    text = path.read_text()
    for start, end, table in ((START, END, render()), (SEND_START, SEND_END, render_send())):
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = head + start + table + end + tail
    path.write_text(text)


if __name__ == "__main__":
    write_doc(Path(__file__).resolve().parent.parent / "docs" / "reliability.md")
