"""Exceptions raised by the Fax.Plus provider.

Every error names what failed (operation, method, path, fax id) and what Fax.Plus said (HTTP status,
its ``error`` code and ``description``). None of them ever carries the API token.
"""

from __future__ import annotations

from airflow.exceptions import AirflowException


class FaxPlusError(AirflowException):
    """Base class of every error raised by this provider."""


class FaxPlusConfigError(FaxPlusError, ValueError):
    """The connection (or a hook argument) is misconfigured; raised before any request."""


class FaxPlusInputError(FaxPlusError, ValueError):
    """A path parameter or request field is invalid; raised before any request."""


class FaxPlusRequestError(FaxPlusError):
    """A request was sent (or attempted) and did not succeed."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        method: str,
        path: str,
        outbox_fax_id: str | None = None,
        fax_id: str | None = None,
        status: int | None = None,
        error: str | None = None,
        description: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.operation = operation
        self.method = method
        self.path = path
        self.outbox_fax_id = outbox_fax_id
        self.fax_id = fax_id  # the id of a fax record (sent or received), not an outbox id
        self.status = status
        self.error = error
        self.description = description
        # Seconds the server asked us to wait (Retry-After), when it said so.
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Keep keyword-only attributes across pickling (Airflow pickles exceptions between processes).
        return (_rebuild, (type(self), str(self), self.__dict__.copy()))


def _rebuild(cls: type[FaxPlusRequestError], message: str, state: dict[str, object]) -> FaxPlusRequestError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class FaxPlusTransportError(FaxPlusRequestError):
    """No usable HTTP response: connection refused or dropped, timeout, redirect refused."""


class FaxPlusNotSentError(FaxPlusTransportError):
    """The request provably never reached the server: DNS failure, connection refused, connect timeout
    (no request byte was sent). Safe to retry even for a send, which is not idempotent."""


class FaxPlusTLSError(FaxPlusRequestError):
    """The server's TLS certificate could not be verified with the configured CA bundle: no retry can
    fix it (the connection's ``verify`` / ``ca_bundle`` or the environment's CA bundle must change)."""


class FaxPlusResponseError(FaxPlusRequestError):
    """The response could not be understood: not JSON, or missing required fields."""


class FaxPlusAPIError(FaxPlusRequestError):
    """Fax.Plus answered with an HTTP error status."""


class FaxPlusAuthError(FaxPlusAPIError):
    """401 or 403: the token is missing, invalid, expired or lacks the operation's scope."""


class FaxPlusNotFoundError(FaxPlusAPIError):
    """The outbox fax does not resolve (404, or a 400 whose error code says so).

    A fax leaves the outbox when it is sent or fails, after which its outbox id no longer resolves.
    """


class FaxPlusConflictError(FaxPlusAPIError):
    """409: the fax cannot be modified in its current state (for example while it is sending)."""


class FaxPlusRateLimitError(FaxPlusAPIError):
    """429: too many requests."""


class FaxPlusServerError(FaxPlusAPIError):
    """5xx: Fax.Plus failed on its side."""
