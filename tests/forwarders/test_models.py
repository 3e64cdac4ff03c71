"""ForwardEvent rules and outbox serialisation; SendResult's closed reason set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from halo_proxy.forwarders.models import REASONS, ForwardEvent, InvalidEvent, SendResult, too_old


def test_json_round_trip_keeps_every_field(make_event):
    event = make_event(event_time=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))))
    restored = ForwardEvent.from_json(event.to_json())
    assert restored == event
    assert restored.event_time.utcoffset() == timedelta(hours=1)


def test_json_omits_unknown_values_and_carries_a_version(now):
    event = ForwardEvent(kind="lead", event_id="e1", event_time=now)
    data = orjson.loads(event.to_json())
    assert data == {"v": 1, "kind": "lead", "event_id": "e1", "event_time": now.isoformat()}


def test_from_json_ignores_keys_of_a_newer_version(now):
    raw = orjson.dumps({"v": 2, "kind": "lead", "event_id": "e1", "event_time": now.isoformat(), "new": 1})
    assert ForwardEvent.from_json(raw).event_id == "e1"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        orjson.dumps({"kind": "lead", "event_time": "2026-01-01T00:00:00+00:00"}),
        orjson.dumps({"kind": "lead", "event_id": "e", "event_time": "yesterday"}),
        orjson.dumps({"kind": "lead", "event_id": "e", "event_time": "2026-01-01T00:00:00"}),
        orjson.dumps({"kind": "refund", "event_id": "e", "event_time": "2026-01-01T00:00:00+00:00"}),
    ],
)
def test_from_json_rejects_bad_rows(raw):
    with pytest.raises(InvalidEvent):
        ForwardEvent.from_json(raw)


@pytest.mark.parametrize(
    "overrides",
    [
        {"kind": "signup"},
        {"event_id": ""},
        {"event_id": "   "},
        {"event_time": datetime(2026, 1, 1)},
        {"fbclid_seen_at": datetime(2026, 1, 1)},
        {"value": "10"},
        {"value": True},
        {"ad_user_data": "yes"},
    ],
)
def test_event_rules(make_event, overrides):
    with pytest.raises(InvalidEvent):
        make_event(**overrides)


def test_event_is_frozen(make_event):
    event = make_event()
    with pytest.raises(AttributeError):
        event.email = "other@example.com"


def test_send_result_reason_must_be_in_the_closed_set():
    assert SendResult("retry", "http_429", 3.0).retry_after == 3.0
    with pytest.raises(ValueError):
        SendResult("retry", "HTTP 429 from 1.2.3.4")
    with pytest.raises(ValueError):
        SendResult("later", "ok")


def test_reasons_are_label_safe():
    assert all(reason.isascii() and reason.replace("_", "").isalnum() and reason.islower() for reason in REASONS)
    assert {"google_invalid_argument", "google_resource_exhausted", "meta_code_100", "too_old"} <= REASONS


def test_too_old(now):
    event = ForwardEvent(kind="lead", event_id="e", event_time=now - timedelta(days=8))
    result = too_old(event, now, timedelta(days=7))
    assert result == SendResult("permanent", "too_old", detail=result.detail)
    assert too_old(event, now, timedelta(days=9)) is None
    assert too_old(ForwardEvent(kind="lead", event_id="e", event_time=now), now.astimezone(UTC),
                   timedelta(hours=1)) is None
