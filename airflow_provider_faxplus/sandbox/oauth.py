"""The sandbox's OAuth2 token endpoint (``POST /token`` on the sandbox root, as at
``https://accounts.fax.plus/token``) and its control API (``/_sandbox/oauth...``).

- grants: ``authorization_code`` (codes minted by the control API, one use, bound to a redirect URI) and
  ``refresh_token`` (refresh tokens minted by a code exchange or the control API; revocable);
- client authentication: HTTP Basic ``client_id:client_secret`` (RFC 6749 2.3.1);
- errors as RFC 6749 5.2: 400 ``invalid_request`` / ``invalid_grant`` / ``unsupported_grant_type``,
  401 ``invalid_client`` with ``WWW-Authenticate: Basic``;
- access tokens expire ``access_token_lifetime`` seconds after issue on the sandbox clock (so
  ``advance`` expires them); an expired one answers 401 ``invalid_token`` on /v3;
- ``rotate_refresh_tokens``: each refresh returns a new refresh token and revokes the old one.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOKEN_PATH = "/token"  # noqa: S105 - a path, not a secret
DEFAULT_ACCESS_TOKEN_LIFETIME = 3600.0
# Form fields whose values the request log never keeps.
SECRET_FIELDS = ("code", "refresh_token", "client_secret")


class OAuthInputError(ValueError):
    """A control-API request about OAuth2 is invalid."""


@dataclass
class IssuedToken:
    client_id: str
    expires_at: float


class OAuthState:
    """OAuth2 clients and the tokens issued to them."""

    def __init__(
        self,
        clients: dict[str, str] | None = None,
        access_token_lifetime: float = DEFAULT_ACCESS_TOKEN_LIFETIME,
        rotate_refresh_tokens: bool = False,
    ) -> None:
        self._initial = (dict(clients or {}), access_token_lifetime, rotate_refresh_tokens)
        self.reset()

    def reset(self) -> None:
        clients, lifetime, rotate = self._initial
        self.clients: dict[str, str] = dict(clients)
        self.access_token_lifetime = lifetime
        self.rotate_refresh_tokens = rotate
        self.codes: dict[str, tuple[str, str]] = {}  # code -> (client id, redirect URI)
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> client id
        self.access_tokens: dict[str, IssuedToken] = {}

    def _client(self, client_id: object) -> str:
        if not isinstance(client_id, str) or client_id not in self.clients:
            raise OAuthInputError(f"unknown client_id {client_id!r}; known: {sorted(self.clients)}")
        return client_id

    def mint_code(self, client_id: object, redirect_uri: object) -> str:
        if not isinstance(redirect_uri, str) or not redirect_uri:
            raise OAuthInputError("redirect_uri must be a non-empty string")
        code = "code_" + secrets.token_urlsafe(16)
        self.codes[code] = (self._client(client_id), redirect_uri)
        return code

    def mint_refresh_token(self, client_id: object) -> str:
        token = "refresh_" + secrets.token_urlsafe(24)
        self.refresh_tokens[token] = self._client(client_id)
        return token

    def issue(self, client_id: str, now: float) -> dict[str, Any]:
        access = "oauth_access_" + secrets.token_urlsafe(24)
        self.access_tokens[access] = IssuedToken(client_id, now + self.access_token_lifetime)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "scope": "all",
        }

    def settings(self) -> dict[str, Any]:
        return {
            "access_token_lifetime": self.access_token_lifetime,
            "rotate_refresh_tokens": self.rotate_refresh_tokens,
            "clients": sorted(self.clients),
        }


def _oauth_error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> Response:
    # RFC 6749 5.1/5.2: JSON, never cached.
    return JSONResponse(
        {"error": code, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})},
    )


def _basic_client(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def redacted_form(body: str) -> str:
    """A token request's form for the request log: secret values replaced."""
    pairs = []
    for name, values in parse_qs(body, keep_blank_values=True).items():
        for value in values:
            pairs.append(f"{name}={'<redacted>' if name in SECRET_FIELDS else value}")
    return "&".join(pairs)


async def token_endpoint(request: Request) -> Response:
    state = request.app.state.sandbox
    oauth: OAuthState = state.oauth
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "The body must be application/x-www-form-urlencoded")
    body = (await request.body()).decode("utf-8", errors="replace")
    form = {name: values[-1] for name, values in parse_qs(body, keep_blank_values=True).items()}
    request.state.grant_type = form.get("grant_type")  # for the request log
    client = _basic_client(request.headers.get("authorization", ""))
    if (
        client is None
        or oauth.clients.get(client[0]) is None
        or not secrets.compare_digest(oauth.clients[client[0]].encode(), client[1].encode())
    ):
        return _oauth_error(
            401, "invalid_client", "Client authentication failed", {"WWW-Authenticate": 'Basic realm="token"'}
        )
    client_id = client[0]
    now = state.clock.now()
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        found = oauth.codes.get(form.get("code", ""))
        if found is None or found[0] != client_id:
            return _oauth_error(400, "invalid_grant", "The authorization code is invalid or was used")
        if form.get("redirect_uri") != found[1]:
            return _oauth_error(400, "invalid_grant", "redirect_uri does not match the authorization request")
        del oauth.codes[form["code"]]
        answer = oauth.issue(client_id, now)
        answer["refresh_token"] = oauth.mint_refresh_token(client_id)
    elif grant_type == "refresh_token":
        refresh = form.get("refresh_token", "")
        if oauth.refresh_tokens.get(refresh) != client_id:
            return _oauth_error(400, "invalid_grant", "The refresh token is invalid or was revoked")
        answer = oauth.issue(client_id, now)
        if oauth.rotate_refresh_tokens:
            del oauth.refresh_tokens[refresh]
            answer["refresh_token"] = oauth.mint_refresh_token(client_id)
    elif grant_type is None:
        return _oauth_error(400, "invalid_request", "grant_type is missing")
    else:
        return _oauth_error(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def check_access_token(
    oauth: OAuthState, token: str, client_header: str | None, now: float
) -> Response | bool:
    """For /v3: ``False`` if ``token`` was never issued here, ``True`` if it is good, else the 401."""
    issued = oauth.access_tokens.get(token)
    if issued is None:
        return False
    if now >= issued.expires_at:
        return _api_401("invalid_token", "The access token expired")
    if client_header != issued.client_id:
        return _api_401("invalid_client", "Missing or invalid x-fax-clientid header")
    return True


def _api_401(code: str, description: str) -> Response:
    return JSONResponse(
        {"error": code, "description": description},
        status_code=401,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'},
    )


# Control API --------------------------------------------------------------------------------------


async def _settings(request: Request, data: dict[str, Any]) -> Any:
    oauth: OAuthState = request.app.state.sandbox.oauth
    if "access_token_lifetime" in data:
        value = data["access_token_lifetime"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise OAuthInputError("access_token_lifetime must be a number of seconds > 0")
        oauth.access_token_lifetime = float(value)
    if "rotate_refresh_tokens" in data:
        if not isinstance(data["rotate_refresh_tokens"], bool):
            raise OAuthInputError("rotate_refresh_tokens must be true or false")
        oauth.rotate_refresh_tokens = data["rotate_refresh_tokens"]
    if "clients" in data:
        clients = data["clients"]
        if not isinstance(clients, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in clients.items()
        ):
            raise OAuthInputError("clients must be an object of client_id: client_secret strings")
        oauth.clients.update(clients)
    return oauth.settings()


async def _codes(request: Request, data: dict[str, Any]) -> Any:
    return {
        "code": request.app.state.sandbox.oauth.mint_code(data.get("client_id"), data.get("redirect_uri"))
    }


async def _refresh_tokens(request: Request, data: dict[str, Any]) -> Any:
    return {"refresh_token": request.app.state.sandbox.oauth.mint_refresh_token(data.get("client_id"))}


async def _revoke(request: Request, data: dict[str, Any]) -> Any:
    oauth: OAuthState = request.app.state.sandbox.oauth
    token = data.get("refresh_token")
    if not isinstance(token, str):
        raise OAuthInputError("refresh_token must be a string")
    return {"revoked": oauth.refresh_tokens.pop(token, None) is not None}


def routes(
    control_prefix: str,
    control: Callable[[Callable[[Request], Awaitable[Any]]], Callable[[Request], Awaitable[Response]]],
    read_json: Callable[[Request], Awaitable[Any]],
) -> list[Route]:
    """The token endpoint and the OAuth2 control routes, for the sandbox app."""

    def with_body(
        handler: Callable[[Request, dict[str, Any]], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Any:
            return await handler(request, await read_json(request))

        return control(endpoint)

    return [
        Route(TOKEN_PATH, token_endpoint, methods=["POST"]),
        Route(control_prefix + "/oauth", with_body(_settings), methods=["POST"]),
        Route(control_prefix + "/oauth/codes", with_body(_codes), methods=["POST"]),
        Route(control_prefix + "/oauth/refresh_tokens", with_body(_refresh_tokens), methods=["POST"]),
        Route(control_prefix + "/oauth/revoke", with_body(_revoke), methods=["POST"]),
    ]
