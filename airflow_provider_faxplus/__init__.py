"""Apache Airflow provider for the Fax.Plus REST API."""

from __future__ import annotations

__version__ = "0.1.0"
