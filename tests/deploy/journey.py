"""A short visitor journey through a real proxy process: new visitors from several channels, a returning one
with a new campaign, a visitor whose consent is denied, a page whose origin is down, a Range request, signed leads
and orders matched to their sessions."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

SECRET = "whsec-deploy-0123456789abcdef"
SHOP, NEWS, GONE = "shop.localhost", "news.localhost", "gone.localhost"
BROWSER = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Dest": "document",
           "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 "
                         "Safari/537.36"}
LANDINGS = ("/page?utm_source=google&utm_medium=cpc&utm_campaign=summer&gclid=Cj0-deploy",
            "/page?fbclid=IwAR-deploy",
            "/page")


def write_config(path: Path, upstream_port: int, closed_port: int, meta=None, extra_server: str = "") -> None:  # type: ignore[no-untyped-def]
    """shop (consent granted unless told, Meta forwarding when `meta` is a fake), news (consent denied unless
    told) and gone (its origin refuses connections)."""
    forwarders = ""
    if meta is not None:
        forwarders = (f"    forwarders:\n      meta: {{pixel_id: \"{meta.pixel_id}\", access_token: {meta.access_token}, "
                      f"base_url: \"{meta.base}\"}}\n")
    path.write_text(f"""
server:
  outbox: {{poll_s: 0.1, send_timeout_s: 2, lease_s: 5, backoff_base_s: 0.1, backoff_cap_s: 0.5}}
  stop: {{drain_s: 0}}
{extra_server}
tenants:
  - id: shop
    hosts: [{SHOP}]
    upstream: http://127.0.0.1:{upstream_port}
    webhook_secret: {SECRET}
{forwarders}  - id: news
    hosts: [{NEWS}]
    upstream: http://127.0.0.1:{upstream_port}
    consent: {{unknown: denied}}
  - id: gone
    hosts: [{GONE}]
    upstream: http://127.0.0.1:{closed_port}
    timeouts: {{connect_s: 1, read_s: 1}}
""")


def signature(body: bytes) -> str:
    t = int(time.time())
    return f"t={t},v1={hmac.new(SECRET.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


@dataclass
class Journey:
    base: str
    lead_base: str | None = None  # another replica for the conversions, when given
    cookies: list[str] = field(default_factory=list)
    round: int = 0

    async def _get(self, session: aiohttp.ClientSession, host: str, path: str, **headers: str) -> aiohttp.ClientResponse:
        async with session.get(f"{self.base}{path}", headers={"Host": host, **BROWSER, **headers}) as resp:
            await resp.read()
            return resp

    async def visitors(self) -> list[str]:
        """One new visitor per landing (a fresh connection and no cookie each), then the first returns with a new
        campaign. Returns the new visitors' cookie values."""
        made: list[str] = []
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            for landing in LANDINGS:
                resp = await self._get(session, SHOP, f"{landing}&r={self.round}" if "?" in landing else landing)
                assert resp.status == 200, resp.status
                made.append(resp.cookies["_halo"].value)
            resp = await self._get(session, SHOP, f"/page?utm_source=newsletter&utm_medium=email&r={self.round}",
                                   Cookie=f"_halo={made[0]}")
            assert resp.status == 200
        self.cookies += made
        return made

    async def others(self) -> None:
        """A visitor of the consent-denied tenant, a page whose origin is down (502) and a Range request."""
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            resp = await self._get(session, NEWS, "/page?utm_source=twitter&utm_medium=social")
            assert resp.status == 200 and "_halo" not in resp.cookies
            resp = await self._get(session, GONE, "/page")
            assert resp.status == 502, resp.status
            resp = await self._get(session, SHOP, "/page", Range="bytes=0-10")
            assert resp.status in (200, 206)

    async def convert(self, session_cookie: str, n: int) -> list[dict]:
        """A lead and an order of the visitor whose cookie this is; returns both answers."""
        base = self.lead_base or self.base
        answers = []
        async with aiohttp.ClientSession() as session:
            for route, payload in (
                ("lead", {"email": f"lead{n}@example.com", "session_id": session_cookie, "value": 10 + n,
                          "event_id": f"deploy-lead-{n}", "consent_marketing": True}),
                ("order", {"order_id": f"deploy-order-{n}", "value": 100 + n, "session_id": session_cookie}),
            ):
                body = json.dumps(payload).encode()
                headers = {"Host": SHOP, "Content-Type": "application/json", "X-Halo-Signature": signature(body)}
                async with session.post(f"{base}/_halo/webhook/{route}", data=body, headers=headers) as resp:
                    answer = await resp.json()
                    assert resp.status == 201, (resp.status, answer)
                    answers.append(answer)
        return answers
