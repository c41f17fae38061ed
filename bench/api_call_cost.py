"""2. Cost per API call: N GETs of one outbox fax from the sandbox, through four clients, side by side."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import requests
from _common import HEADERS, TOKEN, Sandbox, median


def clients(sandbox: Sandbox, fax_id: str) -> dict[str, Callable[[], object]]:
    os.environ["AIRFLOW_CONN_FAXPLUS_BENCH"] = sandbox.connection_json()
    os.environ["AIRFLOW_CONN_HTTP_BENCH"] = sandbox.root
    url = sandbox.fax_url(fax_id)

    session = requests.Session()

    def floor() -> object:
        return session.get(url, headers=HEADERS, timeout=30).json()

    # requests' defaults re-read proxy and CA settings from the environment on every request;
    # the hook reads them once per session. This floor does the same.
    tuned = requests.Session()
    tuned.trust_env = False

    def tuned_floor() -> object:
        return tuned.get(url, headers=HEADERS, timeout=30).json()

    from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook

    hook = FaxPlusHook(faxplus_conn_id="faxplus_bench")

    def faxplus_hook() -> object:
        return hook.get_outbox_fax(fax_id)

    from faxplus import ApiClient, OutboxApi
    from faxplus.configuration import Configuration

    conf = Configuration()
    conf.access_token = TOKEN
    conf.host = sandbox.base_url
    sdk = OutboxApi(ApiClient(configuration=conf))

    def faxplus_sdk() -> object:
        return sdk.get_outbox_fax(user_id="self", outbox_fax_id=fax_id)

    from airflow.providers.http.hooks.http import HttpHook

    http_hook = HttpHook(method="GET", http_conn_id="http_bench")

    def http_hook_run() -> object:
        return http_hook.run(f"/v3/accounts/self/outbox/{fax_id}", headers=HEADERS).json()

    return {
        "bare keep-alive requests.Session (floor)": floor,
        "same, trust_env=False (floor without per-request environment reads)": tuned_floor,
        "FaxPlusHook.get_outbox_fax": faxplus_hook,
        "faxplus-api 3.0.5 SDK (urllib3)": faxplus_sdk,
        "HttpHook.run (http provider 6.3.0)": http_hook_run,
    }


def run(n: int = 2000, rounds: int = 3) -> list[str]:
    with Sandbox() as sandbox:
        fax_id = sandbox.create_fax(lifecycle=[{"status": "submitted", "seconds": 3600}])
        calls = clients(sandbox, fax_id)
        for call in calls.values():  # warm up: connections, imports, caches
            for _ in range(50):
                call()
        rates: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                started = time.perf_counter()
                for _ in range(n):
                    call()
                rates[name].append(n / (time.perf_counter() - started))
        ports = {}
        log = sandbox.control("GET", "/requests")
        for entry in log:
            ports.setdefault(entry["headers"].get("user-agent", "?").split("/")[0], set()).add(
                entry["client_port"]
            )
    floor = median(next(iter(rates.values())))
    lines = [
        f"| client ({n} GETs, median of {rounds} interleaved rounds) | calls/s | time per call | vs floor |",
        "|---|---|---|---|",
    ]
    for name, values in rates.items():
        rate = median(values)
        lines.append(f"| {name} | {rate:,.0f} | {1e6 / rate:.0f} µs | {floor / rate:.2f}x |")
    lines.append("")
    lines.append(
        "TCP connections the sandbox saw per User-Agent: "
        + ", ".join(f"{agent} {len(p)}" for agent, p in sorted(ports.items()))
    )
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
