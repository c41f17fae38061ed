"""Run the sandbox in-process (tests, demos) and drive it through its control API."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from types import TracebackType
from typing import Any

import requests
import uvicorn

from airflow_provider_faxplus.sandbox.app import API_PREFIX, CONTROL_PREFIX, create_app
from airflow_provider_faxplus.sandbox.oauth import DEFAULT_ACCESS_TOKEN_LIFETIME, TOKEN_PATH, OAuthState
from airflow_provider_faxplus.sandbox.state import DEFAULT_MAX_BODY_BYTES, DEFAULT_UID, SandboxState

DEFAULT_TOKEN = "sandbox-token"  # noqa: S105 - the sandbox's public demo token, not a secret
WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - a mapping, not a bind


def is_loopback_host(host: str) -> bool:
    """config.is_loopback's rule (by the name, never DNS), without importing Airflow: a literal
    127.0.0.0/8 or ::1 address, or exactly ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SandboxClient:
    """The control API (``/_sandbox``) over HTTP."""

    def __init__(self, root_url: str, control_token: str | None = None) -> None:
        self.root_url = root_url.rstrip("/")
        self._session = requests.Session()
        self._session.trust_env = False  # the sandbox is local: no environment proxy
        if control_token:
            self._session.headers["Authorization"] = f"Bearer {control_token}"

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        response = self._session.request(
            method, f"{self.root_url}{CONTROL_PREFIX}{path}", json=json, timeout=10
        )
        if response.status_code >= 400:
            raise RuntimeError(
                f"sandbox control {method} {path}: HTTP {response.status_code} {response.text}"
            )
        return response.json()

    def create_fax(self, **spec: Any) -> dict[str, Any]:
        """Seed an outbox fax. ``lifecycle=[{"status": ..., "seconds": ...}, ...]``, ``visible_after``,
        ``comment``, ``tags``, ``user_id``, ``id``, ``fields`` (overrides of Outbox fields)."""
        result: dict[str, Any] = self._call("POST", "/faxes", spec)
        return result

    def create_faxes(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Seed many outbox faxes in one request (same creation instant)."""
        result: list[dict[str, Any]] = self._call("POST", "/faxes", specs)
        return result

    def faxes(self) -> list[dict[str, Any]]:
        """Every fax the sandbox holds (summaries), including faxes sent through the API."""
        result: list[dict[str, Any]] = self._call("GET", "/faxes")
        return result

    def fax(self, fax_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/faxes/{fax_id}")
        return result

    def add_fault(self, **spec: Any) -> dict[str, Any]:
        """Script a fault: ``times``, ``method``, ``path_contains``, ``path_endswith``, ``status``, ``body``,
        ``content_type``, ``headers``, ``retry_after``, ``delay``, ``drop``, ``drop_after`` (handle the
        request, then cut the answer off: a send creates its fax and the client never learns it),
        ``processed`` (handle it, then answer ``status`` instead), ``late`` (read the body, wait ``delay``,
        then handle it even if the client gave up),
        ``hold_after`` (handle the request, then hold the answer that many seconds)."""
        result: dict[str, Any] = self._call("POST", "/faults", spec)
        return result

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/faults")
        return result

    def requests(self, clear: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("DELETE" if clear else "GET", "/requests")
        return result

    def advance(self, seconds: float) -> None:
        self._call("POST", "/clock", {"advance": seconds})

    def set_pace(self, pace: float) -> None:
        self._call("POST", "/clock", {"pace": pace})

    def settings(self, **values: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/settings", values)
        return result

    def reset(self) -> None:
        self._call("POST", "/reset")

    def oauth_settings(self, **values: Any) -> dict[str, Any]:
        """``access_token_lifetime`` (seconds of the sandbox clock), ``rotate_refresh_tokens``,
        ``clients`` ({client_id: client_secret}, added)."""
        result: dict[str, Any] = self._call("POST", "/oauth", values)
        return result

    def mint_code(self, client_id: str, redirect_uri: str) -> str:
        """An authorization code, as the browser step would return it to ``redirect_uri``."""
        code: str = self._call(
            "POST", "/oauth/codes", {"client_id": client_id, "redirect_uri": redirect_uri}
        )["code"]
        return code

    def mint_refresh_token(self, client_id: str) -> str:
        token: str = self._call("POST", "/oauth/refresh_tokens", {"client_id": client_id})["refresh_token"]
        return token

    def revoke(self, refresh_token: str) -> bool:
        revoked: bool = self._call("POST", "/oauth/revoke", {"refresh_token": refresh_token})["revoked"]
        return revoked

    def receive_fax(self, **spec: Any) -> dict[str, Any]:
        """Inject a received fax record: ``id``, ``user_id``, ``category`` (inbox|spam), ``from``, ``to``,
        ``pages``, ``comment``, ``status`` (success|partially_received|failed*), ``file_size`` (pad the
        PDF to that many bytes)."""
        result: dict[str, Any] = self._call("POST", "/records/received", spec)
        return result

    def set_record_outcome(self, outbox_fax_id: str, status: str, **extra: Any) -> dict[str, Any]:
        """The sent record an outbox fax gets when it leaves: ``status`` (success, a failed_*,
        partially_sent, ...), ``description``, ``id`` (the record's id, whatever the id policy)."""
        result: dict[str, Any] = self._call(
            "POST", "/records/outcomes", {"outbox_fax_id": outbox_fax_id, "status": status, **extra}
        )
        return result

    def record_settings(self, **values: Any) -> dict[str, Any]:
        """``default_outcome`` ({status, description}), ``id_policy`` (``same``: a sent record has the
        outbox id; ``new``: an id of its own), ``from_field`` (``from`` or ``from_number``), ``page_cap``,
        ``between_pages`` (``{after, delete, receive}``: after that many list answers, delete those record
        ids and receive that many faxes, once)."""
        result: dict[str, Any] = self._call("POST", "/records/settings", values)
        return result

    def records(self) -> list[dict[str, Any]]:
        """Every fax record (summaries with ``outbox_fax_id`` for sent ones), deleted ones included."""
        result: list[dict[str, Any]] = self._call("GET", "/records")
        return result

    def token_requests(self) -> list[dict[str, Any]]:
        """The request log's entries for the token endpoint."""
        return [entry for entry in self.requests() if entry["path"] == TOKEN_PATH]

    def close(self) -> None:
        self._session.close()


class SandboxServer:
    """A sandbox on a background thread, on 127.0.0.1 and an ephemeral port unless told otherwise.

    >>> with SandboxServer() as sandbox:
    ...     sandbox.base_url   # e.g. http://127.0.0.1:40123/v3
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = DEFAULT_TOKEN,
        tokens: dict[str, frozenset[str] | None] | None = None,
        client_id: str | None = None,
        uid: str = DEFAULT_UID,
        members: tuple[str, ...] = (),
        pace: float = 1.0,
        not_found_status: int = 404,
        sending_modify_status: int = 409,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        oauth_clients: dict[str, str] | None = None,
        access_token_lifetime: float = DEFAULT_ACCESS_TOKEN_LIFETIME,
        rotate_refresh_tokens: bool = False,
        control_token: str | None = None,
    ) -> None:
        if control_token is not None and not control_token.strip():
            raise ValueError("control_token is empty")
        if control_token is None and not is_loopback_host(host):
            raise ValueError(
                f"the sandbox bound to {host!r} (not a loopback address) serves its control API to the "
                "network: give it a control token (SandboxServer(control_token=...); faxplus-sandbox reads "
                "FAXPLUS_SANDBOX_CONTROL_TOKEN or --control-token-file)"
            )
        self.control_token = control_token
        self.state = SandboxState(
            tokens=tokens if tokens is not None else {token: None},
            control_token=control_token,
            client_id=client_id,
            uid=uid,
            members=members,
            pace=pace,
            not_found_status=not_found_status,
            sending_modify_status=sending_modify_status,
            max_body_bytes=max_body_bytes,
            oauth=OAuthState(oauth_clients, access_token_lifetime, rotate_refresh_tokens),
        )
        # The token connection_json() hands out: the first one it accepts.
        self.token = token if tokens is None else next(iter(tokens))
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.client: SandboxClient | None = None

    @property
    def root_url(self) -> str:
        assert self._socket is not None, "the sandbox is not started"
        host, port = self._socket.getsockname()[:2]
        # Bound to every interface: connect over loopback, the one plain-http host the provider accepts.
        host = WILDCARD_TO_LOOPBACK.get(host, host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """The base URL to put in a ``faxplus`` connection's host."""
        return self.root_url + API_PREFIX

    def start(self) -> SandboxServer:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        config = uvicorn.Config(
            create_app(self.state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            date_header=False,  # the layer dates answers by the sandbox clock
            http="httptools",  # h11 refuses to send some faults (a body on a 204); httptools sends them
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="faxplus-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Fax.Plus sandbox did not start")
            time.sleep(0.01)
        self.client = SandboxClient(self.root_url, self.control_token)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.client is not None:
            self.client.close()
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = None

    def connection_json(self, **extra: Any) -> str:
        """The JSON for ``AIRFLOW_CONN_<ID>`` pointing at this sandbox."""
        return json.dumps(
            {"conn_type": "faxplus", "host": self.base_url, "password": self.token, "extra": extra}
        )

    @property
    def token_url(self) -> str:
        """The token endpoint, for a connection's ``token_url`` extra."""
        return self.root_url + TOKEN_PATH

    def oauth_connection_json(
        self, client_id: str, client_secret: str, refresh_token: str, **extra: Any
    ) -> str:
        """The JSON for ``AIRFLOW_CONN_<ID>``: OAuth2 with a refresh token, no access token."""
        extra = {
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
            "token_url": self.token_url,
            **extra,
        }
        return json.dumps({"conn_type": "faxplus", "host": self.base_url, "extra": extra})

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
