"""The sandbox's copy of the spec (outbox.openapi.yaml, Fax.Plus's text) merged with the operations
this project adds (sending.openapi.yaml, records.openapi.yaml), read once: the control API is checked
against it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

# Both come with apache-airflow (on 2.11 and 3.x alike): no dependency of the package's own.
import yaml
from jsonschema import Draft4Validator

SPEC_PATH = Path(__file__).with_name("outbox.openapi.yaml")
SENDING_PATH = Path(__file__).with_name("sending.openapi.yaml")
RECORDS_PATH = Path(__file__).with_name("records.openapi.yaml")


@cache
def document() -> dict[str, Any]:
    """The whole API the sandbox serves: the spec plus the sending and record operations (new paths,
    methods and schemas only: nothing of the spec is replaced)."""
    with SPEC_PATH.open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = yaml.safe_load(handle)
    for extra in (SENDING_PATH, RECORDS_PATH):
        with extra.open(encoding="utf-8") as handle:
            added: dict[str, Any] = yaml.safe_load(handle)
        for path, item in added["paths"].items():
            methods = loaded["paths"].setdefault(path, {})
            assert not set(item) & set(methods), f"{path}: {extra.name} would replace the spec's"
            methods.update(item)
        schemas = loaded["components"]["schemas"]
        assert not set(added["components"]["schemas"]) & set(schemas)
        schemas.update(added["components"]["schemas"])
    return loaded


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """The schema with every local ``$ref`` inlined (the spec has no recursive schemas)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target, root)
        return {key: _resolve(value, root) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, root) for item in node]
    return node


@cache
def _validator(name: str) -> Draft4Validator:
    # OpenAPI 3.0 schema objects are a JSON Schema draft 4 subset here (no nullable, no discriminator).
    spec = document()
    return Draft4Validator(_resolve(spec["components"]["schemas"][name], spec))


def schema_errors(name: str, value: Any) -> list[str]:
    """What in ``value`` breaks the spec's schema ``name``, each as ``path: message``."""
    found = []
    for err in sorted(_validator(name).iter_errors(value), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(part) for part in err.absolute_path) or "(the object)"
        found.append(f"{where}: {err.message}")
    return found


def outbox_statuses() -> tuple[str, ...]:
    return tuple(document()["components"]["schemas"]["OutboxStatus"]["enum"])
