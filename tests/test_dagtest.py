"""What the dagtest helpers read back from a home's database."""

from __future__ import annotations

import pytest

from airflow_provider_faxplus.sandbox.dagtest import AirflowDeployment, AirflowHome
from tests.test_deployment import AIRFLOW_3

_RETURNS = """
import pendulum
from airflow.sdk import dag, task

@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def faxplus_returns():
    @task
    def text():
        return "sent: 3 pages"

    @task
    def mapping():
        return {"fax_id": "f1", "pages": 3}

    text()
    mapping()

faxplus_returns()
"""


@pytest.mark.skipif(not AIRFLOW_3, reason="AirflowDeployment.dag_runs reads Airflow 3's XComModel")
def test_dag_runs_reads_a_plain_string_xcom_and_a_mapping(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "faxplus_returns.py").write_text(_RETURNS)
    home = AirflowHome.create(dags_folder=dags, path=tmp_path / "home")
    run = home.dags_test("faxplus_returns")
    assert run.succeeded, run.output[-3000:]
    # Read without starting anything: dag_runs only queries the home's database.
    [found] = AirflowDeployment(home).dag_runs("faxplus_returns")
    assert found["state"] == "success"
    assert sorted(found["xcom"], key=str) == sorted(["sent: 3 pages", {"fax_id": "f1", "pages": 3}], key=str)
