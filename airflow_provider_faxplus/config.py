"""The ``faxplus`` connection, read and validated once into a :class:`FaxPlusConfig`.

Connection fields:

- password: the API token (Personal Access Token or OAuth2 access token), sent as ``Authorization: Bearer``;
- host: the whole base URL (scheme, host, port, path prefix); empty means ``https://restapi.fax.plus/v3``;
- extra: ``client_id`` (sent as ``x-fax-clientid`` only when set), ``timeout``, ``verify``,
  ``max_attempts``, ``max_retry_seconds``, ``initial_backoff``. Any other key is an error.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_faxplus.constants import CONN_TYPE
from airflow_provider_faxplus.exceptions import FaxPlusConfigError

DEFAULT_BASE_URL = "https://restapi.fax.plus/v3"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_RETRY_SECONDS = 120.0
DEFAULT_INITIAL_BACKOFF = 1.0

EXTRA_FIELDS = (
    "client_id",
    "timeout",
    "verify",
    "ca_bundle",
    "max_attempts",
    "max_retry_seconds",
    "initial_backoff",
)


@dataclass(frozen=True)
class FaxPlusConfig:
    """Everything a request needs, validated. ``token`` is kept out of ``repr``."""

    base_url: str = DEFAULT_BASE_URL
    token: str = field(default="", repr=False)
    client_id: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF

    def __post_init__(self) -> None:
        _check_token(self.token)
        if self.client_id is not None:
            _check_header_value("client_id", self.client_id)
        object.__setattr__(self, "base_url", normalize_base_url(self.base_url))

    def with_overrides(self, **overrides: Any) -> FaxPlusConfig:
        """A copy with some settings replaced (``None`` values are ignored), validated again."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name, value in overrides.items():
            if value is not None:
                values[name] = _EXTRA_PARSERS[name](name, value) if name in _EXTRA_PARSERS else value
        return FaxPlusConfig(**values)


def is_loopback(hostname: str) -> bool:
    if hostname.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def normalize_base_url(value: str) -> str:
    """Validate a base URL; refuse plain HTTP to a host other than loopback (the token would be exposed)."""
    if not isinstance(value, str) or not value.strip():
        raise FaxPlusConfigError("the base URL is empty")
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise FaxPlusConfigError(f"the base URL {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise FaxPlusConfigError(
            f"the base URL {_safe_url(url)!r} must start with https:// (or http:// for a loopback "
            f"sandbox) and name a host, for example {DEFAULT_BASE_URL}"
        )
    if parts.username is not None or parts.password is not None:
        raise FaxPlusConfigError(
            "the base URL must not contain credentials; put the API token in the connection's password"
        )
    if parts.query or parts.fragment:
        raise FaxPlusConfigError(f"the base URL {url!r} must not have a query or fragment")
    if parts.scheme == "http" and not is_loopback(hostname):
        raise FaxPlusConfigError(
            f"refusing to send the API token over plain http:// to {hostname!r}; use https:// "
            "(plain http is allowed only for a loopback host such as the local sandbox)"
        )
    return url


def _safe_url(url: str) -> str:
    # Drop anything that looks like userinfo before quoting a URL in an error.
    head, sep, tail = url.partition("@")
    return f"***@{tail}" if sep else head


def _has_control_chars(value: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)


def _check_token(token: object) -> None:
    if not isinstance(token, str) or not token.strip():
        raise FaxPlusConfigError(
            "the API token is empty: set the connection's password to a Fax.Plus Personal Access Token "
            "or an OAuth2 access token"
        )
    if token != token.strip() or _has_control_chars(token) or " " in token:
        # Never echo the token itself.
        raise FaxPlusConfigError("the API token contains whitespace or control characters")


def _check_header_value(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise FaxPlusConfigError(f"extra {name!r} must be a non-empty string")
    if _has_control_chars(value):
        raise FaxPlusConfigError(f"extra {name!r} contains control characters")


def _parse_number(name: str, value: object, *, minimum: float, allow_equal: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaxPlusConfigError(f"extra {name!r} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise FaxPlusConfigError(f"extra {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < minimum or (number == minimum and not allow_equal):
        bound = f">= {minimum:g}" if allow_equal else f"> {minimum:g}"
        raise FaxPlusConfigError(f"extra {name!r} must be {bound}, got {value!r}")
    return number


def _parse_timeout(name: str, value: object) -> float:
    return _parse_number(name, value, minimum=0, allow_equal=False)


def _parse_non_negative(name: str, value: object) -> float:
    return _parse_number(name, value, minimum=0, allow_equal=True)


def _parse_attempts(name: str, value: object) -> int:
    number = _parse_number(name, value, minimum=1, allow_equal=True)
    if not number.is_integer():
        raise FaxPlusConfigError(f"extra {name!r} must be a whole number, got {value!r}")
    return int(number)


def _parse_verify(name: str, value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        # Airflow 2.11's form sends a ticked checkbox as "y".
        if lowered in ("true", "1", "yes", "y", "on"):
            return True
        if lowered in ("false", "0", "no", "n", "off"):
            return False
        if os.path.exists(value):
            return value
        raise FaxPlusConfigError(
            f"extra {name!r} must be true, false or the path of a CA bundle; {value!r} does not exist"
        )
    raise FaxPlusConfigError(
        f"extra {name!r} must be a boolean or a CA bundle path, got {type(value).__name__}"
    )


def _parse_ca_bundle(name: str, value: object) -> str:
    if not isinstance(value, str) or not os.path.isfile(value.strip()):
        raise FaxPlusConfigError(
            f"extra {name!r} must be the path of a CA bundle file; {value!r} does not exist"
        )
    return value.strip()


def _parse_client_id(name: str, value: object) -> str:
    _check_header_value(name, value)
    assert isinstance(value, str)
    return value.strip()


_EXTRA_PARSERS = {
    "client_id": _parse_client_id,
    "timeout": _parse_timeout,
    "verify": _parse_verify,
    "ca_bundle": _parse_ca_bundle,
    "max_attempts": _parse_attempts,
    "max_retry_seconds": _parse_non_negative,
    "initial_backoff": _parse_non_negative,
}


def _normalize_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Accept both ``key`` and the UI form's ``extra__faxplus__key``; drop empty form values."""
    prefix = f"extra__{CONN_TYPE}__"
    normalized: dict[str, Any] = {}
    for key, value in extra.items():
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # an empty form field means "not set"
        # Airflow 2.11's form sends every extra twice, with and without the prefix: fine when equal.
        if name in normalized and normalized[name] != value:
            raise FaxPlusConfigError(
                f"extra {name!r} is given twice with different values (with and without the {prefix} prefix)"
            )
        normalized[name] = value
    return normalized


def config_from_connection(
    *,
    conn_id: str,
    host: str | None,
    password: str | None,
    login: str | None,
    schema: str | None,
    port: int | None,
    extra: Mapping[str, Any],
) -> FaxPlusConfig:
    """Build a config from a connection's fields; every problem names the connection and the field."""
    try:
        unused = [name for name, value in (("login", login), ("schema", schema), ("port", port)) if value]
        if unused:
            raise FaxPlusConfigError(
                f"field(s) {', '.join(unused)} are not used by the faxplus connection type; put the port "
                "and path in the host field as a whole base URL, for example http://127.0.0.1:8080/v3"
            )
        values = _normalize_extra(extra)
        unknown = sorted(set(values) - set(EXTRA_FIELDS))
        if unknown:
            raise FaxPlusConfigError(
                f"unknown extra field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(EXTRA_FIELDS)}"
            )
        parsed: dict[str, Any] = {name: _EXTRA_PARSERS[name](name, value) for name, value in values.items()}
        ca_bundle = parsed.pop("ca_bundle", None)
        if ca_bundle is not None:
            if parsed.get("verify", True) is False:
                raise FaxPlusConfigError("extra 'ca_bundle' is set but 'verify' is off; turn verify on")
            parsed["verify"] = ca_bundle  # both clients take a path as "verify against this bundle"
        return FaxPlusConfig(
            base_url=host.strip() if host and host.strip() else DEFAULT_BASE_URL,
            token=password or "",
            **parsed,
        )
    except FaxPlusConfigError as exc:
        raise FaxPlusConfigError(f"Fax.Plus connection {conn_id!r}: {exc}") from None


def config_from_airflow_connection(conn_id: str, conn: Any, extra: Mapping[str, Any]) -> FaxPlusConfig:
    """Build a config from an Airflow ``Connection`` (its ``extra`` already decoded, as the sync hook and
    the async trigger each read it their own way)."""
    if conn.conn_type and conn.conn_type != CONN_TYPE:
        raise FaxPlusConfigError(
            f"Fax.Plus connection {conn_id!r} has type {conn.conn_type!r}; expected {CONN_TYPE!r}"
        )
    return config_from_connection(
        conn_id=conn_id,
        host=conn.host,
        password=conn.password,
        login=conn.login,
        schema=conn.schema,
        port=conn.port,
        extra=extra,
    )
