"""One redaction for every text made from an answer: exceptions, log lines, trigger events, CLI output.

A :class:`Redactor` knows a set of secrets and the forms a server (or a proxy) may echo them in: as is,
percent-encoded (a form body), JSON-escaped, base64 (alone, at any alignment inside a longer base64, and
``client_id:client_secret`` as HTTP Basic sends it). Any run of :data:`MIN_FRAGMENT` characters or more
of one of those forms is replaced, so an echoed prefix or a cut-off excerpt is caught too.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from airflow_provider_faxplus.config import FaxPlusConfig

REPLACEMENT = "***"
# A fragment of a secret this long or longer is redacted wherever it appears; shorter secrets are
# redacted only whole (a one-letter test secret must not blank every matching letter).
MIN_FRAGMENT = 8
# Texts are cut to this many characters before redaction (callers cut shorter afterwards).
MAX_SCANNED_CHARS = 20_000


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that depend only on ``data``, wherever it sits in a longer byte string."""
    cores: set[str] = set()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + data).decode("ascii")
        start = -(-8 * pad // 6)  # the first character whose bits all come from ``data``
        end = 8 * (pad + len(data)) // 6
        core = encoded[start:end]
        cores.update((core, core.replace("+", "-").replace("/", "_")))
    cores.add(base64.b64encode(data).decode("ascii"))
    cores.add(base64.urlsafe_b64encode(data).decode("ascii"))
    return {core for core in cores if core}


def encoded_forms(secret: str) -> set[str]:
    """``secret`` and every encoding of it this module redacts."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    forms.add(re.sub(r"%[0-9A-F]{2}", lambda match: match.group().lower(), quote(secret, safe="")))
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.add(json.dumps(secret)[1:-1].replace("/", "\\/"))
    try:
        raw = secret.encode("utf-8")
    except UnicodeEncodeError:
        raw = secret.encode("utf-8", errors="surrogatepass")
    if len(raw) >= MIN_FRAGMENT:
        forms |= _base64_cores(raw)
        forms.add(raw.hex())  # upper-case hex too: the scan ignores case
    return {form for form in forms if form}


# What the scan decodes before comparing: a percent-encoded byte and a JSON \u escape (any case).
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|.", re.DOTALL)


def _normalized(text: str) -> tuple[str, list[int], list[int]]:
    """``text`` with every ``%XX`` and ``\\uXXXX`` decoded and lower-cased, and for each character the
    span of ``text`` it came from (so a match in the normalized text redacts what was written)."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for match in _ESCAPE.finditer(text):
        token = match.group()
        char = token if len(token) == 1 else chr(int(token[-4:] if token[0] == "\\" else token[1:], 16))
        for lowered in char.lower():
            chars.append(lowered)
            starts.append(match.start())
            ends.append(match.end())
    return "".join(chars), starts, ends


def basic_credentials(client_id: str, client_secret: str) -> str:
    """What HTTP Basic sends for a client: base64 of ``client_id:client_secret``."""
    return base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")


class Redactor:
    """Replaces every known secret, and its encoded forms and fragments, in a text."""

    def __init__(self, secrets: Iterable[str | None] = (), pairs: Iterable[tuple[str, str]] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= encoded_forms(secret)
        for client_id, client_secret in pairs:
            if client_secret:
                forms.add(basic_credentials(client_id, client_secret))
        self._set(forms)

    def _set(self, forms: set[str]) -> None:
        self._all = frozenset(forms)
        self._whole = sorted((form for form in forms if len(form) < MIN_FRAGMENT), key=len, reverse=True)
        self._forms = sorted((form for form in forms if len(form) >= MIN_FRAGMENT), key=len, reverse=True)
        self._grams = {
            form[i : i + MIN_FRAGMENT] for form in self._forms for i in range(len(form) - MIN_FRAGMENT + 1)
        }
        # The same, decoded and lower-cased as :func:`_normalized` does to a text: an answer that
        # percent-encodes every byte, \u-escapes every character or changes the case is caught too.
        normal = {_normalized(form)[0] for form in self._forms}
        self._normal_grams = {
            form[i : i + MIN_FRAGMENT] for form in normal for i in range(len(form) - MIN_FRAGMENT + 1)
        }

    def adding(self, secrets: Iterable[str | None]) -> Redactor:
        """This redactor, knowing ``secrets`` too (say, an access token that came with an answer)."""
        forms = set(self._all)
        for secret in secrets:
            if secret:
                forms |= encoded_forms(secret)
        redactor = Redactor()
        redactor._set(forms)
        return redactor

    def __repr__(self) -> str:
        return f"Redactor({len(self._forms) + len(self._whole)} forms)"

    def __bool__(self) -> bool:
        return bool(self._forms or self._whole)

    def __call__(self, text: str, limit: int | None = None) -> str:
        """``text`` without any secret, cut to ``limit`` characters (the cut never leaves the first
        characters of a secret at the end)."""
        cut = len(text) > MAX_SCANNED_CHARS
        text = text[:MAX_SCANNED_CHARS]
        for form in self._whole:
            text = text.replace(form, REPLACEMENT)
        if self._grams:
            text = self._without_fragments(text)
        if limit is not None and len(text) > limit:
            text, cut = text[:limit], True
        if cut:
            # What a cut can leave of a secret: its first characters at the very end.
            for length in range(min(MIN_FRAGMENT, len(text)), 0, -1):
                tail = text[-length:]
                if any(form.startswith(tail) for form in self._forms + self._whole):
                    return text[:-length] + REPLACEMENT
        return text

    def _without_fragments(self, text: str) -> str:
        covered = bytearray(len(text))
        grams = self._grams
        for start in range(len(text) - MIN_FRAGMENT + 1):
            if text[start : start + MIN_FRAGMENT] in grams:
                covered[start : start + MIN_FRAGMENT] = b"\1" * MIN_FRAGMENT
        normal, starts, ends = _normalized(text)
        grams = self._normal_grams
        for start in range(len(normal) - MIN_FRAGMENT + 1):
            if normal[start : start + MIN_FRAGMENT] in grams:
                first, last = starts[start], ends[start + MIN_FRAGMENT - 1]
                covered[first:last] = b"\1" * (last - first)
        if not any(covered):
            return text
        out: list[str] = []
        index = 0
        while index < len(text):
            if covered[index]:
                while index < len(text) and covered[index]:
                    index += 1
                out.append(REPLACEMENT)
            else:
                out.append(text[index])
                index += 1
        return "".join(out)


def redact_data(redact: Callable[[str], str], value: Any) -> Any:
    """``value`` (decoded JSON: dicts, lists, strings, numbers) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(key)): redact_data(redact, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(redact, item) for item in value]
    return value


def mask_forms(secrets: Iterable[str | None], pairs: Iterable[tuple[str, str | None]] = ()) -> list[str]:
    """What to register with Airflow's log masker: each secret, percent-encoded and in base64, and the
    Basic credentials of each pair. Few on purpose: the masker keeps every pattern for the process's life
    and matches each log line against all of them (the fragments and JSON forms stay ours)."""
    forms: list[str] = []
    for secret in secrets:
        if secret:
            for form in (secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode("ascii")):
                if form not in forms:
                    forms.append(form)
    for client_id, client_secret in pairs:
        if client_secret:
            forms.append(basic_credentials(client_id, client_secret))
    return forms


def for_config(config: FaxPlusConfig) -> Redactor:
    """The redactor of a connection: its token, client secret and refresh token, and with OAuth2 the
    access and refresh tokens this process has seen for it (current and previous ones)."""
    from airflow_provider_faxplus import oauth  # oauth imports protocol, which imports this module

    issued = oauth.issued_secrets(config) if config.uses_oauth_refresh else ()
    return _cached(
        (config.token, config.client_secret, config.refresh_token, *issued),
        config.client_id or "",
        config.client_secret or "",
    )


@functools.lru_cache(maxsize=64)
def _cached(secrets: tuple[str | None, ...], client_id: str, client_secret: str) -> Redactor:
    return Redactor(secrets, [(client_id, client_secret)])
