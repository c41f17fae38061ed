"""Event-driven DAGs in a real Airflow 3.3 deployment: scheduler, dag-processor, triggerer and api-server
on 127.0.0.1 run ``example_faxplus_tag_new_faxes`` from asset events of ``OutboxEventTrigger``.

Every wait is on observable state (the watcher's cursor in the asset state store, DAG runs in the
database, requests the sandbox received), with generous bounds; nothing races Airflow's start-up."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from airflow_provider_faxplus.sandbox.dagtest import AirflowDeployment
from tests.test_deployment import AIRFLOW_3, ROOT, TOKEN, Deployment, _answers, _free_port, wait_for

pytestmark = pytest.mark.skipif(not AIRFLOW_3, reason="asset watchers need Airflow 3")

TAG_DAG = "example_faxplus_tag_new_faxes"
LEFT_DAG = "example_faxplus_faxes_left"
LIST = "/v3/accounts/self/outbox"
STILL_THERE = [{"status": "submitted", "seconds": 3600}]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    from airflow_provider_faxplus.sandbox import SandboxServer
    from airflow_provider_faxplus.sandbox.dagtest import AirflowHome

    dags = tmp_path_factory.mktemp("event-dags")
    shutil.copy(ROOT / "example_dags" / "example_faxplus_tag_new_faxes.py", dags)
    port = _free_port()
    with SandboxServer(token=TOKEN) as sandbox:
        uri = f"faxplus://:{quote(TOKEN, safe='')}@{quote(sandbox.base_url, safe='')}"
        home = AirflowHome.create(
            dags_folder=dags,
            connections={"faxplus_default": uri},
            extra_env={
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "FAXPLUS_EXAMPLE_POKE_INTERVAL": "1",
            },
            path=tmp_path_factory.mktemp("event-home"),
        )
        deployed = Deployment(home, sandbox)
        deployed.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        try:
            wait_for(
                lambda: _answers(f"http://127.0.0.1:{port}/api/v2/monitor/health"), "the api-server", 180
            )
            deployed.start("dag-processor", "dag-processor")
            deployed.start("scheduler", "scheduler")
            deployed.start("triggerer", "triggerer")
            yield deployed
        finally:
            deployed.stop_all()


def cursor(deployment: Deployment, asset: str) -> dict[str, dict[str, object]] | None:
    """The cursor kept in the asset's state store (its known faxes), or None before the watcher wrote it."""
    from airflow_provider_faxplus.triggers.outbox_events import decode_cursor

    stored = AirflowDeployment(deployment.home).asset_state(asset)
    if not stored:
        return None
    first = min(stored, key=len)  # the cursor's key; its other parts (if any) are that key and a suffix
    return decode_cursor(stored, first)


def runs(deployment: Deployment, dag_id: str) -> list[dict[str, object]]:
    return AirflowDeployment(deployment.home).dag_runs(dag_id)


def events(deployment: Deployment, asset: str) -> list[dict[str, object]]:
    return AirflowDeployment(deployment.home).asset_events(asset)


def list_calls(deployment: Deployment) -> int:
    control = deployment.sandbox.client
    assert control is not None
    return sum(1 for e in control.requests() if e["method"] == "GET" and e["path"] == LIST)


def test_five_new_faxes_make_five_runs_across_a_triggerer_restart_and_leaving_is_reported(deployment):
    started = time.monotonic()
    control = deployment.sandbox.client
    assert control is not None
    already = control.create_fax(lifecycle=STILL_THERE)["id"]  # there before the watcher: not "new"

    # The watchers run once the DAGs are parsed and unpaused; their first cursor is the starting point.
    wait_for(
        lambda: cursor(deployment, "faxplus_outbox_entered") == {already: _entry()}, "the first cursor", 300
    )
    wait_for(lambda: cursor(deployment, "faxplus_outbox_left") is not None, "the left watcher's cursor", 120)

    faxes: list[str] = []

    def create_and_wait_for_its_run() -> None:
        faxes.append(control.create_fax(lifecycle=STILL_THERE)["id"])
        wait_for(lambda: len(runs(deployment, TAG_DAG)) >= len(faxes), f"the run for fax #{len(faxes)}", 180)

    for _ in range(3):
        create_and_wait_for_its_run()
    # A quiet moment: the third event is reported and recorded; restart the triggerer, and let a fax
    # enter the outbox while none runs.
    wait_for(
        lambda: set(cursor(deployment, "faxplus_outbox_entered") or {}) == {already, *faxes}, "cursor", 120
    )
    deployment.stop("triggerer")
    faxes.append(control.create_fax(lifecycle=STILL_THERE)["id"])
    deployment.start("triggerer", "triggerer")
    wait_for(lambda: len(runs(deployment, TAG_DAG)) >= 4, "the run for the fax made during the restart", 240)
    create_and_wait_for_its_run()

    # Every run finishes; a few more polls bring no further run.
    wait_for(
        lambda: all(run["state"] in ("success", "failed") for run in runs(deployment, TAG_DAG)),
        "runs done",
        300,
    )
    polls = list_calls(deployment)
    wait_for(lambda: list_calls(deployment) >= polls + 6, "more polls of both watchers", 60)
    tag_runs = runs(deployment, TAG_DAG)
    assert len(tag_runs) == 5, tag_runs
    assert all(run["state"] == "success" for run in tag_runs), tag_runs
    tagged_by = {}
    for run in tag_runs:
        [[fax_id]] = run["xcom"]  # one fax per run, tagged once
        tagged_by[fax_id] = run["run_id"]
    assert sorted(tagged_by) == sorted(faxes)
    for fax_id, run_id in tagged_by.items():
        assert control.fax(fax_id)["comment"]["text"].endswith(f"(run {run_id})")
    assert control.fax(already)["comment"]["text"] == ""

    entered = [p["outbox_fax_id"] for p in events(deployment, "faxplus_outbox_entered")]
    assert sorted(entered) == sorted(faxes)  # one asset event per new fax, none for the one already there

    # All six leave in the same instant: the other watcher reports each exactly once. (Airflow may
    # gather events of one asset into one run; the events themselves are what the watcher makes.)
    control.advance(3600)
    everyone = {already, *faxes}

    def left_ids() -> list[str]:
        return [p["outbox_fax_id"] for p in events(deployment, "faxplus_outbox_left")]

    wait_for(lambda: set(left_ids()) == everyone, "the left events", 240)
    wait_for(lambda: cursor(deployment, "faxplus_outbox_entered") == {}, "the cursor after they left", 60)
    polls = list_calls(deployment)
    wait_for(lambda: list_calls(deployment) >= polls + 6, "more polls", 60)
    assert sorted(left_ids()) == sorted(everyone)
    assert all(
        p["event"] == "left" and p["status"] == "submitted" for p in events(deployment, "faxplus_outbox_left")
    )
    wait_for(lambda: runs(deployment, LEFT_DAG), "a run of the left DAG", 120)
    wait_for(lambda: all(run["state"] == "success" for run in runs(deployment, LEFT_DAG)), "left runs", 240)
    reported = [fax_id for run in runs(deployment, LEFT_DAG) for values in run["xcom"] for fax_id in values]
    assert set(reported) <= everyone
    assert len(reported) == len(set(reported))
    # What the watchers and tasks sent, and the sandbox answered, conforms to the spec; no file of the
    # deployment (logs, the database with the triggers' kwargs and the asset events) holds the token.
    from tests.conformance import problems

    found = problems(deployment.sandbox.root_url, control.requests())
    assert not found, "spec conformance:\n" + "\n".join(found[:20])
    files = [path for path in deployment.home.path.rglob("*") if path.is_file()]
    assert [str(path) for path in files if TOKEN.encode() in path.read_bytes()] == []
    print(f"\nasset-event deployment test: {time.monotonic() - started:.0f} s after start-up")


def _entry() -> dict[str, object]:
    return {"status": "submitted", "reported": []}
