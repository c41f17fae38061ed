"""The sandbox in its own process with member accounts (the CLI serves one account only).

python bench/_sandbox_proc.py TOKEN [MEMBER ...]: prints the CLI's "listening on" line, stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading

from airflow_provider_faxplus.sandbox.server import SandboxServer


def main() -> None:
    token, members = sys.argv[1], tuple(sys.argv[2:])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = SandboxServer(token=token, members=members).start()
    print(f"Fax.Plus sandbox listening on {server.base_url}", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
