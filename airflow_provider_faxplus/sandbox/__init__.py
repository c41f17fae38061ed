"""A local Fax.Plus sandbox: the two outbox operations of the spec over real HTTP, no account needed.

Needs the ``sandbox`` extra on Airflow 2.11 (``pip install "airflow-provider-faxplus[sandbox]"``);
Airflow 3 already ships Starlette and uvicorn.
"""

from __future__ import annotations

try:
    from airflow_provider_faxplus.sandbox.server import DEFAULT_TOKEN, SandboxClient, SandboxServer
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    if exc.name not in ("starlette", "uvicorn"):
        raise
    raise ModuleNotFoundError(
        f"the Fax.Plus sandbox needs {exc.name}: pip install 'airflow-provider-faxplus[sandbox]'",
        name=exc.name,
    ) from exc

__all__ = ["DEFAULT_TOKEN", "SandboxClient", "SandboxServer"]
