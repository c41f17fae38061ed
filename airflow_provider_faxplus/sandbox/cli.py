"""``faxplus-sandbox``: run the local Fax.Plus sandbox in the foreground."""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
import threading
from urllib.parse import urlsplit

from airflow_provider_faxplus.sandbox import DEFAULT_TOKEN, SandboxServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faxplus-sandbox",
        description="A local Fax.Plus REST API sandbox (the outbox operations) for developing DAGs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to bind; 0 picks a free one (default 8080)"
    )
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="the bearer token it accepts")
    parser.add_argument("--client-id", help="require this x-fax-clientid header (OAuth2 clients)")
    parser.add_argument("--pace", type=float, default=1.0, help="virtual seconds per real second (default 1)")
    parser.add_argument(
        "--not-found-status",
        type=int,
        choices=(400, 404),
        default=404,
        help="status answered for a fax that left the outbox (default 404)",
    )
    parser.add_argument("--seed", type=int, default=0, help="create this many outbox faxes at start")
    parser.add_argument(
        "--stage-seconds", type=float, default=10.0, help="seconds per status for seeded faxes"
    )
    return parser


def _is_loopback(hostname: str) -> bool:
    # config.is_loopback's rule, not imported: that module pulls in Airflow, slow for a CLI start.
    try:
        return hostname == "localhost" or ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Before anything is printed: a caller may send SIGTERM as soon as it has read the lines.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = SandboxServer(
        host=args.host,
        port=args.port,
        token=args.token,
        client_id=args.client_id,
        pace=args.pace,
        not_found_status=args.not_found_status,
    ).start()
    assert server.client is not None
    stages = [
        {"status": status, "seconds": args.stage_seconds}
        for status in ("submitted", "converting", "scheduled_for_sending", "sending")
    ]
    seeded = [server.client.create_fax(lifecycle=stages)["id"] for _ in range(args.seed)]
    conn: dict[str, object] = {"conn_type": "faxplus", "host": server.base_url}
    conn["password"] = args.token if args.token == DEFAULT_TOKEN else "<the --token you chose>"
    if args.client_id:
        conn["extra"] = {"client_id": args.client_id}
    print(f"Fax.Plus sandbox listening on {server.base_url}", flush=True)
    print(f"Control API: {server.root_url}/_sandbox (faxes, faults, requests, clock, settings, reset)")
    if _is_loopback(urlsplit(server.root_url).hostname or ""):
        print(f"export AIRFLOW_CONN_FAXPLUS_DEFAULT='{json.dumps(conn)}'")
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        # The provider sends a token over plain http only to a loopback host (config.normalize_base_url).
        print(
            "From other hosts, serve it over https (a TLS-terminating proxy in front) and use that https:// "
            "base URL: the provider refuses to send a token over plain http to a non-loopback host."
        )
    for fax_id in seeded:
        print(f"seeded outbox fax {fax_id}")
    sys.stdout.flush()  # a pipe is block-buffered: whoever reads these lines must get them now
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
