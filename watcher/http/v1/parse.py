"""Reading a `/v1` request: path parameters, query strings and bodies as validated values, every bad field a
400 problem that names it (`Problem`, rendered by `watcher.http.problems`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from watcher.http.problems import Problem, field_problem
from watcher.http.state import STATE_KEY
from watcher.http.v1.models import MAX_DELIVERY_ID, field_errors
from watcher.ids import is_uuid


def query(request: web.Request, model: type[BaseModel]) -> Any:
    """The query string validated by `model`; a 400 problem naming every bad parameter."""
    raw = {key: request.query.get(key) for key in request.query}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = field_errors(exc)
        raise Problem(
            400, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        ) from None


def job_id(request: web.Request) -> str:
    """The `{job_id}` of the path, lower-cased; a 400 problem unless it is a UUID."""
    raw = request.match_info["job_id"]
    if not is_uuid(raw):  # not `match`: `$` also matches before a trailing newline
        raise field_problem("job_id", "must be a UUID like 5135bfe3-b2c7-41f3-a44f-f4b58e7384df")
    return raw.lower()


def delivery_id(request: web.Request) -> int:
    """The `{delivery_id}` of the path; a 400 problem unless it is a positive integer in range."""
    raw = request.match_info["delivery_id"]
    # isascii: str.isdigit also accepts digits of other scripts, and superscripts that int() refuses.
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and 0 < int(raw) <= MAX_DELIVERY_ID:
        return int(raw)
    raise field_problem("delivery_id", f"must be an integer from 1 to {MAX_DELIVERY_ID}")


def join(prefix: str, field: str) -> str:
    """`prefix.field`, or `field` without a prefix (a batch item's field names)."""
    return f"{prefix}.{field}" if prefix else field


def summary(errors: list[dict[str, str]]) -> str:
    """The first error, and how many more: the `detail` of a 400 problem."""
    first = f"{errors[0]['field']}: {errors[0]['message']}"
    return first if len(errors) == 1 else f"{first} (and {len(errors) - 1} more)"


def max_body(request: web.Request) -> int:
    """`api.max_body_bytes`: the largest body a request may have."""
    return request.app[STATE_KEY].settings.api.max_body_bytes
