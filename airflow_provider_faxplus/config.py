"""The ``faxplus`` connection, read and validated once into a :class:`FaxPlusConfig`.

Connection fields:

- password: the API token (Personal Access Token or OAuth2 access token), sent as ``Authorization: Bearer``;
  optional with OAuth2 (``client_id`` + ``client_secret`` + ``refresh_token``: access tokens are fetched);
- host: the whole base URL (scheme, host, port, path prefix); empty means ``https://restapi.fax.plus/v3``;
- extra: ``client_id`` (sent as ``x-fax-clientid`` only when set), ``client_secret``, ``refresh_token``,
  ``token_url`` (OAuth2, see oauth.py), ``timeout``, ``verify`` (yes/no),
  ``ca_bundle``, ``max_attempts``, ``max_retry_seconds``, ``initial_backoff``. Any other key is an error.

The rules that depend on the environment (which CA bundle, which proxy) are here too, so that the sync
hook and the async trigger apply exactly the same ones.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies

from requests.utils import should_bypass_proxies

from airflow_provider_faxplus.constants import CONN_TYPE
from airflow_provider_faxplus.exceptions import FaxPlusConfigError

DEFAULT_BASE_URL = "https://restapi.fax.plus/v3"
DEFAULT_TOKEN_URL = "https://accounts.fax.plus/token"  # noqa: S105 - a URL, not a secret
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_RETRY_SECONDS = 120.0
DEFAULT_INITIAL_BACKOFF = 1.0

EXTRA_FIELDS = (
    "client_id",
    "client_secret",
    "refresh_token",
    "token_url",
    "timeout",
    "verify",
    "ca_bundle",
    "max_attempts",
    "max_retry_seconds",
    "initial_backoff",
)
# Upper bounds keep every number usable by the stdlib, tenacity, asyncio and aiohttp.
MAX_TIMEOUT = 3600.0
MAX_ATTEMPTS = 100
MAX_RETRY_SECONDS = 86400.0
MAX_INITIAL_BACKOFF = 3600.0
# Environment variables naming a CA bundle, in the order requests reads them.
CA_BUNDLE_ENV_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# How a yes/no extra may arrive: JSON booleans, or the spellings of forms (2.11's checkbox sends "y").
_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})


@dataclass(frozen=True)
class FaxPlusConfig:
    """Everything a request needs, validated. Secrets (``token``, ``client_secret``, ``refresh_token``)
    are kept out of ``repr``. With a refresh token, ``token`` may be empty: access tokens are fetched."""

    base_url: str = DEFAULT_BASE_URL
    token: str = field(default="", repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    token_url: str = DEFAULT_TOKEN_URL
    timeout: float = DEFAULT_TIMEOUT
    verify: bool = True
    # A CA bundle file or directory; None: the environment's (REQUESTS_CA_BUNDLE...) or the system's.
    ca_bundle: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF

    def __post_init__(self) -> None:
        if self.refresh_token is not None:
            missing = [n for n in ("client_id", "client_secret") if not getattr(self, n)]
            if missing:
                raise FaxPlusConfigError(
                    f"extra 'refresh_token' is set but extra {' and '.join(map(repr, missing))} "
                    "is not: refreshing an OAuth2 access token needs client_id, client_secret and "
                    "refresh_token"
                )
            _check_secret("refresh_token", self.refresh_token)
            if self.token:
                _check_token(self.token)
        else:
            if self.client_secret is not None:
                raise FaxPlusConfigError(
                    "extra 'client_secret' is set but extra 'refresh_token' is not: the client secret is "
                    "used only to refresh OAuth2 access tokens; add the refresh token (faxplus-oauth "
                    "prints it) or remove the client secret"
                )
            _check_token(self.token)
        if self.client_secret is not None:
            _check_secret("client_secret", self.client_secret)
        if self.client_id is not None:
            _check_header_value("client_id", self.client_id)
        object.__setattr__(self, "base_url", normalize_base_url(self.base_url))
        object.__setattr__(self, "token_url", normalize_base_url(self.token_url, what="token URL"))
        if self.ca_bundle is not None and not self.verify:
            raise FaxPlusConfigError(
                "extra 'verify' is false but extra 'ca_bundle' is set: a CA bundle is used only to "
                "verify certificates; remove one of them"
            )

    def with_overrides(self, **overrides: Any) -> FaxPlusConfig:
        """A copy with some settings replaced (``None`` values are ignored), validated again."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name, value in overrides.items():
            if value is not None:
                values[name] = _EXTRA_PARSERS[name](name, value) if name in _EXTRA_PARSERS else value
        return FaxPlusConfig(**values)

    @property
    def uses_oauth_refresh(self) -> bool:
        """Whether access tokens are fetched with the refresh token (else ``token`` is used as is)."""
        return self.refresh_token is not None


@dataclass(frozen=True)
class TlsSettings:
    """How to verify the server: ``verify`` false, or a CA bundle (``None``: the system's) and the name
    of the setting that chose it, for messages."""

    verify: bool
    ca_bundle: str | None
    source: str

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context that verifies with the CA bundle; a bad bundle is a configuration error."""
        if not self.verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        try:
            if self.ca_bundle is None:
                return ssl.create_default_context()
            if os.path.isdir(self.ca_bundle):
                return ssl.create_default_context(capath=self.ca_bundle)
            return ssl.create_default_context(cafile=self.ca_bundle)
        except (ssl.SSLError, OSError) as exc:
            raise FaxPlusConfigError(
                f"the CA bundle {self.ca_bundle!r} from {self.source} cannot be used to verify TLS "
                f"certificates: {type(exc).__name__}: {exc}"
            ) from None

    def requests_verify(self) -> bool | str:
        """The ``verify`` argument of requests: false, the bundle path, or true (the system's)."""
        return self.ca_bundle if self.verify and self.ca_bundle else self.verify


def tls_settings(config: FaxPlusConfig, environ: Mapping[str, str] | None = None) -> TlsSettings:
    """One rule for the hook and the trigger: ``verify`` false wins; then the connection's
    ``ca_bundle``; then ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` (as requests reads them); then the
    system's CA store."""
    if not config.verify:
        return TlsSettings(False, None, "extra 'verify'")
    if config.ca_bundle:
        return TlsSettings(True, config.ca_bundle, "the connection's extra 'ca_bundle'")
    env = os.environ if environ is None else environ
    for name in CA_BUNDLE_ENV_VARS:
        if env.get(name):
            return TlsSettings(True, env[name], f"the environment variable {name}")
    return TlsSettings(True, None, "the system's CA store")


def proxy_for(url: str) -> str | None:
    """The proxy to use for ``url``, read from the environment (``https_proxy``, ``all_proxy``,
    ``no_proxy``...), for both the hook and the trigger.

    Only an https target ever goes through a proxy, and then as a CONNECT tunnel: the token stays inside
    TLS. A plain-http base URL is loopback by construction and never goes through a proxy, whatever the
    environment says, so the token is never sent in clear to a proxy.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or is_loopback(parts.hostname):
        return None
    if should_bypass_proxies(url, no_proxy=None):
        return None
    proxies = getproxies()
    proxy = proxies.get("https") or proxies.get("all")
    if not proxy:
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    scheme = urlsplit(proxy).scheme
    if scheme not in ("http", "https"):
        raise FaxPlusConfigError(
            f"the environment's proxy for https ({safe_url(proxy)}) has scheme {scheme!r}; "
            "only http:// and https:// proxies are supported"
        )
    return proxy


def requests_proxies(url: str) -> dict[str, str | None]:
    """The ``proxies`` argument of requests for ``url`` by :func:`proxy_for`'s rule, for a session with
    ``trust_env`` off (the hook's and the ``faxplus-oauth`` CLI's): a ``None`` entry removes a session's
    proxy for the scheme, so no environment proxy can apply."""
    return {"https": proxy_for(url), "http": None, "all": None}


def is_loopback(hostname: str) -> bool:
    """Whether ``hostname`` names this machine by what it is, never by what DNS says: a literal address
    in 127.0.0.0/8 or ::1, or exactly ``localhost`` (``localhost.`` is a DNS name: a resolver may answer
    it with any address)."""
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def normalize_base_url(value: str, what: str = "base URL") -> str:
    """Validate a base URL (or the token URL: same rules); refuse plain HTTP to a host other than
    loopback (the token would be exposed)."""
    if not isinstance(value, str) or not value.strip():
        raise FaxPlusConfigError(f"the {what} is empty")
    url = value.strip().rstrip("/")
    if has_control_chars(url):
        # urlsplit drops tabs and newlines silently: the host checked would not be the host written.
        raise FaxPlusConfigError(
            f"the {what} contains a tab, a line break or another control character (not shown: it may "
            "hold a secret); write it on one line without them"
        )
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        raise FaxPlusConfigError(f"the {what} is not a valid URL (not shown: it may hold a secret)") from None
    if parts.scheme not in ("http", "https") or not hostname:
        # Only the scheme is named, and only a short word: the rest may be a secret in the wrong field.
        if parts.scheme in ("http", "https"):
            shown = f" ({parts.scheme}:// without a host)"
        elif parts.netloc and re.fullmatch(r"[a-z]{1,6}", parts.scheme):
            shown = f" (scheme {parts.scheme!r}, the rest not shown)"
        else:
            shown = " (not shown: no scheme://host)"
        example = DEFAULT_TOKEN_URL if what == "token URL" else DEFAULT_BASE_URL
        raise FaxPlusConfigError(
            f"the {what}{shown} must start with https:// (or http:// for a loopback sandbox) and name a "
            f"host, for example {example}"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise FaxPlusConfigError(
            f"the {what} for host {hostname!r} has a port that is not a number from 0 to 65535 "
            "(not shown: it may hold a secret)"
        ) from None
    if parts.username is not None or parts.password is not None:
        raise FaxPlusConfigError(
            f"the {what} {safe_url(url)!r} must not contain credentials (user:password@); put the API "
            "token in the connection's API token field (password)"
        )
    if parts.query or parts.fragment:
        raise FaxPlusConfigError(
            f"the {what} {safe_url(url)!r} must not have a query or fragment (not shown here: it may "
            "hold a secret); put the API token in the connection's API token field (password)"
        )
    if parts.scheme == "http" and not is_loopback(hostname):
        raise FaxPlusConfigError(
            f"refusing to send {'OAuth2 secrets' if what == 'token URL' else 'the API token'} over plain "
            f"http:// to {hostname!r} (the {what}); use https:// "
            "(plain http is allowed only for a loopback host such as the local sandbox)"
        )
    return url


def safe_url(url: str) -> str:
    """``scheme://host[:port]/path`` of a URL, for messages: no userinfo, query or fragment (any of
    them can hold a secret)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port can be a pasted secret: shown as such, never echoed
    except ValueError:
        return "(an unparseable URL)"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# What an extra's name looks like: words, no digits (a pasted token or ``key=value`` has some).
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z_-]{0,31}")


def _unknown_fields(names: list[str]) -> str:
    """Names the unknown extras that look like field names; counts the others, never showing them."""
    shown = [name for name in names if _FIELD_NAME.fullmatch(name)]
    hidden = len(names) - len(shown)
    parts = [", ".join(map(repr, shown))] if shown else []
    if hidden:
        more = " more" if shown else ""
        parts.append(f"{hidden}{more} not shown (a name that is no plain word may be a secret)")
    return f"unknown extra field(s) {' and '.join(parts)}"


def has_control_chars(value: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)


def _check_token(token: object) -> None:
    if not isinstance(token, str) or not token.strip():
        raise FaxPlusConfigError(
            "the API token is empty: put a Fax.Plus Personal Access Token or an OAuth2 access token in "
            "the connection's API token field (password)"
        )
    # Never echo the token itself.
    if token != token.strip() or has_control_chars(token) or " " in token:
        raise FaxPlusConfigError("the API token contains whitespace or control characters")
    if not token.isascii():
        raise FaxPlusConfigError(
            "the API token contains non-ASCII characters; Fax.Plus tokens are ASCII: copy the token again"
        )


def _check_secret(name: str, value: object) -> None:
    """A secret extra: non-empty printable ASCII, never echoed."""
    if not isinstance(value, str) or not value.strip():
        raise FaxPlusConfigError(f"extra {name!r} must be a non-empty string")
    if value != value.strip() or has_control_chars(value) or " " in value or not value.isascii():
        raise FaxPlusConfigError(
            f"extra {name!r} contains whitespace, control or non-ASCII characters: copy it again"
        )


def _check_header_value(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise FaxPlusConfigError(f"extra {name!r} must be a non-empty string")
    if has_control_chars(value):
        raise FaxPlusConfigError(f"extra {name!r} contains control characters")
    if not value.isascii():
        raise FaxPlusConfigError(f"extra {name!r} contains non-ASCII characters (it is sent as a header)")


def _shown(value: object) -> str:
    """A number as given, for messages; text never (a secret pasted into the wrong field)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {len(str(value)) if value.bit_length() < 10_000 else 'thousands of'} digits"
    if isinstance(value, str):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return f"text of {len(value)} characters (not shown: it may be a secret)"
        return f"{number:g}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_number(name: str, value: object, *, minimum: float, allow_equal: bool, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaxPlusConfigError(f"extra {name!r} must be a number, got {type(value).__name__}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise FaxPlusConfigError(f"extra {name!r} must be a number, got {_shown(value)}") from None
    except OverflowError:  # an int too large for a float
        number = math.inf
    bound = f">= {minimum:g}" if allow_equal else f"> {minimum:g}"
    if not math.isfinite(number) or number > maximum:
        raise FaxPlusConfigError(f"extra {name!r} must be {bound} and <= {maximum:g}, got {_shown(value)}")
    if number < minimum or (number == minimum and not allow_equal):
        raise FaxPlusConfigError(f"extra {name!r} must be {bound}, got {_shown(value)}")
    return number


def _parse_timeout(name: str, value: object) -> float:
    return _parse_number(name, value, minimum=0, allow_equal=False, maximum=MAX_TIMEOUT)


def _parse_retry_seconds(name: str, value: object) -> float:
    return _parse_number(name, value, minimum=0, allow_equal=True, maximum=MAX_RETRY_SECONDS)


def _parse_initial_backoff(name: str, value: object) -> float:
    return _parse_number(name, value, minimum=0, allow_equal=True, maximum=MAX_INITIAL_BACKOFF)


def _parse_attempts(name: str, value: object) -> int:
    number = _parse_number(name, value, minimum=1, allow_equal=True, maximum=MAX_ATTEMPTS)
    if not number.is_integer():
        raise FaxPlusConfigError(f"extra {name!r} must be a whole number, got {_shown(value)}")
    return int(number)


def _parse_bool(name: str, value: object) -> bool | None:
    """A yes/no value as JSON or a form sends it; ``None`` if it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _parse_verify(name: str, value: object) -> bool | str:
    """Yes/no; a path (the older way to name a CA bundle) is still read as the CA bundle."""
    flag = _parse_bool(name, value)
    if flag is not None:
        return flag
    if isinstance(value, str):
        return _parse_ca_bundle(name, value)
    raise FaxPlusConfigError(f"extra {name!r} must be true or false, got {type(value).__name__}")


def _parse_ca_bundle(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FaxPlusConfigError(
            f"extra {name!r} must be the path of a CA bundle file or directory, got {type(value).__name__}"
        )
    path = value.strip()
    if not os.path.exists(path):
        # An absolute path is shown; anything else may be a secret pasted into the wrong field.
        shown = repr(path) if path.startswith("/") else "(not shown: not an absolute path, may be a secret)"
        raise FaxPlusConfigError(
            f"extra {name!r} must be true, false or the path of a CA bundle file or directory; "
            f"that path does not exist: {shown}"
            if name == "verify"
            else f"extra {name!r}: the CA bundle does not exist (a file or a directory): {shown}"
        )
    return path


def _parse_client_id(name: str, value: object) -> str:
    _check_header_value(name, value)
    assert isinstance(value, str)
    return value.strip()


def _parse_secret(name: str, value: object) -> str:
    _check_secret(name, value)
    assert isinstance(value, str)
    return value


def _parse_token_url(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FaxPlusConfigError(f"extra {name!r} must be a URL string, got {type(value).__name__}")
    return normalize_base_url(value, what="token URL")


_EXTRA_PARSERS = {
    "client_id": _parse_client_id,
    "client_secret": _parse_secret,
    "refresh_token": _parse_secret,
    "token_url": _parse_token_url,
    "timeout": _parse_timeout,
    "verify": _parse_verify,
    "ca_bundle": _parse_ca_bundle,
    "max_attempts": _parse_attempts,
    "max_retry_seconds": _parse_retry_seconds,
    "initial_backoff": _parse_initial_backoff,
}


def _normalize_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Accept both ``key`` and the UI form's ``extra__faxplus__key`` (Airflow 2.11's form sends both,
    with the same value); drop empty form values. The same setting with two different values is an
    error: neither can be preferred silently."""
    prefix = f"extra__{CONN_TYPE}__"
    normalized: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for key, value in extra.items():
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # an empty form field means "not set"
        if name in normalized:
            if not _same_setting(name, normalized[name], value):
                raise FaxPlusConfigError(
                    f"extra {keys[name]!r} and extra {key!r} name the same setting with different values; "
                    "keep one of them"
                )
            continue
        normalized[name] = value
        keys[name] = key
    return normalized


def _same_setting(name: str, first: object, second: object) -> bool:
    parser = _EXTRA_PARSERS.get(name)
    if parser is None:
        return first == second
    try:
        return bool(parser(name, first) == parser(name, second))
    except FaxPlusConfigError:
        return first == second


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
            raise FaxPlusConfigError(f"{_unknown_fields(unknown)}; allowed: {', '.join(EXTRA_FIELDS)}")
        parsed: dict[str, Any] = {name: _EXTRA_PARSERS[name](name, value) for name, value in values.items()}
        if isinstance(parsed.get("verify"), str):
            # An older connection: verify holds the CA bundle's path.
            path = parsed.pop("verify")
            if parsed.get("ca_bundle", path) != path:
                raise FaxPlusConfigError(
                    f"extra 'verify' is the CA bundle path {path!r} and extra 'ca_bundle' is "
                    f"{parsed['ca_bundle']!r}; keep one of them (verify true plus ca_bundle)"
                )
            parsed["verify"], parsed["ca_bundle"] = True, path
        return FaxPlusConfig(
            base_url=host.strip() if host and host.strip() else DEFAULT_BASE_URL,
            token=password or "",
            **parsed,
        )
    except FaxPlusConfigError as exc:
        raise FaxPlusConfigError(f"Fax.Plus connection {conn_id!r}: {exc}") from None


def _check_raw_extra(conn_id: str, raw: object, extra: object) -> None:
    """Airflow reads an extra that is not JSON as ``{}`` (and logs it): say so instead; an extra that is
    JSON but not an object is an error too. The content is never shown (it holds secrets)."""
    if isinstance(raw, str) and raw.strip():
        try:
            decoded = json.loads(raw)
        except ValueError as exc:
            where = f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise FaxPlusConfigError(
                f"Fax.Plus connection {conn_id!r}: the extra is not valid JSON ({where}; not shown: it "
                'holds secrets); write it as a JSON object, for example {"timeout": 30}'
            ) from None
        extra = decoded
    if not isinstance(extra, Mapping):
        raise FaxPlusConfigError(
            f"Fax.Plus connection {conn_id!r}: the extra must be a JSON object, got {_json_kind(extra)}"
        )


def _json_kind(value: object) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def config_from_airflow_connection(conn_id: str, conn: Any, extra: Mapping[str, Any]) -> FaxPlusConfig:
    """Build a config from an Airflow ``Connection`` (its ``extra`` already decoded, as the sync hook and
    the async trigger each read it their own way)."""
    if conn.conn_type and conn.conn_type != CONN_TYPE:
        raise FaxPlusConfigError(
            f"Fax.Plus connection {conn_id!r} has type {conn.conn_type!r}; expected {CONN_TYPE!r}"
        )
    _check_raw_extra(conn_id, getattr(conn, "extra", None), extra)
    return config_from_connection(
        conn_id=conn_id,
        host=conn.host,
        password=conn.password,
        login=conn.login,
        schema=conn.schema,
        port=conn.port,
        extra=extra,
    )
