"""The sandbox's HTTP face, assembled from one route module per resource: ``outbox`` (the two operations
of the spec), ``send``, ``records`` (fax records, files, reports) under ``/v3``, and ``control`` under
``/_sandbox``; ``layer`` logs requests and injects faults.

Behaviour of the outbox operations and where it comes from (see also the README's sandbox section):

- spec (outbox.openapi.yaml): paths, the ``Outbox`` schema and its datetime formats, 200/204 on
  success, 400 with an ``Error`` body for bad input (``invalid_user_id``, a PUT body that is not
  ``{"comment": <string>}``), 500 ``internal_server_error``;
- Fax.Plus docs: Bearer tokens with per-operation scopes, the ``x-fax-clientid`` header for OAuth2
  clients, faxes leaving the outbox once sent, ids briefly unknown right after submission;
- HTTP (RFC 9110 / 6750): 405 with ``Allow``, 401 with ``WWW-Authenticate: Bearer``, HEAD answered like
  GET without a body and without counting as a poll, 415 for a PUT body that is not JSON, 413 for a body
  over the limit (checked after auth, from Content-Length and while reading), no slash redirects;
- assumptions: 401 ``invalid_token`` / 403 ``insufficient_scope``; a fax that left the outbox answers
  404 ``fax_not_found`` (or 400, configurable); a PUT on a fax in ``sending`` answers 409
  ``fax_not_modifiable`` (configurable); a PUT without a body modifies nothing (204); the body limit
  (``max_body_bytes``, 2 MiB).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from airflow_provider_faxplus.sandbox import control, outbox, records, send
from airflow_provider_faxplus.sandbox.common import API_PREFIX, CONTROL_PREFIX, error
from airflow_provider_faxplus.sandbox.layer import ApiLayer, ASGIApp
from airflow_provider_faxplus.sandbox.state import SandboxState

__all__ = ["API_PREFIX", "CONTROL_PREFIX", "create_app"]


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, "not_found", f"No route for {request.method} {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    # RFC 9110 15.5.6: list every method of the path, across the routes that share it.
    allowed: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.path_regex.match(request.scope["path"]) and route.methods:
            allowed |= route.methods
    return error(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed on {request.url.path}",
        {"Allow": ", ".join(sorted(allowed))},
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    return error(500, "internal_server_error", "An unexpected error happened, please contact support")


def create_app(state: SandboxState) -> ASGIApp:
    """Assembles the route modules; none of them imports this one."""
    routes = [*send.routes(), *outbox.routes(), *records.routes(), *control.routes()]
    app = Starlette(
        routes=routes, exception_handlers={404: _not_found, 405: _not_allowed, 500: _server_error}
    )
    # A path with a trailing slash is another path: answered 404, not redirected (before auth) to ours.
    app.router.redirect_slashes = False
    app.state.sandbox = state
    return ApiLayer(app, state)
