"""``faxplus-sandbox``: run the local Fax.Plus sandbox in the foreground.

Secrets never come from the command line (any user of the machine can read a process's arguments): the
bearer token it accepts from ``FAXPLUS_SANDBOX_TOKEN`` or ``--token-file``, the control token (required
when bound to an address other than loopback) from ``FAXPLUS_SANDBOX_CONTROL_TOKEN`` or
``--control-token-file``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from urllib.parse import urlsplit

from airflow_provider_faxplus.sandbox import DEFAULT_TOKEN, SandboxServer
from airflow_provider_faxplus.sandbox.server import is_loopback_host

TOKEN_ENV = "FAXPLUS_SANDBOX_TOKEN"  # noqa: S105 - the variable's name
CONTROL_TOKEN_ENV = "FAXPLUS_SANDBOX_CONTROL_TOKEN"  # noqa: S105 - the variable's name


def _port(text: str) -> int:
    port = int(text)  # a ValueError becomes argparse's "invalid _port value"
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535)")
    return port


def _count(text: str) -> int:
    count = int(text)
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a count (a whole number >= 0)")
    return count


def _seconds(text: str) -> float:
    """A finite number >= 0, as the control API takes it (nan and inf would stall or crash the clock)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


_port.__name__ = "port"  # argparse names the type in its "invalid ... value" message
_count.__name__ = "count"
_seconds.__name__ = "number"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faxplus-sandbox",
        description="A local Fax.Plus REST API sandbox (the outbox operations) for developing DAGs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8080, help="port to bind; 0 picks a free one (default 8080)"
    )
    parser.add_argument(
        "--token-file",
        help=f"a file holding the bearer token it accepts (else ${TOKEN_ENV}, else {DEFAULT_TOKEN!r})",
    )
    parser.add_argument(
        "--control-token-file",
        help=f"a file holding the control API's token (else ${CONTROL_TOKEN_ENV}); required when --host "
        "is not a loopback address",
    )
    # Refused with a clear message: a token on the command line is visible to every user (ps).
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help="require this x-fax-clientid header (OAuth2 clients)")
    parser.add_argument(
        "--pace", type=_seconds, default=1.0, help="virtual seconds per real second (default 1)"
    )
    parser.add_argument(
        "--not-found-status",
        type=int,
        choices=(400, 404),
        default=404,
        help="status answered for a fax that left the outbox (default 404)",
    )
    parser.add_argument(
        "--seed",
        type=_count,
        default=0,
        help="create this many outbox faxes at start; each stays 'submitted' until its first look (a GET "
        "of it, or a list answer showing it), then moves on every --stage-seconds",
    )
    parser.add_argument(
        "--stage-seconds",
        type=_seconds,
        default=10.0,
        help="seconds each seeded fax spends in each status (submitted, converting, scheduled_for_sending, "
        "sending) from its first look on; it leaves the outbox 4 x this after its first look (default 10)",
    )
    return parser


class _SecretError(Exception):
    pass


def _secret(file_option: str, path: str | None, env: str) -> str | None:
    """A secret from a file (its first line) or the environment; never echoed."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _SecretError(f"{file_option}: cannot read {path!r}: {type(exc).__name__}") from None
        if not value:
            raise _SecretError(f"{file_option}: {path!r} is empty")
        return value
    value = os.environ.get(env, "").strip()
    return value or None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.token is not None:
        print(
            f"faxplus-sandbox: --token is not accepted (any user can read a command line): set {TOKEN_ENV} "
            "or use --token-file",
            file=sys.stderr,
        )
        return 2
    try:
        token = _secret("--token-file", args.token_file, TOKEN_ENV) or DEFAULT_TOKEN
        control_token = _secret("--control-token-file", args.control_token_file, CONTROL_TOKEN_ENV)
    except _SecretError as exc:
        print(f"faxplus-sandbox: {exc}", file=sys.stderr)
        return 2
    if control_token is None and not is_loopback_host(args.host):
        print(
            f"faxplus-sandbox: bound to {args.host!r}, not a loopback address, the control API (faxes, "
            "OAuth2 clients and tokens, the request log, reset) would be open to the network: set "
            f"{CONTROL_TOKEN_ENV} or use --control-token-file",
            file=sys.stderr,
        )
        return 2
    # Before anything is printed: a caller may send SIGTERM as soon as it has read the lines.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = SandboxServer(
        host=args.host,
        port=args.port,
        token=token,
        client_id=args.client_id,
        pace=args.pace,
        not_found_status=args.not_found_status,
        control_token=control_token,
    )
    try:
        server.start()
    except OSError as exc:  # the port taken, the address not this machine's
        reason = exc.strerror or exc
        print(f"faxplus-sandbox: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    assert server.client is not None
    stages = [
        {"status": status, "seconds": args.stage_seconds}
        for status in ("submitted", "converting", "scheduled_for_sending", "sending")
    ]
    # Counted from each fax's first look: a seeded fax waits for however long Airflow takes to start.
    seeded = [
        server.client.create_fax(lifecycle=stages, start_on_first_look=True)["id"] for _ in range(args.seed)
    ]
    conn: dict[str, object] = {"conn_type": "faxplus", "host": server.base_url}
    conn["password"] = token if token == DEFAULT_TOKEN else "<the token you chose>"
    if args.client_id:
        conn["extra"] = {"client_id": args.client_id}
    print(f"Fax.Plus sandbox listening on {server.base_url}", flush=True)
    print(f"Control API: {server.root_url}/_sandbox (faxes, faults, requests, clock, settings, reset)")
    if control_token is not None:
        print("The control API needs the control token: Authorization: Bearer <control token>")
    if is_loopback_host(urlsplit(server.root_url).hostname or ""):
        print(f"export AIRFLOW_CONN_FAXPLUS_DEFAULT='{json.dumps(conn)}'")
    if not is_loopback_host(args.host):
        # The provider sends a token over plain http only to a loopback host (config.normalize_base_url).
        print(
            "From other hosts, serve it over https (a TLS-terminating proxy in front) and use that https:// "
            "base URL: the provider refuses to send a token over plain http to a non-loopback host."
        )
    if seeded:
        print(
            f"Seeded faxes stay 'submitted' until first looked at, then leave the outbox "
            f"{4 * args.stage_seconds:g} s later (--stage-seconds {args.stage_seconds:g} per status)"
        )
    for fax_id in seeded:
        print(f"seeded outbox fax {fax_id}")
    sys.stdout.flush()  # a pipe is block-buffered: whoever reads these lines must get them now
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
