"""Start the sandbox, point a faxplus connection at it, and show a FaxPlusHook round trip."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="faxplus-demo-"))

from airflow_provider_faxplus.hooks.faxplus import FaxPlusHook
from airflow_provider_faxplus.sandbox import SandboxServer


def main() -> None:
    with SandboxServer() as sandbox:
        assert sandbox.client is not None
        print(f"sandbox: {sandbox.base_url}")
        os.environ["AIRFLOW_CONN_FAXPLUS_DEFAULT"] = sandbox.connection_json(initial_backoff=0.2)
        fax_id = sandbox.client.create_fax(tags=["demo"])["id"]
        hook = FaxPlusHook()
        print(f"test_connection: {hook.test_connection()}")
        record = hook.get_outbox_fax(fax_id)
        print(
            f"GET  {fax_id}: status={record.status} submitted={record.submit_time} comment={record.comment}"
        )
        sandbox.client.add_fault(status=503, times=2)
        hook.update_outbox_fax(fax_id, comment="tagged by the demo")
        print("PUT  comment='tagged by the demo' (after riding out two injected 503s)")
        record = hook.get_outbox_fax(fax_id)
        print(f"GET  {fax_id}: status={record.status} comment={record.comment}")
        statuses = [f"{entry['method']} {entry['status']}" for entry in sandbox.client.requests()]
        print(f"requests the sandbox saw: {', '.join(statuses)}")
        hook.close()


if __name__ == "__main__":
    main()
