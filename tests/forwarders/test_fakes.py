"""The fakes themselves: each refuses requests that break the documented schema, and says why.

Every case starts from a payload the real builder produced (which the fake accepts) and breaks one rule.
"""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest

from tests.fakes.platforms import INVALID, OK, PERMANENT
from tests.forwarders.conftest import start_platform

HEX = hashlib.sha256(b"x").hexdigest()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting `path` (dotted, list indexes as numbers) to `value`; `...` deletes the key."""
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is ...:
            del node[last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return mutate


def _many(key: str, count: int) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        body[key] = [copy.deepcopy(body[key][0]) for _ in range(count)]
    return mutate


CASES = [
    # Meta
    ("meta", _set("data.0.user_data.em", ["John@Example.com"]), "64 lowercase hex"),
    ("meta", _set("data.0.user_data.em", [HEX.upper()]), "64 lowercase hex"),
    ("meta", _set("data.0.user_data.client_ip_address", HEX), "raw, not hashed"),
    ("meta", _set("data.0.user_data.client_user_agent", HEX), "raw, not hashed"),
    ("meta", _set("data.0.user_data.fbc", "IwAR2F4"), "fb.<index>.<ms>.<fbclid>"),
    ("meta", _set("data.0.user_data.client_ip_address", "not-an-ip"), "IPv4 or IPv6"),
    ("meta", _set("data.0.user_data.email", HEX), "unknown field"),
    ("meta", _set("data.0.event_time", 1_700_000_000_000), "wrong unit"),
    ("meta", _set("data.0.event_time", "1700000000"), "integer"),
    ("meta", _set("data.0.action_source", "web"), "action_source"),
    ("meta", _set("data.0.event_source_url", ...), "required for website events"),
    ("meta", _set("data.0.user_data.client_user_agent", ...), "required for website events"),
    ("meta", _set("data.0.custom_data.value", "1499.5"), "must be a number"),
    ("meta", _set("data.0.custom_data.currency", ...), "Purchase requires value and currency"),
    ("meta", _set("data.0.event_id", ""), "non-empty string"),
    ("meta", _many("data", 1001), "1 to 1000"),
    ("meta", _set("data", []), "1 to 1000"),
    ("meta", _set("access_token", "in-the-body"), "unknown field"),
    # GA4
    ("ga4", _set("timestamp_micros", 1_700_000_000_000), "wrong unit"),
    ("ga4", _set("events.0.timestamp_micros", 1_700_000_000), "wrong unit"),
    ("ga4", _set("user_data.sha256_email_address", ["john@example.com"]), "64 lowercase hex"),
    ("ga4", _set("consent.ad_user_data", "granted"), "GRANTED or DENIED"),
    ("ga4", _set("events.0.name", "Purchase-Done"), "invalid event name"),
    ("ga4", _set("events.0.params.transaction_id", ...), "transaction_id"),
    ("ga4", _set("events.0.params.currency", ...), "required with value"),
    ("ga4", _many("events", 26), "1 to 25"),
    ("ga4", _set("client_id", ...), "client_id"),
    # Data Manager
    ("google_ads", _set("events.0.eventTimestamp", "2026-03-01 12:00:00+00:00"), "RFC 3339"),
    ("google_ads", _set("events.0.eventTimestamp", 1_700_000_000), "RFC 3339"),
    ("google_ads", _set("events.0.eventTimestamp", "2026-03-01T12:00:00"), "RFC 3339"),
    ("google_ads", _set("events.0.adIdentifiers", {"gbraid": "a", "wbraid": "b"}), "must not both be set"),
    ("google_ads", _set("events.0.adIdentifiers.gclid", HEX), "raw, not hashed"),
    ("google_ads", _set("events.0.userData.userIdentifiers.0", {"emailAddress": "a@b.cz"}), "64 lowercase hex"),
    ("google_ads", _set("events.0.userData.userIdentifiers.0", {"emailAddress": HEX, "phoneNumber": HEX}),
     "exactly one"),
    ("google_ads", _set("events.0.consent.adUserData", "GRANTED"), "CONSENT_GRANTED"),
    ("google_ads", _set("encoding", ...), "encoding"),
    ("google_ads", _set("destinations.0.operatingAccount.accountType", "ADS"), "accountType"),
    ("google_ads", _set("destinations.0.productDestinationId", "customers/1/conversionActions/2"),
     "conversion action id"),
    ("google_ads", _set("events.0.currency", "czk"), "upper-case"),
    ("google_ads", _many("events", 2001), "1 to 2000"),
    # TikTok
    ("tiktok", _set("event_source", "pixel"), "event_source"),
    ("tiktok", _set("event_source_id", "OTHER"), "pixel code"),
    ("tiktok", _set("data.0.event_time", 1_700_000_000_000), "wrong unit"),
    ("tiktok", _set("data.0.user.email", "john@example.com"), "64 lowercase hex"),
    ("tiktok", _set("data.0.user.ttclid", HEX), "raw, not hashed"),
    ("tiktok", _set("data.0.user.ip", HEX), "raw, not hashed"),
    ("tiktok", _set("data.0.user.pixel_code", "x"), "unknown field"),
    ("tiktok", _many("data", 1001), "1 to 1000"),
]


@pytest.mark.parametrize("name, mutate, fragment", CASES)
async def test_fake_rejects(aiohttp_server, session, make_event, name, mutate, fragment):
    platform = await start_platform(name, aiohttp_server)
    platform.fake.set_mode(PERMANENT)  # an invalid request is refused whatever the mode
    method, url, headers, body = platform.module.build_request(platform.settings, [make_event()])
    mutate(body)
    async with session.request(method, url, headers=headers, data=io.BytesIO(orjson.dumps(body))) as response:
        await response.read()
    [exchange] = platform.fake.exchanges
    assert exchange.answer == INVALID
    assert any(fragment in problem for problem in exchange.problems), exchange.problems
    assert platform.fake.accepted == [] and platform.fake.events == []


async def test_invalid_requests_do_not_consume_queued_modes(aiohttp_server, session, make_event):
    platform = await start_platform("tiktok", aiohttp_server)
    platform.fake.answer(PERMANENT)
    method, url, headers, body = platform.module.build_request(platform.settings, [make_event()])
    async with session.post(url, headers=headers, data=b"{not json") as response:
        assert (await response.json())["code"] == 40000
    async with session.post(url, headers={"Access-Token": "tiktok-token"}, data=orjson.dumps(body)) as response:
        await response.read()  # no Content-Type: application/json
    result = await platform.module.send(session, platform.settings, [make_event()], timeout=5)
    assert result.outcome == "permanent"
    assert [x.answer for x in platform.fake.exchanges] == [INVALID, INVALID, PERMANENT]
    assert "body is not JSON" in platform.fake.exchanges[0].problems


async def test_meta_fake_refuses_a_batch_with_one_stale_event(aiohttp_server, session, make_event, now):
    platform = await start_platform("meta", aiohttp_server)
    events = [make_event(), make_event(event_id="old", event_time=now - timedelta(days=8))]
    result = await platform.module.send(session, platform.settings, events, timeout=5)
    assert (result.outcome, result.reason) == ("permanent", "meta_code_100")
    assert "older than 7 days" in platform.fake.rejected[0].problems[0]


async def test_ga4_fake_answers_2xx_to_what_it_discards(aiohttp_server, session, make_event, now):
    platform = await start_platform("ga4", aiohttp_server)
    result = await platform.module.send(session, platform.settings,
                                        [make_event(event_time=now - timedelta(hours=80))], timeout=5)
    assert result.outcome == "ok"  # which is why ga4.check screens the age first
    assert "older than 72 hours" in platform.fake.rejected[0].problems[0]
    assert platform.fake.accepted == []


async def test_fake_clock_is_settable(aiohttp_server, session, make_event, now):
    platform = await start_platform("tiktok", aiohttp_server)
    platform.fake.now = lambda: now - timedelta(days=1)  # the event now lies in the fake's future
    await platform.module.send(session, platform.settings, [make_event()], timeout=5)
    assert "in the future" in platform.fake.rejected[0].problems[0]
    platform.fake.now = lambda: now
    await platform.module.send(session, platform.settings, [make_event()], timeout=5)
    assert platform.fake.exchanges[-1].answer == OK


def test_unknown_modes_are_refused():
    from tests.fakes.platforms import FakeMeta

    fake = FakeMeta()
    with pytest.raises(ValueError):
        fake.set_mode("slow")
    with pytest.raises(ValueError):
        fake.answer(OK, "flaky")
