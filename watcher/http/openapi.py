"""`GET /openapi.json`: the OpenAPI 3.1 document, built from the route table and the pydantic models.

Nothing here is written twice: bodies and query parameters are the models that validate requests, the
operations are `v1.routes.ROUTES`, and the names a client may pick (workspaces, webhooks) and whether a bearer
token is required come from the running configuration. A test runs schemathesis against this document.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from watcher import __version__
from watcher.config import Settings
from watcher.http.problems import PROBLEM_TYPE
from watcher.http.v1.models import MAX_DELIVERY_ID, ProblemOut
from watcher.http.v1.routes import ROUTES, Route
from watcher.ids import UUID_PATTERN

_REF = "#/components/schemas/{model}"
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "job_id": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
    "delivery_id": {"type": "integer", "minimum": 1, "maximum": MAX_DELIVERY_ID},
    "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"},
}
_PROBLEM_TEXT = {
    400: "A bad field, named in `errors`, malformed JSON or a wrong Content-Type",
    401: "Missing or wrong bearer token",
    403: "The client lacks the scope this route needs, or registers in a workspace it may not use",
    404: "Unknown job or delivery",
    409: "The request conflicts with the current state; `detail` says how",
    413: "Body over api.max_body_bytes",
    429: "The client is over its rate_limit_per_s; retry after `Retry-After` seconds",
    503: "The store is unavailable (an outage); retry after `Retry-After` seconds",
    507: "Registering would take the watcher past api.max_watches",
}
# Where one status means different things on different operations (keyed by operationId).
_OPERATION_TEXT: dict[str, dict[int, str]] = {
    "create_watch": {409: "The watch was deleted while it was being registered; register it again"},
    "retry_delivery": {409: "The delivery is not dead (or stopped being dead meanwhile)"},
    "retry_deliveries": {404: "No webhook of that name"},
    "test_webhook": {404: "No webhook of that name"},
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}
# The open endpoints of `api.py`: small hand-written bodies, no models behind them.
_JSON = "application/json"
_OPEN: dict[str, dict[str, Any]] = {
    "/healthz": {"summary": "Liveness", "codes": {200: _JSON}},
    "/readyz": {"summary": "Readiness: store reachable and loops running", "codes": {200: _JSON, 503: _JSON}},
    "/metrics": {"summary": "Prometheus metrics", "codes": {200: "text/plain"}},
    "/openapi.json": {"summary": "This document", "codes": {200: _JSON}},
}


@functools.cache
def _components() -> dict[str, Any]:
    """Every model's JSON Schema under `components.schemas`, requests in validation mode."""
    pairs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (ProblemOut, "serialization")
    ]
    for r in ROUTES:
        if r.body is not None:
            pairs.append((r.body, "validation"))
        pairs += [(m, "serialization") for m in r.responses.values() if m is not None]
    _, defs = models_json_schema(list(dict.fromkeys(pairs)), ref_template=_REF)
    schemas = dict(defs.get("$defs", {}))
    # A batch takes any item and answers a bad one per item (200, `invalid`): the schema says so, while
    # still naming the shape an item should have.
    schemas["BatchCreate"]["properties"]["watches"]["items"] = {
        "anyOf": [{"$ref": _REF.format(model="WatchCreate")}, {}],
        "description": "A WatchCreate; anything else is answered in the 200 as `invalid` with its errors.",
    }
    return schemas


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop the null branch of an optional field."""
    branches = schema.get("anyOf")
    if isinstance(branches, list):
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            return {**rest[0], **merged}
    return {k: v for k, v in schema.items() if k != "title"}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        prop = _without_null(dict(prop))
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop.pop("description")
        out.append(param)
    return out


def _problem(status: int, operation: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _OPERATION_TEXT.get(operation, {}).get(status) or _PROBLEM_TEXT[status],
        "content": {PROBLEM_TYPE: {"schema": {"$ref": _REF.format(model="ProblemOut")}}},
    }
    if status in (429, 503):
        out["headers"] = _RETRY_AFTER
    return out


def _operation(r: Route, settings: Settings) -> dict[str, Any]:
    api = settings.api
    secured = api.has_auth()
    op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__, "responses": {}}
    if r.handler.__doc__:
        op["description"] = r.handler.__doc__.strip()
    params = [
        {"name": p, "in": "path", "required": True, "schema": _PATH_PARAMS[p]}
        for p in _PATH_PARAMS
        if "{" + p + "}" in r.path
    ]
    if r.query is not None:
        params += _query_parameters(r.query)
    if params:
        op["parameters"] = params
    if r.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {_JSON: {"schema": {"$ref": _REF.format(model=r.body.__name__)}}},
        }
    for status, model in sorted(r.responses.items()):
        resp: dict[str, Any] = {
            "description": model.__doc__.splitlines()[0] if model and model.__doc__ else ""
        }
        if model is not None:
            resp["content"] = {_JSON: {"schema": {"$ref": _REF.format(model=model.__name__)}}}
        op["responses"][str(status)] = resp
    errors = {400, 503, *r.errors}
    if r.body is not None:
        errors.add(413)
    if secured:
        errors.add(401)
        op["security"] = [{"bearer": []}]
    if api.clients:
        errors.add(403)
    if any(c.rate_limit_per_s is not None for c in api.clients):
        errors.add(429)
    for status in sorted(errors):
        op["responses"][str(status)] = _problem(status, op["operationId"])
    return op


def _name_enums(schemas: dict[str, Any], settings: Settings) -> None:
    """Publish the configured workspace and webhook names, the only ones a registration may use."""
    props = schemas["WatchCreate"]["properties"]
    workspaces = [settings.upstream.workspace_slug, *settings.upstream.workspaces]
    props["workspace"]["anyOf"][0]["enum"] = workspaces
    hooks = [w.name for w in settings.webhooks]
    items = props["webhooks"]["anyOf"][0]
    allowed: dict[str, Any] = {"type": "string", "enum": hooks} if hooks else {"not": {}}
    items["items"] = allowed
    if not settings.callbacks.enabled:
        # Off: any callback is a 400 naming `callback` (SPEC §13), so the document allows none.
        props["callback"] = {"type": "null", "default": None, "description": "Callbacks are off here."}


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this daemon as configured by `settings`."""
    secured = settings.api.has_auth()
    schemas = copy.deepcopy(_components())
    _name_enums(schemas, settings)
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r, settings)
    for path, spec in _OPEN.items():
        paths[path] = {
            "get": {
                "summary": spec["summary"],
                "operationId": path.strip("/").replace(".", "_"),
                "responses": {
                    str(code): {"description": "", "content": {ctype: {"schema": {}}}}
                    for code, ctype in spec["codes"].items()
                },
            }
        }
    components: dict[str, Any] = {"schemas": schemas}
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "job-watcher",
            "version": __version__,
            "description": "Watch Oration jobs until they finish and deliver signed webhooks (SPEC §7).",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": components,
    }
