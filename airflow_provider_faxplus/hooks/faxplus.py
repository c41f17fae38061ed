"""FaxPlusHook: the two outbox operations of the Fax.Plus REST API v3 over one keep-alive session."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import requests
from airflow.providers.common.compat.sdk import BaseHook, mask_secret
from requests.adapters import HTTPAdapter
from tenacity import Retrying

from airflow_provider_faxplus import protocol
from airflow_provider_faxplus.config import FaxPlusConfig, config_from_airflow_connection
from airflow_provider_faxplus.constants import CONN_TYPE, DEFAULT_CONN_ID
from airflow_provider_faxplus.exceptions import FaxPlusAuthError, FaxPlusError, FaxPlusNotFoundError
from airflow_provider_faxplus.models import OutboxFax
from airflow_provider_faxplus.retry import retry_kwargs

log = logging.getLogger(__name__)

# test_connection() reads an outbox id that cannot exist: the least scope the provider needs
# (fax:fax:read) proves the token without touching any fax.
CONNECTION_TEST_FAX_ID = "airflow-connection-test"


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
        in the host, optional ``client_id``, ``timeout``, ``verify`` and retry settings in the extra.
    :param timeout: Seconds per request; overrides the connection's ``timeout``.
    :param max_attempts: Attempts per call, first one included; overrides the connection.
    :param max_retry_seconds: Total time budget for the retries of one call; overrides the connection.
    """

    conn_name_attr = "faxplus_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Fax.Plus"

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
        self.config = self._load_config().with_overrides(
            timeout=timeout, max_attempts=max_attempts, max_retry_seconds=max_retry_seconds
        )

    def _load_config(self) -> FaxPlusConfig:
        conn = self.get_connection(self.faxplus_conn_id)
        config = config_from_airflow_connection(self.faxplus_conn_id, conn, conn.extra_dejson)
        mask_secret(config.token)
        return config

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(faxplus_conn_id={self.faxplus_conn_id!r}, base_url={self.config.base_url!r})"

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook. Retries are ours (tenacity), not urllib3's."""
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=4)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.auth = BearerAuth(self.config.token)
        session.headers.update(protocol.base_headers(self.config))
        # requests re-reads the environment (proxies, CA bundle) on every request when trust_env is on,
        # about a fifth of a call's cost here: read it once per session instead.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(self.config.base_url)
        verify = self.config.verify
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.verify = verify
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
        if record.parse_warnings:
            log.warning(
                "Outbox fax %s: field(s) that did not parse were left empty (the raw value is kept in "
                "record.raw): %s",
                record.id,
                "; ".join(record.parse_warnings),
            )
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

    def test_connection(self) -> tuple[bool, str]:
        """Prove the token with *Get outgoing fax* on an id that cannot exist (needs only read scope)."""
        try:
            self.get_outbox_fax(CONNECTION_TEST_FAX_ID)
        except FaxPlusNotFoundError:
            return True, f"Connection works: {self.config.base_url} accepted the token (read scope)."
        except FaxPlusAuthError as exc:
            return False, str(exc)
        except FaxPlusError as exc:
            return False, str(exc)
        return True, f"Connection works: {self.config.base_url} accepted the token (read scope)."

    # Transport -----------------------------------------------------------------------------------

    def _send(self, call: protocol.ApiCall) -> tuple[int, dict[str, str], bytes]:
        """Send with retries on transient failures; return the final non-retryable answer.

        Retryable statuses are raised inside the loop so that tenacity can retry them.
        """
        for attempt in Retrying(**retry_kwargs(self.config, log)):
            with attempt:
                status, headers, body = self._send_once(call)
                if status in protocol.RETRYABLE_STATUSES:
                    raise protocol.error_from_response(self.config, call, status, headers, body)
                return status, headers, body
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _send_once(self, call: protocol.ApiCall) -> tuple[int, dict[str, str], bytes]:
        started = time.monotonic()
        try:
            response = self.session.request(
                call.method,
                call.url,
                # The session carries the headers common to every call; only the rest go per request.
                headers=_per_call_headers(call.headers, self.session.headers) or None,
                data=call.body,
                timeout=self.config.timeout,
                allow_redirects=False,
            )
            body = response.content
        except requests.Timeout:
            raise protocol.transport_error(call, f"no answer within {self.config.timeout:g} s") from None
        except requests.RequestException as exc:
            raise protocol.transport_error(call, _short(exc)) from None
        log.debug(
            "%s %s -> HTTP %d (%d bytes) in %.0f ms",
            call.method,
            call.path,
            response.status_code,
            len(body),
            (time.monotonic() - started) * 1000,
        )
        return response.status_code, dict(response.headers), body

    # Connection form ----------------------------------------------------------------------------

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form on Airflow 2.11 (3.2+ reads the same ``conn-fields``)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, StringField
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


def _per_call_headers(headers: Mapping[str, str], common: Mapping[str, str | bytes]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if common.get(name) != value}


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."
