"""The `/v1` API's request and response bodies as pydantic models: they validate and they are the OpenAPI.

Requests are validated strictly (no coercion of `"5"` into `5`, unknown fields refused) so a client's
mistake is named instead of guessed at; query strings are validated in lax mode since everything in a URL is
a string. `openapi.py` builds the published schema from these same classes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from watcher.ids import UUID_PATTERN
from watcher.statuses import FINISHED_STATUSES, UNFINISHED_STATUSES

MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_WEBHOOKS = 32
MAX_BATCH = 1000
MAX_PAGE = 1000
MAX_WATCH_S = 10 * 366 * 86400.0  # ten years: a bound, so no float can overflow a due time
MAX_DELIVERY_ID = 2**63 - 1  # SQL BIGINT

LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$"
LABEL_FILTER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}:"
NAME_PATTERN = r"^[^\x00-\x1f]{1,100}$"
# Published for the strings no other pattern bounds; `storable` is what enforces it, with a clearer message.
STORABLE_PATTERN = r"^[^\x00]*$"


def storable(value: str) -> str:
    """Refuse what no store can hold: PostgreSQL's text and jsonb have no NUL, UTF-8 no lone surrogate."""
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain a NUL character (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "lone_surrogate", "must not contain a lone surrogate (U+D800 to U+DFFF)"
        ) from None
    return value


JobId = Annotated[
    str,
    Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"}),
    AfterValidator(str.lower),
]
LabelKey = Annotated[str, Field(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[
    str,
    Field(max_length=MAX_LABEL_VALUE, json_schema_extra={"pattern": STORABLE_PATTERN}),
    AfterValidator(storable),
]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
# A documented status or verdict, or one the upstream grew (SPEC §2: `cancelled`, `upstream_expired`).
ListStatus = Annotated[
    str,
    Field(
        pattern=r"^[^\x00-\x1f\x7f]{1,64}$",
        examples=[*UNFINISHED_STATUSES, *FINISHED_STATUSES, "cancelled"],
    ),
]  # fmt: skip
DeliveryStateName = Literal["pending", "delivered", "dead"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


MAX_CALLBACK_URL = 2048
MAX_CALLBACK_HEADERS = 32
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$"
HEADER_VALUE_PATTERN = r"^[\x20-\x7e]{0,1024}$"  # visible ASCII and space: nothing that could split a header
EVENT_TYPE_PATTERN = r"^job\.[a-z][a-z0-9_]{0,31}$"


class CallbackIn(_Request):
    """Where this watch's events also go (SPEC §13): a URL the address guard allows, signed like webhooks."""

    url: str = Field(
        min_length=1,
        max_length=MAX_CALLBACK_URL,
        description="https URL (http only where callbacks.require_https is off); no internal addresses.",
    )
    events: list[Annotated[str, Field(pattern=EVENT_TYPE_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Event types sent to it; null: the default filter (terminal statuses, expired, missing).",
    )
    headers: dict[
        Annotated[str, Field(pattern=HEADER_NAME_PATTERN)],
        Annotated[str, Field(pattern=HEADER_VALUE_PATTERN)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_CALLBACK_HEADERS,
        description="Extra headers sent with every delivery (e.g. Authorization); secrets, never shown back.",
        json_schema_extra={"additionalProperties": False},
    )


class CallbackOut(BaseModel):
    """A watch's callback as the API shows it: userinfo, query and every header value masked."""

    url: str = Field(description="Scheme, host, port and path; userinfo and query shown as ********.")
    events: list[str] | None
    headers: dict[str, str] = Field(description="Header names; every value is shown as ********.")


class WatchCreate(_Request):
    """A job to watch. `workspace` defaults to `upstream.workspace_slug`, `webhooks` to every webhook."""

    job_id: JobId = Field(description="The Oration job id (a UUID); stored in lower case.")
    workspace: Name | None = Field(default=None, description="A workspace of the configuration.")
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="Free-form labels sent with every event.",
        json_schema_extra={"additionalProperties": False},
    )
    webhooks: list[Name] | None = Field(
        default=None, max_length=MAX_WEBHOOKS, description="Names of configured webhooks; null: all of them."
    )
    max_watch_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_WATCH_S,
        allow_inf_nan=False,
        description="Give up (job.expired) after this many seconds; null: polling.max_watch_s.",
    )
    callback: CallbackIn | None = Field(
        default=None,
        description="Also deliver this watch's events here (SPEC §13; 400 unless callbacks are enabled). "
        "Registering the job again with a different callback is 409.",
    )


class BatchCreate(_Request):
    """Up to 1000 registrations, each a `WatchCreate`.

    Items are validated one by one: an item that is not a valid `WatchCreate` is answered in the 200 as
    `invalid` with its errors, and sinks nothing else. So the schema accepts any item; only a body that is
    not a batch at all is a 400.
    """

    # The published items are "a WatchCreate, or anything": `openapi.py` writes that reference in.
    watches: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


class FieldError(BaseModel):
    """One bad field of a request."""

    field: str
    message: str


class ProblemOut(BaseModel):
    """An RFC 9457 problem (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class WatchOut(BaseModel):
    """A watch as the API shows it; times are RFC 3339 UTC."""

    job_id: str
    workspace: str
    state: str = Field(
        description="final if finished, else quarantined if quarantined, else the last status, else unknown"
    )
    status: str | None = Field(description="The last status the upstream reported (lower-cased).")
    final: str | None = Field(
        description="success, failed, expired, missing, or another of upstream.terminal_statuses"
    )
    labels: dict[str, str]
    webhooks: list[str] | None
    max_watch_s: float | None
    sources: list[Literal["file", "api"]]
    polls: int
    registered_at: Time
    last_polled_at: Time | None
    next_poll_at: Time | None = Field(description="null once finished")
    finished_at: Time | None
    last_error: str | None
    failures: int = Field(
        description="Unexpected exceptions while handling this watch; at 3 it is quarantined (SPEC §16)"
    )
    last_failure: str | None = Field(description="The last of those exceptions, one line")
    quarantined_at: Time | None = Field(
        description="Set while quarantined: never polled until POST /v1/watches/{job_id}/release"
    )
    callback: CallbackOut | None = Field(default=None, description="The per-watch callback, masked")


class TransitionOut(BaseModel):
    """One event of a job: a status change or the watcher's own verdict."""

    event_id: str
    type: str = Field(description="job.<status>, job.unknown, job.expired or job.missing")
    status: str | None
    previous_status: str | None
    detected_at: Time
    upstream_updated_at: str | None


class DeliveryOut(BaseModel):
    """One event on its way to one webhook."""

    id: int
    event_id: str = Field(description="Also the webhook-id header: a retry keeps it.")
    event_type: str
    job_id: str
    webhook: str
    state: DeliveryStateName
    attempts: int
    created_at: Time
    next_attempt_at: Time | None = Field(description="null unless pending")
    last_error: str | None
    delivered_at: Time | None


class WatchDetail(WatchOut):
    """A watch with its transitions and their deliveries."""

    transitions: list[TransitionOut]
    deliveries: list[DeliveryOut]


class WatchPageOut(BaseModel):
    """One page of watches; pass `next_cursor` as `cursor` for the next one."""

    watches: list[WatchOut]
    next_cursor: str | None


class DeliveryPageOut(BaseModel):
    """One page of deliveries, newest first; pass `next_cursor` as `cursor` for the next one."""

    deliveries: list[DeliveryOut]
    next_cursor: str | None


class JobTypeOut(BaseModel):
    """What the daemon learnt about one job type (SPEC §12): its finished jobs' duration quantiles."""

    workspace: str
    name: str = Field(description="The upstream job `name`.")
    samples: int = Field(description="Finished jobs in the model (its two newest windows).")
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None


class JobTypesOut(BaseModel):
    """Every job type the daemon has a duration model of, most recently finished last."""

    items: list[JobTypeOut]


class BatchItemOut(BaseModel):
    """What happened to one item of a batch."""

    index: int
    job_id: str | None
    result: Literal["created", "existing", "invalid", "forbidden"]
    errors: list[FieldError] | None = None


class BatchOut(BaseModel):
    """Per-item results, in the order of the request, and their totals."""

    results: list[BatchItemOut]
    created: int
    existing: int
    invalid: int
    forbidden: int = 0  # items for a workspace the client may not use (SPEC §14)


class DeliveryRetryOut(BaseModel):
    """The delivery, back to pending."""

    delivery: DeliveryOut


class WebhookHealthOut(BaseModel):
    """One configured webhook, or every callback endpoint together (`name` "callback"), and its breaker."""

    name: str
    format: str
    state: Literal["closed", "open", "half_open"] = Field(
        description="closed: deliveries go out; open: they wait; half_open: one probe is out. For callbacks "
        "the state of the worst callback endpoint."
    )
    consecutive_failures: int
    open_until: Time | None = Field(description="open: when the next probe may go; null when closed")
    last_error: str | None
    pending: int
    dead: int
    open_endpoints: int = Field(description="Endpoints open or half-open under this name (callbacks: many)")


class WebhookListOut(BaseModel):
    """Every configured webhook (and `callback` when callbacks are enabled) with its breaker."""

    items: list[WebhookHealthOut]


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")


class WatchListQuery(_Query):
    """Filters of `GET /v1/watches`."""

    status: ListStatus | None = Field(
        default=None, description="final, else quarantined, else last status, else unknown"
    )
    label: Annotated[str, AfterValidator(storable)] | None = Field(
        default=None,
        pattern=LABEL_FILTER_PATTERN,
        max_length=64 + MAX_LABEL_VALUE,
        description="key:value; only watches with exactly this label",
        json_schema_extra={"pattern": LABEL_FILTER_PATTERN + STORABLE_PATTERN[1:]},
    )
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    cursor: Annotated[str, AfterValidator(storable)] | None = Field(
        default=None,
        max_length=100,
        description="next_cursor of the previous page",
        json_schema_extra={"pattern": STORABLE_PATTERN},
    )

    def label_pair(self) -> tuple[str, str] | None:
        """The label filter split into (key, value)."""
        if self.label is None:
            return None
        key, _, value = self.label.partition(":")
        return key, value


class DeliveryListQuery(_Query):
    """Filters of `GET /v1/deliveries`."""

    state: DeliveryStateName | None = None
    webhook: Name | None = None
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(
        default=None, pattern=r"^[1-9][0-9]{0,18}$", description="next_cursor of the previous page"
    )

    def before(self) -> int | None:
        """The cursor as the id below which the page starts."""
        return None if self.cursor is None else int(self.cursor)


def field_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic's errors as `{"field", "message"}` with paths like `webhooks[1]` or `watches[3].job_id`."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        path, message = prefix, str(err["msg"])
        for part in err["loc"]:
            if part == "[key]":
                message = f"key: {message}"
            elif isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        out.append({"field": path or "body", "message": message})
    return out
