"""Platform-neutral values the forwarders exchange with the outbox: one conversion in, one send result out.

`ForwardEvent` carries everything any platform may use about one conversion, already normalised the way
HaloTrack stores it (email trimmed and lowercased, phone in E.164 with ``+``). Each platform module picks what
it needs and applies its own normalisation and hashing (see `normalize`). `to_json` / `from_json` give the
outbox a stable, versioned serialisation.

`SendResult` is the verdict on one platform request: ``ok``, ``retry`` (later, with the same event ids) or
``permanent`` (dead letter). `reason` is a short machine word from the closed set `REASONS`, fit for a
Prometheus label; `platform_code` keeps the platform's own error code; `detail` is a human sentence that never
holds PII, tokens or URLs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson

__all__ = [
    "KINDS",
    "OUTCOMES",
    "REASONS",
    "ForwardEvent",
    "ForwarderError",
    "InvalidEvent",
    "SendResult",
    "too_old",
]

KINDS = frozenset({"lead", "order"})
OUTCOMES = frozenset({"ok", "retry", "permanent"})

# Canonical google.rpc.Code names, as Data Manager answers them in `error.status`.
GOOGLE_STATUSES = (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)

REASONS = frozenset(
    {
        # success
        "ok", "partial",
        # transport and HTTP status
        "timeout", "network", "connect", "http_408", "http_429", "http_5xx", "http_4xx", "http_other",
        "auth", "bad_response",
        # decided before sending
        "invalid", "too_old", "no_identifiers",
        # Meta Graph API error codes
        "meta_transient", "meta_throttled", "meta_code_100", "meta_code_190", "meta_permission", "meta_error",
        # TikTok response codes
        "tiktok_rate_limited", "tiktok_server_error", "tiktok_error",
    }
    | {f"google_{status.lower()}" for status in GOOGLE_STATUSES}
)


class ForwarderError(Exception):
    """Base of every error the forwarders package raises."""


class InvalidEvent(ForwarderError, ValueError):
    """A ForwardEvent (or its stored JSON) that breaks the model's rules; the message names the field."""


_SCHEMA_VERSION = 1
_DATETIME_FIELDS = ("event_time", "fbclid_seen_at")


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardEvent:
    """One conversion to forward. Optional fields are None when unknown; every platform omits what is None.

    - `kind`: ``lead`` or ``order``.
    - `event_id`: stable across retries and shared with the browser pixels; platforms deduplicate on it.
    - `event_time`: when the conversion happened, timezone-aware.
    - `email`: trimmed and lowercased. `phone`: E.164 with ``+``.
    - `region`: state or region (Meta ``st``), `postal_code`, `country` (ISO 3166-1 alpha-2).
    - `fbc` / `fbp`: the `_fbc` / `_fbp` cookie values; `fbclid` and `fbclid_seen_at` build ``fbc`` when there is
      no cookie.
    - `ga_client_id`: the client id from the `_ga` cookie (``GA1.1.<id>`` already stripped, see
      `ga4.client_id_from_cookie`); `session_id` is the stable fallback GA4 derives a client id from.
    - `ad_user_data` / `ad_personalization`: the visitor's consent (True granted, False denied, None unknown).
    """

    kind: Literal["lead", "order"]
    event_id: str
    event_time: datetime
    value: float | None = None
    currency: str | None = None
    order_id: str | None = None
    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = None
    external_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    fbc: str | None = None
    fbp: str | None = None
    fbclid: str | None = None
    fbclid_seen_at: datetime | None = None
    gclid: str | None = None
    gbraid: str | None = None
    wbraid: str | None = None
    ttclid: str | None = None
    ttp: str | None = None
    ga_client_id: str | None = None
    session_id: str | None = None
    event_source_url: str | None = None
    ad_user_data: bool | None = None
    ad_personalization: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidEvent(f"kind must be one of {sorted(KINDS)}")
        if not isinstance(self.event_id, str) or not self.event_id.strip():
            raise InvalidEvent("event_id must be a non-empty string")
        for name in _DATETIME_FIELDS:
            value = getattr(self, name)
            if value is None and name != "event_time":
                continue
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise InvalidEvent(f"{name} must be a timezone-aware datetime")
        if self.value is not None and (isinstance(self.value, bool) or not isinstance(self.value, (int, float))):
            raise InvalidEvent("value must be a number")
        for name in ("ad_user_data", "ad_personalization"):
            if getattr(self, name) not in (None, True, False):
                raise InvalidEvent(f"{name} must be true, false or null")

    def to_json(self) -> bytes:
        """Versioned JSON for the outbox; datetimes as RFC 3339 with their offset."""
        data: dict[str, Any] = {"v": _SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            data[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ForwardEvent:
        """Inverse of `to_json`. Unknown keys (written by a newer HaloTrack) are ignored; bad values raise
        InvalidEvent."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise InvalidEvent("stored event is not JSON") from err
        if not isinstance(data, dict):
            raise InvalidEvent("stored event is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for name in _DATETIME_FIELDS:
            if isinstance(kwargs.get(name), str):
                try:
                    kwargs[name] = datetime.fromisoformat(kwargs[name])
                except ValueError as err:
                    raise InvalidEvent(f"{name} is not an ISO 8601 time") from err
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise InvalidEvent("stored event lacks a required field") from err


@dataclass(frozen=True, slots=True)
class SendResult:
    """The verdict on one request (or on one event refused before sending)."""

    outcome: Literal["ok", "retry", "permanent"]
    reason: str
    retry_after: float | None = None  # seconds, when the platform said so (a floor for the backoff)
    detail: str = ""
    status: int | None = None  # HTTP status, when there was a response
    platform_code: str | None = field(default=None)  # Meta error code, Google status, TikTok code

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.reason not in REASONS:
            raise ValueError(f"reason {self.reason!r} is not in REASONS")

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def too_old(event: ForwardEvent, now: datetime, max_age: timedelta) -> SendResult | None:
    """A permanent ``too_old`` result when the event is older than `max_age` at `now`, else None."""
    if now - event.event_time > max_age:
        hours = int((now - event.event_time).total_seconds() // 3600)
        return SendResult("permanent", "too_old", detail=f"event is {hours} h old; the platform accepts at most "
                          f"{int(max_age.total_seconds() // 3600)} h")
    return None
