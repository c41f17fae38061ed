"""httpx vs aiohttp for the trigger's polling: requests/s, memory and import cost, side by side.

    python bench/async_clients.py [--requests 4000] [--concurrency 500] [--rounds 5]

Needs aiohttp installed (benchmark only: the provider depends on httpx, which ships with Airflow).
The sandbox runs in its own process so that the server does not share the client's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import time

from _common import TOKEN, Sandbox


async def run_httpx(url: str, n: int, concurrency: int) -> float:
    import httpx

    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                response = await client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 200
                response.json()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - started


async def run_aiohttp(url: str, n: int, concurrency: int) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem, session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200
                await response.json()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - started


def import_ms(module: str) -> float:
    times = []
    for _ in range(5):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import time; t=time.perf_counter(); import {module}; print((time.perf_counter()-t)*1000)",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sandbox = Sandbox()
    url = sandbox.fax_url(sandbox.create_fax(lifecycle=[{"status": "submitted", "seconds": 3600}]))
    try:
        results: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
        for _ in range(args.rounds):  # interleaved, so both see the same machine state
            for name, runner in (("httpx", run_httpx), ("aiohttp", run_aiohttp)):
                results[name].append(
                    args.requests / asyncio.run(runner(url, args.requests, args.concurrency))
                )
        print(
            f"{args.requests} GETs, {args.concurrency} in flight, pool of 32, median of {args.rounds} rounds"
        )
        for name, rates in results.items():
            print(f"  {name:8} {statistics.median(rates):8.0f} req/s   import {import_ms(name):6.1f} ms")
        ratio = statistics.median(results["aiohttp"]) / statistics.median(results["httpx"])
        print(f"  aiohttp/httpx throughput ratio: {ratio:.2f}")
        print(
            f"  peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
    finally:
        sandbox.close()


if __name__ == "__main__":
    main()
