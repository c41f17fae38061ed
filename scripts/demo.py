"""The demo: run the example DAGs with ``airflow dags test`` against the local sandbox and show the outcome.

Starts the sandbox on 127.0.0.1 (ephemeral port), seeds outbox faxes, runs the three example DAGs in a
temporary AIRFLOW_HOME (the third sends its own fax), prints each task's state, the fax statuses the
sandbox answered, and the final comments, then stops the sandbox. Exits non-zero if a DAG run did not succeed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from airflow_provider_faxplus.sandbox import SandboxClient, SandboxServer
from airflow_provider_faxplus.sandbox.dagtest import AirflowHome

ROOT = Path(__file__).resolve().parent.parent


STATUSES = ("submitted", "converting", "scheduled_for_sending", "sending")
# On a clock: a few seconds per status, the first long enough for the tagging task to run before it.
TIMED = [
    {"status": status, "seconds": seconds} for status, seconds in zip(STATUSES, (12, 3, 3, 3), strict=True)
]
# Counted in polls: the mapped sensors run one after another under `dags test`, in any order, and each
# fax must stay in the outbox until its own sensor looks.
POLLED = [{"status": status, "polls": polls} for status, polls in zip(STATUSES, (2, 1, 1, 1), strict=True)]


def statuses_seen(client: SandboxClient, fax_id: str) -> str:
    seen: list[str] = []
    for entry in client.requests():
        if entry["method"] != "GET" or not entry["path"].endswith(f"/{fax_id}"):
            continue
        label = entry.get("fax_status") or f"HTTP {entry['status']} (left the outbox)"
        if not seen or seen[-1] != label:
            seen.append(label)
    return " -> ".join(seen) or "(none)"


def show(home: AirflowHome, dag_id: str, client: SandboxClient, fax_ids: list[str], succeeded: bool) -> None:
    states = home.task_states(dag_id)
    print(f"\n== {dag_id}: run {states['run_id']} {'succeeded' if succeeded else 'FAILED'}")
    for task_id, map_index, state in states["tasks"]:
        name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
        print(f"   {name:<22} {state}")
    for fax_id in fax_ids:
        fax = client.fax(fax_id)
        print(f"   fax {fax_id}")
        print(f"      statuses seen: {statuses_seen(client, fax_id)}")
        print(f"      final comment: {fax['comment']['text']!r} (tags {fax['comment']['tags']})")


def main() -> int:
    started = time.monotonic()
    with SandboxServer() as sandbox:
        client = sandbox.client
        assert client is not None
        print(f"sandbox: {sandbox.base_url}")
        home = AirflowHome.create(
            dags_folder=ROOT / "example_dags",
            connections={"faxplus_default": sandbox},
            extra_env={"FAXPLUS_EXAMPLE_POKE_INTERVAL": "2"},
        )
        print(f"AIRFLOW_HOME: {home.path}")
        ok = True

        fax_id = client.create_fax(tags=["demo"], lifecycle=TIMED)["id"]
        run = home.dags_test("example_faxplus_tag_and_wait", conf={"outbox_fax_id": fax_id})
        show(home, run.dag_id, client, [fax_id], run.succeeded)
        for line in run.lines_with("FAXPLUS-REPORT:"):
            print(f"   report: {line}")
        ok &= run.succeeded

        fax_ids = [client.create_fax(lifecycle=POLLED)["id"] for _ in range(3)]
        run = home.dags_test("example_faxplus_mapped", conf={"outbox_fax_ids": fax_ids})
        show(home, run.dag_id, client, fax_ids, run.succeeded)
        for line in run.lines_with("FAXPLUS-REPORT:"):
            print(f"   report: {line}")
        ok &= run.succeeded

        # Sending: faxes sent through the sandbox's API move on when polled, so the comment is set
        # before the sensor looks.
        client.settings(
            send_lifecycle=[{"status": "submitted", "polls": 2}, {"status": "sending", "polls": 1}]
        )
        before = {fax["id"] for fax in client.faxes()}
        run = home.dags_test("example_faxplus_send_and_wait", conf={"to": "+16699990001"})
        sent = [fax["id"] for fax in client.faxes() if fax["id"] not in before]
        show(home, run.dag_id, client, sent, run.succeeded)
        for line in run.lines_with("FAXPLUS-REPORT:"):
            print(f"   report: {line}")
        ok &= run.succeeded
        if not ok:
            print(run.output[-4000:], file=sys.stderr)
    print(f"\nsandbox stopped; demo took {time.monotonic() - started:.0f} s: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
