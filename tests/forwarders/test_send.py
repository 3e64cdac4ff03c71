"""`send` against the fake platforms in every answer mode, for all four platforms."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from tests.fakes.platforms import HANG, OK, PERMANENT, RATE_LIMITED, SERVER_ERROR, TRANSIENT
from tests.forwarders.conftest import start_platform

# mode -> platform -> (outcome, reason)
EXPECTED = {
    OK: {"meta": ("ok", "ok"), "ga4": ("ok", "ok"), "google_ads": ("ok", "ok"), "tiktok": ("ok", "ok")},
    RATE_LIMITED: {"meta": ("retry", "meta_throttled"), "ga4": ("retry", "http_429"),
                   "google_ads": ("retry", "google_resource_exhausted"), "tiktok": ("retry", "http_429")},
    SERVER_ERROR: {"meta": ("retry", "http_5xx"), "ga4": ("retry", "http_5xx"),
                   "google_ads": ("retry", "google_internal"), "tiktok": ("retry", "http_5xx")},
    TRANSIENT: {"meta": ("retry", "meta_transient"), "ga4": ("retry", "http_5xx"),
                "google_ads": ("retry", "google_unavailable"), "tiktok": ("retry", "tiktok_rate_limited")},
    PERMANENT: {"meta": ("permanent", "meta_code_100"), "ga4": ("permanent", "http_4xx"),
                "google_ads": ("permanent", "google_invalid_argument"), "tiktok": ("permanent", "auth")},
}


@pytest.mark.parametrize("mode", list(EXPECTED))
async def test_send_in_each_mode(platform, session, make_event, mode):
    platform.fake.set_mode(mode)
    result = await platform.module.send(session, platform.settings, [make_event()], timeout=5)
    assert (result.outcome, result.reason) == EXPECTED[mode][platform.name], result
    assert platform.fake.rejected == []
    assert [x.answer for x in platform.fake.exchanges] == [mode]
    if mode == RATE_LIMITED:
        assert result.retry_after == platform.fake.retry_after_s
    for secret in _secrets(platform.settings):
        assert secret not in result.detail


def _secrets(settings):
    return [getattr(settings, name) for name in ("access_token", "api_secret") if hasattr(settings, name)]


async def test_hang_becomes_a_timeout_retry(platform, session, make_event):
    platform.fake.set_mode(HANG)
    result = await platform.module.send(session, platform.settings, [make_event()], timeout=0.2)
    assert (result.outcome, result.reason) == ("retry", "timeout")
    assert len(platform.fake.exchanges) == 1


async def test_queued_modes_then_ok(platform, session, make_event):
    platform.fake.answer(SERVER_ERROR, RATE_LIMITED)
    outcomes = []
    for _ in range(3):
        result = await platform.module.send(session, platform.settings, [make_event()], timeout=5)
        outcomes.append(result.outcome)
    assert outcomes == ["retry", "retry", "ok"]
    assert [x.answer for x in platform.fake.exchanges] == [SERVER_ERROR, RATE_LIMITED, OK]
    # A retry resends the very same events (same ids, same times), so the platform can deduplicate.
    sent = [platform.fake.event_items(x.body) for x in platform.fake.exchanges]
    assert sent[0] == sent[1] == sent[2]


async def test_answer_then_sets_the_default(platform, session, make_event):
    platform.fake.answer(OK, then=PERMANENT)
    first = await platform.module.send(session, platform.settings, [make_event()], timeout=5)
    second = await platform.module.send(session, platform.settings, [make_event()], timeout=5)
    assert (first.outcome, second.outcome) == ("ok", "permanent")


async def test_wrong_credential(platform, session, make_event):
    field = "api_secret" if platform.name == "ga4" else "access_token"
    settings = replace(platform.settings, **{field: "wrong"})
    result = await platform.module.send(session, settings, [make_event()], timeout=5)
    expected = {"meta": ("permanent", "meta_code_190"), "ga4": ("ok", "ok"),  # GA4 drops it silently
                "google_ads": ("permanent", "google_unauthenticated"), "tiktok": ("permanent", "auth")}
    assert (result.outcome, result.reason) == expected[platform.name]
    assert [x.answer for x in platform.fake.exchanges] == ["unauthorized"]
    assert "wrong" not in result.detail


async def test_wait_for_events(platform, session, make_event):
    await platform.module.send(session, platform.settings, [make_event(), make_event(event_id="e2")], timeout=5)
    events = await platform.fake.wait_for_events(2, within=1)
    assert len(events) == 2


async def test_refused_connection_is_a_connect_retry(session, make_event, aiohttp_server):
    """No connection was made, so the request cannot have arrived: safe to resend on every platform."""
    platform = await start_platform("meta", aiohttp_server)
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = replace(platform.settings, base_url=f"http://127.0.0.1:{port}")
    result = await platform.module.send(session, settings, [make_event()], timeout=5)
    assert (result.outcome, result.reason) == ("retry", "connect")
    assert platform.settings.access_token not in result.detail


async def test_a_full_batch_is_accepted(platform, session, make_event):
    events = [make_event(event_id=f"evt-{i}", order_id=f"ORD-{i}") for i in range(platform.module.MAX_BATCH)]
    [batch] = platform.module.batches(events)
    result = await platform.module.send(session, platform.settings, batch, timeout=30)
    assert result.outcome == "ok", result
    assert platform.fake.rejected == []
    assert len(platform.fake.events) == platform.module.MAX_BATCH
