"""Shared fixtures for the forwarder tests.

- `now`: a fixed aware time the events are built around (real wall-clock time, so the fakes' age checks agree).
- `make_event(**overrides)`: a fully populated `ForwardEvent` one hour before `now`.
- `session`: an `aiohttp.ClientSession` closed after the test.
- `platform` (parametrized over the four platforms): a `Platform` with the module, a started fake and settings
  pointing at it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from halo_proxy.config import Ga4Settings, GoogleAdsSettings, MetaSettings, TikTokSettings
from halo_proxy.forwarders import ga4, google_ads, meta, tiktok
from halo_proxy.forwarders.models import ForwardEvent
from tests.fakes.platforms import FakeDataManager, FakeGa4, FakeMeta, FakePlatform, FakeTikTok, serve


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=250_000)


@pytest.fixture
def make_event(now: datetime) -> Callable[..., ForwardEvent]:
    def make(**overrides: Any) -> ForwardEvent:
        fields: dict[str, Any] = dict(
            kind="order",
            event_id="evt-0001",
            event_time=now - timedelta(hours=1),
            value=1499.5,
            currency="CZK",
            order_id="ORD-1001",
            email="john_smith@gmail.com",
            phone="+16505551212",
            first_name="John",
            last_name="Smith",
            city="New York",
            region="CA",
            postal_code="94035-1234",
            country="US",
            external_id="Customer-42",
            client_ip="2001:db8::1",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0",
            fbp="fb.1.1596403881668.1116446470",
            fbclid="IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk",
            fbclid_seen_at=now - timedelta(days=1),
            gclid="Cj0KCQiA-test_gclid",
            ttclid="E.C.P.test-ttclid",
            ttp="2F7h37YkS1j57AYSKTI7IHhJPYH",
            ga_client_id="1234567890.1700000000",
            session_id="sess-abc",
            event_source_url="https://shop.example/checkout/thanks",
            ad_user_data=True,
            ad_personalization=True,
        )
        fields.update(overrides)
        return ForwardEvent(**fields)

    return make


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@dataclass
class Platform:
    name: str
    module: Any
    fake: FakePlatform
    settings: Any


def _meta(base: str, fake: FakeMeta) -> MetaSettings:
    return MetaSettings(pixel_id=fake.pixel_id, access_token=fake.access_token, base_url=base)


def _ga4(base: str, fake: FakeGa4) -> Ga4Settings:
    return Ga4Settings(measurement_id=fake.measurement_id, api_secret=fake.api_secret, base_url=base)


def _gads(base: str, fake: FakeDataManager) -> GoogleAdsSettings:
    return GoogleAdsSettings(account_id=fake.account_id, conversion_action_id=fake.conversion_action_id,
                             access_token=fake.access_token, base_url=base)


def _tiktok(base: str, fake: FakeTikTok) -> TikTokSettings:
    return TikTokSettings(pixel_code=fake.pixel_code, access_token=fake.access_token, base_url=base)


PLATFORMS: dict[str, tuple[Any, Callable[[], FakePlatform], Callable[[str, Any], Any]]] = {
    "meta": (meta, FakeMeta, _meta),
    "ga4": (ga4, FakeGa4, _ga4),
    "google_ads": (google_ads, FakeDataManager, _gads),
    "tiktok": (tiktok, FakeTikTok, _tiktok),
}


async def start_platform(name: str, aiohttp_server: Any) -> Platform:
    module, fake_cls, settings_for = PLATFORMS[name]
    fake = fake_cls()
    base = await serve(aiohttp_server, fake)
    return Platform(name, module, fake, settings_for(base, fake))


@pytest.fixture(params=list(PLATFORMS))
async def platform(request: pytest.FixtureRequest, aiohttp_server: Any) -> Platform:
    return await start_platform(request.param, aiohttp_server)
