"""``faxplus-oauth``: the one browser step of OAuth2 that the provider cannot do.

Prints the authorization URL for a client id and redirect URI, reads the code Fax.Plus appended to the
redirect (``--code`` or a prompt; the whole redirect URL is accepted too), exchanges it at the token
endpoint (``grant_type=authorization_code``) and prints the refresh token and the connection to store,
on stdout only. Instructions go to stderr. The client secret comes from ``FAXPLUS_CLIENT_SECRET`` or a
hidden prompt, never from the command line (other users can read a process's arguments).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from urllib.parse import parse_qs, urlsplit

import requests

from airflow_provider_faxplus import oauth
from airflow_provider_faxplus.config import (
    DEFAULT_BASE_URL,
    DEFAULT_TOKEN_URL,
    normalize_base_url,
    requests_proxies,
)
from airflow_provider_faxplus.exceptions import FaxPlusError

SECRET_ENV = "FAXPLUS_CLIENT_SECRET"  # noqa: S105 - the variable's name
SECRET_PLACEHOLDER = "<client secret>"  # noqa: S105 - not a secret
TIMEOUT = 30.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faxplus-oauth",
        description="Get a Fax.Plus OAuth2 refresh token for an Airflow 'faxplus' connection. The client "
        f"secret is read from ${SECRET_ENV} or a hidden prompt.",
    )
    parser.add_argument("--client-id", required=True, help="the OAuth2 client id (APIK-...)")
    parser.add_argument("--redirect-uri", required=True, help="the redirect URI registered for the client")
    parser.add_argument(
        "--code", help="the code from the redirect, or the whole redirect URL (else prompted)"
    )
    parser.add_argument("--token-url", default=DEFAULT_TOKEN_URL, help=f"default {DEFAULT_TOKEN_URL}")
    parser.add_argument("--login-url", default=oauth.LOGIN_URL, help=f"default {oauth.LOGIN_URL}")
    parser.add_argument(
        "--base-url", help=f"the API base URL for the printed connection (default {DEFAULT_BASE_URL})"
    )
    parser.add_argument(
        "--conn-id", default="faxplus_default", help="the connection id to print (default faxplus_default)"
    )
    parser.add_argument(
        "--include-client-secret",
        action="store_true",
        help="put the client secret in the printed connection (default: a placeholder)",
    )
    return parser


def _code_from(text: str) -> str:
    """The code from what was pasted: a code, or the redirect URL carrying ``?code=`` (or ``?error=``)."""
    text = text.strip()
    if "code=" in text or "error=" in text:
        query = parse_qs(urlsplit(text).query or text.lstrip("?"))
        if "error" in query:
            raise ValueError(f"the authorization was refused: {query['error'][0]}")
        if query.get("code"):
            return query["code"][0]
    if not text:
        raise ValueError("no code given")
    return text


def _connection(args: argparse.Namespace, secret: str, refresh_token: str) -> dict[str, object]:
    extra: dict[str, str] = {
        "client_id": args.client_id,
        "client_secret": secret if args.include_client_secret else SECRET_PLACEHOLDER,
        "refresh_token": refresh_token,
    }
    if args.token_url != DEFAULT_TOKEN_URL:
        extra["token_url"] = args.token_url
    connection: dict[str, object] = {"conn_type": "faxplus", "extra": extra}
    if args.base_url:
        connection["host"] = args.base_url
    return connection


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    err = sys.stderr
    try:
        args.token_url = normalize_base_url(args.token_url, what="token URL")
        args.login_url = normalize_base_url(args.login_url, what="login URL")
        if args.base_url:
            args.base_url = normalize_base_url(args.base_url)
    except FaxPlusError as exc:
        print(f"faxplus-oauth: {exc}", file=err)
        return 2
    print("1. Open this URL, sign in to Fax.Plus and allow access:\n", file=err)
    print(f"   {oauth.authorization_url(args.client_id, args.redirect_uri, args.login_url)}\n", file=err)
    print("2. You are sent to the redirect URI with ?code=... in its address.", file=err, flush=True)
    try:
        if args.code:
            print(
                "faxplus-oauth: warning: --code is visible to other users of this machine (ps) until the "
                "exchange is done; prefer the prompt",
                file=err,
            )
            code = _code_from(args.code)
        else:
            print("Paste the code (or the whole address you were sent to): ", end="", file=err, flush=True)
            code = _code_from(sys.stdin.readline())
    except ValueError as exc:
        print(f"faxplus-oauth: {exc}", file=err)
        return 2
    secret = os.environ.get(SECRET_ENV) or getpass.getpass("Client secret (hidden): ", stream=err)
    if not secret.strip():
        print(f"faxplus-oauth: no client secret (set {SECRET_ENV} or type it at the prompt)", file=err)
        return 2
    call = oauth.authorization_code_call(
        args.token_url, args.client_id, secret.strip(), code, args.redirect_uri
    )
    try:
        # The hook's proxy rule, nothing from the environment besides it (trust_env would let
        # HTTP_PROXY or ALL_PROXY see the client secret of a plain-http loopback token URL).
        proxies = requests_proxies(args.token_url)
        session = requests.Session()
        session.trust_env = False
        try:
            with session:
                response = session.post(
                    call.url,
                    data=call.body,
                    headers=dict(call.headers),
                    timeout=TIMEOUT,
                    allow_redirects=False,
                    proxies=proxies,  # type: ignore[arg-type]
                    stream=True,
                )
                body = response.raw.read(oauth.MAX_TOKEN_ANSWER_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            raise oauth.transport_error(call, f"{type(exc).__name__}: {exc}") from None
        if len(body) > oauth.MAX_TOKEN_ANSWER_BYTES:
            raise oauth.too_large(call, response.status_code)
        grant = oauth.parse_token_response(call, response.status_code, dict(response.headers), body)
    except FaxPlusError as exc:
        print(f"faxplus-oauth: {exc}", file=err)
        return 1
    if not grant.refresh_token:
        print("faxplus-oauth: the token endpoint answered without a refresh_token", file=err)
        return 1
    connection = _connection(args, secret.strip(), grant.refresh_token)
    print("3. Store these in the connection (extra fields); they are shown here only:", file=err, flush=True)
    print(f"refresh_token={grant.refresh_token}")
    print(f"extra={json.dumps(connection['extra'])}")
    print(f"AIRFLOW_CONN_{args.conn_id.upper()}='{json.dumps(connection)}'")
    if not args.include_client_secret:
        print(f"(replace {SECRET_PLACEHOLDER!r} with the client secret)", file=err)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
