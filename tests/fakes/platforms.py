"""Fake Meta CAPI, GA4 Measurement Protocol, Data Manager and TikTok Events API servers.

Each fake is a real `aiohttp.web.Application` (start it with pytest-aiohttp's `aiohttp_server`, port 0 on
127.0.0.1; `serve` does that and returns the base URL). Every request is checked against the documented schema:
path and method, where the credential goes, field names and types, hash format (64 lowercase hex where hashed,
raw where not), time units (seconds, microseconds, RFC 3339), age limits and batch limits. Every request is
recorded as an `Exchange`, with the problems found (none for a valid one) and the answer given.

How a fake answers a valid request is its mode:

    fake.set_mode(HANG)                       # every request from now on
    fake.answer(SERVER_ERROR, SERVER_ERROR)   # the next two requests, then the default mode (ok)
    fake.answer(RATE_LIMITED, then=OK)        # the next one, then `then` becomes the default

Modes: OK; RATE_LIMITED (429 with Retry-After: `fake.retry_after_s`); SERVER_ERROR (a bare 5xx); TRANSIENT (the
platform's own transient error: Meta code 2 with is_transient, Data Manager UNAVAILABLE, TikTok 40100, GA4 503);
PERMANENT (Meta code 100, Data Manager INVALID_ARGUMENT, TikTok 40001, GA4 400); HANG (never answers until the
server shuts down). An invalid request gets the platform's own refusal whatever the mode and does not consume
a queued mode. GA4, like the real service, answers 2xx even to an invalid payload: look at `fake.rejected`.

Reading what arrived: `fake.exchanges` (everything), `fake.accepted` (valid and answered ok), `fake.rejected`
(with problems), `fake.events` (the event objects of accepted requests). `await fake.wait_for_events(n)` and
`await fake.wait_for_exchanges(n)` wait on arrival (at most `within` seconds, 5 by
default), never on a sleep. `fake.now` is the clock the age checks use.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import re
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "HANG", "MODES", "OK", "PERMANENT", "RATE_LIMITED", "SERVER_ERROR", "TRANSIENT",
    "Exchange", "FakeDataManager", "FakeGa4", "FakeMeta", "FakePlatform", "FakeTikTok", "serve",
]

OK = "ok"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TRANSIENT = "transient"
PERMANENT = "permanent"
HANG = "hang"
MODES = (OK, RATE_LIMITED, SERVER_ERROR, TRANSIENT, PERMANENT, HANG)

# Answers that are not a mode: the request was invalid, or its credential was wrong.
INVALID = "invalid"
UNAUTHORIZED = "unauthorized"

HANG_LIMIT_S = 300.0  # a hanging handler gives up after this even if the server is never shut down

_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_ANY_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_CURRENCY_RE = re.compile(r"^[A-Za-z]{3}$")
_DIGITS_RE = re.compile(r"^\d+$")


@dataclass
class Exchange:
    """One request a fake received and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the decoded JSON, or None
    problems: list[str] = field(default_factory=list)
    answer: str = OK  # a mode, INVALID or UNAUTHORIZED

    @property
    def valid(self) -> bool:
        return not self.problems


async def serve(aiohttp_server: Callable[..., Any], fake: FakePlatform) -> str:
    """Starts `fake` on 127.0.0.1, port 0; returns its base URL (no trailing slash)."""
    server = await aiohttp_server(fake.app, host="127.0.0.1", port=0)
    return str(server.make_url("/")).rstrip("/")


# -- schema helpers: each returns a problem sentence or None -----------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hashed(where: str, value: Any, allow_list: bool = True) -> str | None:
    values = value if allow_list and isinstance(value, list) else [value]
    if not values:
        return f"{where}: empty list"
    for item in values:
        if not isinstance(item, str) or not _HEX64_RE.match(item):
            return f"{where}: must be SHA-256 as 64 lowercase hex characters"
    return None


def _raw(where: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{where}: must be a non-empty string"
    if _ANY_HEX64_RE.match(value):
        return f"{where}: must be sent raw, not hashed"
    return None


def _ip(where: str, value: Any) -> str | None:
    try:
        ipaddress.ip_address(value)
    except (TypeError, ValueError):
        return f"{where}: must be an IPv4 or IPv6 address, unhashed"
    return None


def _unknown(where: str, data: dict[str, Any], known: set[str]) -> list[str]:
    return [f"{where}.{key}: unknown field" for key in data if key not in known]


def _unix_seconds(where: str, value: Any, now: datetime, max_age: timedelta | None) -> str | None:
    if not _is_int(value):
        return f"{where}: must be an integer (Unix seconds)"
    if not 1_000_000_000 <= value < 10_000_000_000:
        return f"{where}: not Unix seconds (wrong unit?)"
    when = datetime.fromtimestamp(value, UTC)
    if when > now + timedelta(minutes=10):
        return f"{where}: in the future"
    if max_age is not None and now - when > max_age:
        return f"{where}: older than {max_age.days} days"
    return None


class FakePlatform(abc.ABC):
    """Shared machinery: recording, modes, hanging, waiting. Subclasses define the schema and the answers."""

    name = "platform"

    def __init__(self) -> None:
        # Full batches (1,000 Meta events, 2,000 Data Manager events) exceed aiohttp's 1 MiB default.
        self.app = web.Application(client_max_size=32 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.app.on_shutdown.append(self._on_shutdown)
        self.exchanges: list[Exchange] = []
        self.default_mode = OK
        self.retry_after_s = 7
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._queue: deque[str] = deque()
        self._arrived = asyncio.Condition()
        self._release = asyncio.Event()

    # -- control -------------------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        """Answer every following valid request with `mode` (after any queued modes)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.default_mode = mode

    def answer(self, *modes: str, then: str | None = None) -> None:
        """Queue `modes` for the next valid requests, one each; afterwards `then` (if given) is the default."""
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}")
        self._queue.extend(modes)
        if then is not None:
            self.set_mode(then)

    # -- what arrived --------------------------------------------------------------------------------------

    @property
    def accepted(self) -> list[Exchange]:
        return [x for x in self.exchanges if x.valid and x.answer == OK]

    @property
    def rejected(self) -> list[Exchange]:
        return [x for x in self.exchanges if not x.valid]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for x in self.accepted for event in self.event_items(x.body)]

    async def wait_for_exchanges(self, count: int, within: float = 5.0) -> list[Exchange]:
        async with asyncio.timeout(within):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.exchanges) >= count)
        return list(self.exchanges)

    async def wait_for_events(self, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.events) >= count)
        return self.events

    # -- subclass hooks ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def check_auth(self, request: web.Request) -> str | None:
        """Defined by each platform."""

    @abc.abstractmethod
    def check(self, request: web.Request, body: Any) -> list[str]:
        """Defined by each platform."""

    @abc.abstractmethod
    def event_items(self, body: Any) -> list[dict[str, Any]]:
        """Defined by each platform."""

    @abc.abstractmethod
    def respond(self, answer: str, exchange: Exchange) -> web.Response:
        """Defined by each platform."""

    # -- the handler ---------------------------------------------------------------------------------------

    async def _on_shutdown(self, app: web.Application) -> None:
        self._release.set()

    def _rate_limit_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        problems: list[str] = []
        if request.method != "POST":
            problems.append(f"method must be POST, got {request.method}")
        if request.content_type != "application/json":
            problems.append("Content-Type must be application/json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problems.append("body is not JSON")
        exchange = Exchange(request.method, request.path, dict(request.query), dict(request.headers), body)
        auth_problem = self.check_auth(request)
        if auth_problem:
            exchange.problems = [auth_problem]
            exchange.answer = UNAUTHORIZED
        else:
            if not problems:
                if isinstance(body, dict):
                    problems.extend(self.check(request, body))
                else:
                    problems.append("body must be a JSON object")
            exchange.problems = problems
            if problems:
                exchange.answer = INVALID
            else:
                exchange.answer = self._queue.popleft() if self._queue else self.default_mode
        async with self._arrived:
            self.exchanges.append(exchange)
            self._arrived.notify_all()
        if exchange.answer == HANG:
            try:
                async with asyncio.timeout(HANG_LIMIT_S):
                    await self._release.wait()
            except TimeoutError:
                pass
            return web.Response(status=504)
        return self.respond(exchange.answer, exchange)


# -- Meta Conversions API -----------------------------------------------------------------------------------

_META_ACTION_SOURCES = {"email", "website", "app", "phone_call", "chat", "physical_store", "system_generated",
                        "business_messaging", "other"}
_META_EVENT_KEYS = {"event_name", "event_time", "event_id", "action_source", "event_source_url", "user_data",
                    "custom_data", "opt_out", "data_processing_options", "data_processing_options_country",
                    "data_processing_options_state"}
_META_HASHED = {"em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country", "external_id"}
_META_RAW = {"client_ip_address", "client_user_agent", "fbc", "fbp"}
_META_CUSTOM = {"value", "currency", "order_id", "content_ids", "contents", "content_type", "content_name",
                "num_items"}
_FBC_RE = re.compile(r"^fb\.[0-2]\.\d{13}\.\S+$")
_FBP_RE = re.compile(r"^fb\.[0-2]\.\d{13}\.\S+$")


class FakeMeta(FakePlatform):
    """``POST /{version}/{pixel_id}/events?access_token=...``."""

    name = "meta"
    MAX_BATCH = 1000
    MAX_AGE = timedelta(days=7)

    def __init__(self, pixel_id: str = "1234567890", access_token: str = "meta-token") -> None:
        super().__init__()
        self.pixel_id = pixel_id
        self.access_token = access_token

    def check_auth(self, request: web.Request) -> str | None:
        if request.query.get("access_token") != self.access_token:
            return "access_token query parameter missing or wrong"
        return None

    def event_items(self, body: Any) -> list[dict[str, Any]]:
        return list(body.get("data", [])) if isinstance(body, dict) else []

    def check(self, request: web.Request, body: dict[str, Any]) -> list[str]:
        problems = []
        match = re.fullmatch(r"/(v\d+\.\d+)/([^/]+)/events", request.path)
        if not match:
            problems.append("path must be /{api_version}/{pixel_id}/events")
        elif match.group(2) != self.pixel_id:
            problems.append("unknown pixel id")
        problems += _unknown("body", body, {"data", "test_event_code"})
        if "test_event_code" in body and not isinstance(body["test_event_code"], str):
            problems.append("test_event_code: must be a string")
        data = body.get("data")
        if not isinstance(data, list) or not 1 <= len(data) <= self.MAX_BATCH:
            return problems + [f"data: must be a list of 1 to {self.MAX_BATCH} events"]
        now = self.now()
        for i, event in enumerate(data):
            problems += self._check_event(f"data[{i}]", event, now)
        return problems

    def _check_event(self, where: str, event: Any, now: datetime) -> list[str]:
        if not isinstance(event, dict):
            return [f"{where}: must be an object"]
        p = _unknown(where, event, _META_EVENT_KEYS)
        for key in ("event_name", "event_id"):
            if not isinstance(event.get(key), str) or not event.get(key):
                p.append(f"{where}.{key}: must be a non-empty string")
        problem = _unix_seconds(f"{where}.event_time", event.get("event_time"), now, self.MAX_AGE)
        if problem:
            p.append(problem)
        source = event.get("action_source")
        if source not in _META_ACTION_SOURCES:
            p.append(f"{where}.action_source: must be one of {sorted(_META_ACTION_SOURCES)}")
        url = event.get("event_source_url")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            p.append(f"{where}.event_source_url: must be an http(s) URL")
        user = event.get("user_data")
        if not isinstance(user, dict) or not user:
            return p + [f"{where}.user_data: required, a non-empty object"]
        p += _unknown(f"{where}.user_data", user, _META_HASHED | _META_RAW)
        for key in _META_HASHED & user.keys():
            problem = _hashed(f"{where}.user_data.{key}", user[key])
            if problem:
                p.append(problem)
        for key in _META_RAW & user.keys():
            problem = _raw(f"{where}.user_data.{key}", user[key])
            if problem:
                p.append(problem)
        if "client_ip_address" in user and (problem := _ip(f"{where}.user_data.client_ip_address",
                                                           user["client_ip_address"])):
            p.append(problem)
        if isinstance(user.get("fbc"), str) and not _FBC_RE.match(user["fbc"]):
            p.append(f"{where}.user_data.fbc: must be fb.<index>.<ms>.<fbclid>")
        if isinstance(user.get("fbp"), str) and not _FBP_RE.match(user["fbp"]):
            p.append(f"{where}.user_data.fbp: must be fb.<index>.<ms>.<random>")
        if source == "website":
            if not url:
                p.append(f"{where}.event_source_url: required for website events")
            if "client_user_agent" not in user:
                p.append(f"{where}.user_data.client_user_agent: required for website events")
        custom = event.get("custom_data", {})
        if not isinstance(custom, dict):
            return p + [f"{where}.custom_data: must be an object"]
        p += _unknown(f"{where}.custom_data", custom, _META_CUSTOM)
        if "value" in custom and not _is_number(custom["value"]):
            p.append(f"{where}.custom_data.value: must be a number")
        if "currency" in custom and not (isinstance(custom["currency"], str)
                                         and _CURRENCY_RE.match(custom["currency"])):
            p.append(f"{where}.custom_data.currency: must be an ISO 4217 code")
        if "order_id" in custom and not isinstance(custom["order_id"], str):
            p.append(f"{where}.custom_data.order_id: must be a string")
        if event.get("event_name") == "Purchase" and not {"value", "currency"} <= custom.keys():
            p.append(f"{where}.custom_data: Purchase requires value and currency")
        return p

    @staticmethod
    def _error(status: int, code: int, message: str, *, transient: bool = False, subcode: int | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code,
                                 "is_transient": transient, "fbtrace_id": secrets.token_hex(6)}
        if subcode is not None:
            error["error_subcode"] = subcode
        return web.json_response({"error": error}, status=status, headers=headers)

    def respond(self, answer: str, exchange: Exchange) -> web.Response:
        if answer == OK:
            count = len(self.event_items(exchange.body))
            return web.json_response({"events_received": count, "messages": [],
                                      "fbtrace_id": secrets.token_hex(6)})
        if answer == RATE_LIMITED:
            return self._error(429, 17, "User request limit reached", headers=self._rate_limit_headers())
        if answer == SERVER_ERROR:
            return web.Response(status=503, text="Service Unavailable")
        if answer == TRANSIENT:
            return self._error(500, 2, "Service temporarily unavailable", transient=True)
        if answer == UNAUTHORIZED:
            return self._error(401, 190, "Invalid OAuth access token.")
        if answer == INVALID:
            return self._error(400, 100, "Invalid parameter: " + "; ".join(exchange.problems)[:500])
        return self._error(400, 100, "Invalid parameter", subcode=2804003)  # PERMANENT


# -- GA4 Measurement Protocol -------------------------------------------------------------------------------

_GA4_BODY_KEYS = {"client_id", "app_instance_id", "user_id", "timestamp_micros", "user_properties", "user_data",
                  "consent", "user_location", "ip_override", "device", "validation_behavior", "events",
                  "non_personalized_ads"}
_GA4_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")


class FakeGa4(FakePlatform):
    """``POST /mp/collect?measurement_id=..&api_secret=..``; answers 204 even to what it discards."""

    name = "ga4"
    MAX_BATCH = 25
    MAX_AGE = timedelta(hours=72)

    def __init__(self, measurement_id: str = "G-TEST123", api_secret: str = "ga4-secret") -> None:
        super().__init__()
        self.measurement_id = measurement_id
        self.api_secret = api_secret

    def check_auth(self, request: web.Request) -> str | None:
        if request.query.get("api_secret") != self.api_secret:
            return "api_secret query parameter missing or wrong"
        if request.query.get("measurement_id") != self.measurement_id:
            return "measurement_id query parameter missing or wrong"
        return None

    def event_items(self, body: Any) -> list[dict[str, Any]]:
        return list(body.get("events", [])) if isinstance(body, dict) else []

    def _micros(self, where: str, value: Any, now: datetime) -> str | None:
        if not _is_int(value):
            return f"{where}: must be an integer (Unix microseconds)"
        if not 10**15 <= value < 10**17:
            return f"{where}: not Unix microseconds (wrong unit?)"
        when = datetime.fromtimestamp(value / 1_000_000, UTC)
        if when > now + timedelta(minutes=10):
            return f"{where}: in the future"
        if now - when > self.MAX_AGE:
            return f"{where}: older than 72 hours"
        return None

    def check(self, request: web.Request, body: dict[str, Any]) -> list[str]:
        p = []
        if request.path != "/mp/collect":
            p.append("path must be /mp/collect")
        p += _unknown("body", body, _GA4_BODY_KEYS)
        if not isinstance(body.get("client_id"), str) or not body.get("client_id"):
            p.append("client_id: required non-empty string")
        now = self.now()
        if "timestamp_micros" in body and (problem := self._micros("timestamp_micros", body["timestamp_micros"],
                                                                   now)):
            p.append(problem)
        if len(orjson.dumps(body)) >= 130_000:
            p.append("body: 130 kB or more")
        user = body.get("user_data", {})
        if not isinstance(user, dict):
            p.append("user_data: must be an object")
        else:
            p += _unknown("user_data", user, {"sha256_email_address", "sha256_phone_number", "address"})
            for key in ("sha256_email_address", "sha256_phone_number"):
                if key in user:
                    if isinstance(user[key], list) and len(user[key]) > 3:
                        p.append(f"user_data.{key}: at most 3 values")
                    if problem := _hashed(f"user_data.{key}", user[key]):
                        p.append(problem)
        consent = body.get("consent", {})
        if not isinstance(consent, dict):
            p.append("consent: must be an object")
        else:
            p += _unknown("consent", consent, {"ad_user_data", "ad_personalization"})
            for key, value in consent.items():
                if value not in ("GRANTED", "DENIED"):
                    p.append(f"consent.{key}: must be GRANTED or DENIED")
        events = body.get("events")
        if not isinstance(events, list) or not 1 <= len(events) <= self.MAX_BATCH:
            return p + [f"events: must be a list of 1 to {self.MAX_BATCH} events"]
        for i, event in enumerate(events):
            where = f"events[{i}]"
            if not isinstance(event, dict):
                p.append(f"{where}: must be an object")
                continue
            p += _unknown(where, event, {"name", "params", "timestamp_micros"})
            name = event.get("name")
            if not isinstance(name, str) or not _GA4_NAME_RE.match(name) or name.startswith(
                    ("firebase_", "ga_", "google_", "gtag.")):
                p.append(f"{where}.name: invalid event name")
            if "timestamp_micros" in event and (problem := self._micros(f"{where}.timestamp_micros",
                                                                        event["timestamp_micros"], now)):
                p.append(problem)
            params = event.get("params", {})
            if not isinstance(params, dict) or len(params) > 25:
                p.append(f"{where}.params: an object of at most 25 params")
                continue
            for key, value in params.items():
                if not _GA4_NAME_RE.match(key):
                    p.append(f"{where}.params.{key}: invalid param name")
                if isinstance(value, str):
                    if len(value) > 100:
                        p.append(f"{where}.params.{key}: longer than 100 characters")
                elif not _is_number(value):
                    p.append(f"{where}.params.{key}: must be a string or a number")
            if "value" in params and not (isinstance(params.get("currency"), str)
                                          and _CURRENCY_RE.match(params["currency"])):
                p.append(f"{where}.params.currency: required with value, ISO 4217")
            if name == "purchase" and not isinstance(params.get("transaction_id"), str):
                p.append(f"{where}.params.transaction_id: required for purchase")
        return p

    def respond(self, answer: str, exchange: Exchange) -> web.Response:
        if answer in (OK, INVALID, UNAUTHORIZED):
            return web.Response(status=204)
        if answer == RATE_LIMITED:
            return web.Response(status=429, headers=self._rate_limit_headers())
        if answer == SERVER_ERROR:
            return web.Response(status=500)
        if answer == TRANSIENT:
            return web.Response(status=503)
        return web.Response(status=400)  # PERMANENT


# -- Data Manager API (Google Ads) --------------------------------------------------------------------------

_DM_BODY_KEYS = {"destinations", "events", "consent", "validateOnly", "encoding", "encryptionInfo"}
_DM_DEST_KEYS = {"reference", "loginAccount", "linkedAccount", "operatingAccount", "productDestinationId"}
_DM_EVENT_KEYS = {"destinationReferences", "transactionId", "eventTimestamp", "lastUpdatedTimestamp", "userData",
                  "consent", "adIdentifiers", "currency", "conversionValue", "eventSource", "eventDeviceInfo",
                  "cartData", "customVariables", "experimentalFields", "userProperties"}
_DM_ACCOUNT_TYPES = {"GOOGLE_ADS", "DISPLAY_VIDEO_PARTNER", "DISPLAY_VIDEO_ADVERTISER", "DATA_PARTNER"}
_DM_CONSENT = {"CONSENT_GRANTED", "CONSENT_DENIED"}


class FakeDataManager(FakePlatform):
    """``POST /v1/events:ingest`` with ``Authorization: Bearer <token>``."""

    name = "google_ads"
    MAX_BATCH = 2000

    def __init__(self, access_token: str = "gads-token", account_id: str = "1234567890",
                 conversion_action_id: str = "987654") -> None:
        super().__init__()
        self.access_token = access_token
        self.account_id = account_id
        self.conversion_action_id = conversion_action_id

    def check_auth(self, request: web.Request) -> str | None:
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return "Authorization: Bearer token missing or wrong"
        return None

    def event_items(self, body: Any) -> list[dict[str, Any]]:
        return list(body.get("events", [])) if isinstance(body, dict) else []

    def _account(self, where: str, account: Any) -> list[str]:
        if not isinstance(account, dict):
            return [f"{where}: must be an object"]
        p = _unknown(where, account, {"accountType", "accountId", "product"})
        if account.get("accountType") not in _DM_ACCOUNT_TYPES:
            p.append(f"{where}.accountType: must be one of {sorted(_DM_ACCOUNT_TYPES)}")
        if not isinstance(account.get("accountId"), str) or not _DIGITS_RE.match(account["accountId"]):
            p.append(f"{where}.accountId: must be a string of digits")
        return p

    def check(self, request: web.Request, body: dict[str, Any]) -> list[str]:
        p = []
        if request.path != "/v1/events:ingest":
            p.append("path must be /v1/events:ingest")
        p += _unknown("body", body, _DM_BODY_KEYS)
        destinations = body.get("destinations")
        if not isinstance(destinations, list) or not 1 <= len(destinations) <= 10:
            p.append("destinations: must be a list of 1 to 10")
            destinations = []
        for i, dest in enumerate(destinations):
            where = f"destinations[{i}]"
            if not isinstance(dest, dict):
                p.append(f"{where}: must be an object")
                continue
            p += _unknown(where, dest, _DM_DEST_KEYS)
            p += self._account(f"{where}.operatingAccount", dest.get("operatingAccount"))
            if "loginAccount" in dest:
                p += self._account(f"{where}.loginAccount", dest["loginAccount"])
            if (dest.get("operatingAccount") or {}).get("accountId") not in (None, self.account_id):
                p.append(f"{where}.operatingAccount.accountId: unknown account")
            if dest.get("productDestinationId") != self.conversion_action_id:
                p.append(f"{where}.productDestinationId: must be the conversion action id")
        if body.get("encoding") not in (None, "HEX", "BASE64"):
            p.append("encoding: must be HEX or BASE64")
        events = body.get("events")
        if not isinstance(events, list) or not 1 <= len(events) <= self.MAX_BATCH:
            return p + [f"events: must be a list of 1 to {self.MAX_BATCH} events"]
        for i, event in enumerate(events):
            p += self._check_event(f"events[{i}]", event, body)
        return p

    def _check_event(self, where: str, event: Any, body: dict[str, Any]) -> list[str]:
        if not isinstance(event, dict):
            return [f"{where}: must be an object"]
        p = _unknown(where, event, _DM_EVENT_KEYS)
        stamp = event.get("eventTimestamp")
        if not isinstance(stamp, str) or not _RFC3339_RE.match(stamp):
            p.append(f"{where}.eventTimestamp: required, RFC 3339 with a zone")
        elif datetime.fromisoformat(stamp.replace("Z", "+00:00")) > self.now() + timedelta(minutes=10):
            p.append(f"{where}.eventTimestamp: in the future")
        if "transactionId" in event and (not isinstance(event["transactionId"], str) or not event["transactionId"]):
            p.append(f"{where}.transactionId: must be a non-empty string")
        ids = event.get("adIdentifiers", {})
        if not isinstance(ids, dict):
            p.append(f"{where}.adIdentifiers: must be an object")
            ids = {}
        p += _unknown(f"{where}.adIdentifiers", ids, {"sessionAttributes", "gclid", "gbraid", "wbraid",
                                                       "landingPageDeviceInfo"})
        if "gbraid" in ids and "wbraid" in ids:
            p.append(f"{where}.adIdentifiers: gbraid and wbraid must not both be set")
        for key in ("gclid", "gbraid", "wbraid"):
            if key in ids and (problem := _raw(f"{where}.adIdentifiers.{key}", ids[key])):
                p.append(problem)
        if "conversionValue" in event and not _is_number(event["conversionValue"]):
            p.append(f"{where}.conversionValue: must be a number")
        if "currency" in event and not (isinstance(event["currency"], str) and re.fullmatch(r"[A-Z]{3}",
                                                                                         event["currency"])):
            p.append(f"{where}.currency: must be an upper-case ISO 4217 code")
        if "eventSource" in event and event["eventSource"] not in {"WEB", "APP", "IN_STORE", "PHONE", "OTHER"}:
            p.append(f"{where}.eventSource: unknown value")
        consent = event.get("consent", {})
        if not isinstance(consent, dict):
            p.append(f"{where}.consent: must be an object")
        else:
            p += _unknown(f"{where}.consent", consent, {"adUserData", "adPersonalization"})
            for key, value in consent.items():
                if value not in _DM_CONSENT:
                    p.append(f"{where}.consent.{key}: must be CONSENT_GRANTED or CONSENT_DENIED")
        user = event.get("userData")
        has_user = False
        if user is not None:
            identifiers = user.get("userIdentifiers") if isinstance(user, dict) else None
            if not isinstance(identifiers, list) or not 1 <= len(identifiers) <= 10:
                p.append(f"{where}.userData.userIdentifiers: a list of 1 to 10 identifiers")
                identifiers = []
            if body.get("encoding") != "HEX":
                p.append("encoding: must be HEX when userData carries hex hashes")
            for j, ident in enumerate(identifiers):
                w = f"{where}.userData.userIdentifiers[{j}]"
                if not isinstance(ident, dict) or len(ident) != 1:
                    p.append(f"{w}: exactly one of emailAddress, phoneNumber, address")
                    continue
                key, value = next(iter(ident.items()))
                if key not in ("emailAddress", "phoneNumber", "address"):
                    p.append(f"{w}.{key}: unknown identifier")
                elif key != "address" and (problem := _hashed(f"{w}.{key}", value, allow_list=False)):
                    p.append(problem)
                has_user = True
        if not has_user and not ({"gclid", "gbraid", "wbraid"} & ids.keys()):
            p.append(f"{where}: NO_IDENTIFIERS_PROVIDED")
        return p

    @staticmethod
    def _error(status: int, name: str, message: str, *, reason: str | None = None,
               fields: list[str] | None = None, headers: dict[str, str] | None = None) -> web.Response:
        details: list[dict[str, Any]] = []
        if reason:
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                            "domain": "datamanager.googleapis.com"})
        if fields:
            details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [{"field": f, "description": "invalid"} for f in fields]})
        return web.json_response({"error": {"code": status, "message": message, "status": name,
                                            "details": details}}, status=status, headers=headers)

    def respond(self, answer: str, exchange: Exchange) -> web.Response:
        if answer == OK:
            return web.json_response({"requestId": secrets.token_hex(8)})
        if answer == RATE_LIMITED:
            return self._error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", reason="RESOURCE_EXHAUSTED",
                               headers=self._rate_limit_headers())
        if answer == SERVER_ERROR:
            return self._error(500, "INTERNAL", "Internal error encountered.", reason="INTERNAL_ERROR")
        if answer == TRANSIENT:
            return self._error(503, "UNAVAILABLE", "The service is currently unavailable.")
        if answer == UNAUTHORIZED:
            return self._error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if answer == INVALID:
            fields = [problem.split(":", 1)[0] for problem in exchange.problems]
            return self._error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                               reason="INVALID_FORMAT", fields=fields[:20])
        return self._error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                           reason="INVALID_EVENT")  # PERMANENT


# -- TikTok Events API 2.0 ---------------------------------------------------------------------------------

_TT_BODY_KEYS = {"event_source", "event_source_id", "test_event_code", "partner_name", "data"}
_TT_EVENT_KEYS = {"event", "event_time", "event_id", "user", "page", "properties", "limited_data_use"}
_TT_USER_HASHED = {"email", "phone", "external_id"}
_TT_USER_RAW = {"ttclid", "ttp", "ip", "user_agent", "locale"}
_TT_PROPERTIES = {"contents", "content_type", "value", "currency", "order_id", "query", "description",
                  "shop_id"}


class FakeTikTok(FakePlatform):
    """``POST /open_api/v1.3/event/track/`` with the ``Access-Token`` header; errors are HTTP 200 with a code."""

    name = "tiktok"
    MAX_BATCH = 1000

    def __init__(self, pixel_code: str = "CTESTPIXEL123", access_token: str = "tiktok-token") -> None:
        super().__init__()
        self.pixel_code = pixel_code
        self.access_token = access_token

    def check_auth(self, request: web.Request) -> str | None:
        if request.headers.get("Access-Token") != self.access_token:
            return "Access-Token header missing or wrong"
        return None

    def event_items(self, body: Any) -> list[dict[str, Any]]:
        return list(body.get("data", [])) if isinstance(body, dict) else []

    def check(self, request: web.Request, body: dict[str, Any]) -> list[str]:
        p = []
        if request.path != "/open_api/v1.3/event/track/":
            p.append("path must be /open_api/v1.3/event/track/")
        p += _unknown("body", body, _TT_BODY_KEYS)
        if body.get("event_source") != "web":
            p.append("event_source: must be web")
        if body.get("event_source_id") != self.pixel_code:
            p.append("event_source_id: must be the pixel code")
        data = body.get("data")
        if not isinstance(data, list) or not 1 <= len(data) <= self.MAX_BATCH:
            return p + [f"data: must be a list of 1 to {self.MAX_BATCH} events"]
        now = self.now()
        for i, event in enumerate(data):
            where = f"data[{i}]"
            if not isinstance(event, dict):
                p.append(f"{where}: must be an object")
                continue
            p += _unknown(where, event, _TT_EVENT_KEYS)
            for key in ("event", "event_id"):
                if not isinstance(event.get(key), str) or not event.get(key):
                    p.append(f"{where}.{key}: must be a non-empty string")
            if problem := _unix_seconds(f"{where}.event_time", event.get("event_time"), now, None):
                p.append(problem)
            user = event.get("user", {})
            if not isinstance(user, dict):
                p.append(f"{where}.user: must be an object")
                user = {}
            p += _unknown(f"{where}.user", user, _TT_USER_HASHED | _TT_USER_RAW)
            for key in _TT_USER_HASHED & user.keys():
                if problem := _hashed(f"{where}.user.{key}", user[key]):
                    p.append(problem)
            for key in _TT_USER_RAW & user.keys():
                if problem := _raw(f"{where}.user.{key}", user[key]):
                    p.append(problem)
            if "ip" in user and (problem := _ip(f"{where}.user.ip", user["ip"])):
                p.append(problem)
            page = event.get("page", {})
            if not isinstance(page, dict) or not all(isinstance(v, str) for v in page.values()):
                p.append(f"{where}.page: an object of strings")
            else:
                p += _unknown(f"{where}.page", page, {"url", "referrer"})
            props = event.get("properties", {})
            if not isinstance(props, dict):
                p.append(f"{where}.properties: must be an object")
                continue
            p += _unknown(f"{where}.properties", props, _TT_PROPERTIES)
            if "value" in props and not _is_number(props["value"]):
                p.append(f"{where}.properties.value: must be a number")
            if "currency" in props and not (isinstance(props["currency"], str)
                                            and _CURRENCY_RE.match(props["currency"])):
                p.append(f"{where}.properties.currency: must be an ISO 4217 code")
        return p

    @staticmethod
    def _coded(code: int, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message, "request_id": secrets.token_hex(8),
                                  "data": {}})

    def respond(self, answer: str, exchange: Exchange) -> web.Response:
        if answer == OK:
            return self._coded(0, "OK")
        if answer == RATE_LIMITED:
            return web.json_response({"code": 40100, "message": "Too many requests"}, status=429,
                                     headers=self._rate_limit_headers())
        if answer == SERVER_ERROR:
            return web.Response(status=502, text="Bad Gateway")
        if answer == TRANSIENT:
            return self._coded(40100, "Too many requests. Please retry in some time.")
        if answer == UNAUTHORIZED:
            return self._coded(40001, "Access token is incorrect or has been revoked.")
        if answer == INVALID:
            return self._coded(40000, "Invalid parameters: " + "; ".join(exchange.problems)[:500])
        return self._coded(40001, "No permission to operate pixel.")  # PERMANENT
