"""Benchmark scenarios: what one load-generator request looks like, for every target alike.

A scenario turns a `Context` (the running targets, the tenant HaloTrack serves) into a `RequestPlan`, or into
a string saying why it cannot run ("n/a"). Both load generators (wrk through a generated Lua script, and the
Python client in `loadgen.py`) read the same plan, so every target of a run receives the same requests.

A plan is one of:
  * a static request: method, path, headers, body, sent unchanged (the cheapest for the generator);
  * a template: `{n}` anywhere in the path, a header value or the body is replaced by a counter that is
    unique per request within the run (e.g. a new click id for each new visitor);
  * a pool: a list of concrete requests, cycled in order. Use it when each request needs something the
    generator cannot compute itself, such as an HMAC signature.

Adding a scenario: write `def plan_<name>(ctx) -> RequestPlan | str`, decorate it with
`@scenario("<name>", "<one-line description>")`, and it is selectable with `--scenario <name>`.
A scenario that needs tenant settings (a webhook secret, say) sets `tenant_extra`; those keys are merged
into the generated tenant YAML before HaloTrack starts. `target_vs_scenario=(other, goal)` also holds HaloTrack
to a fraction of its own throughput in another scenario, when both ran in the same run (`injected` against
`returning_gz`: the same page with and without the script tag).

A plan may instead be built afresh for every run (`fresh`): `lead` needs a new signed body per request, and
a run must never repeat one (a repeated `event_id` is answered 200, not a new conversion), so the generator asks
the plan for as many requests as the run can send. `count_status` has the generator count the answers with that
status (201 Created for a committed lead), which the harness compares with the rows in the database.
A scenario that only HaloTrack can answer (`lead`) names its `targets`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

# A current desktop Chrome on Windows: what most visitors of a client site look like.
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
# A top-level navigation as Chrome sends it (no cookie: a visitor seen for the first time).
BROWSER_PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("User-Agent", CHROME_UA),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    ("Accept-Language", "en-GB,en;q=0.9"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Sec-Fetch-Dest", "document"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "none"),
    ("Sec-Fetch-User", "?1"),
    ("Upgrade-Insecure-Requests", "1"),
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: str = ""

    def to_json(self) -> dict:
        return {"method": self.method, "path": self.path, "headers": [list(h) for h in self.headers],
                "body": self.body}


@dataclass(frozen=True)
class RequestPlan:
    """The requests a generator sends. `request` is a static request or a `{n}` template; `pool` wins if set;
    `fresh(count)`, when set, builds a new pool of `count` requests for each run (see the module's docstring)."""

    request: Request
    pool: tuple[Request, ...] = ()
    fresh: Callable[[int], tuple[Request, ...]] | None = field(default=None, compare=False)
    count_status: int | None = None     # answers with this status are counted (201: a lead committed)

    @property
    def templated(self) -> bool:
        r = self.request
        return "{n}" in r.path or "{n}" in r.body or any("{n}" in v for _, v in r.headers)

    def with_host(self, host: str) -> RequestPlan:
        """Every request carries `Host: host` (HaloTrack routes by it; the other targets pass it on)."""
        def add(r: Request) -> Request:
            headers = tuple((k, v) for k, v in r.headers if k.lower() != "host")
            return Request(r.method, r.path, (("Host", host),) + headers, r.body)
        fresh = self.fresh
        return RequestPlan(add(self.request), tuple(add(r) for r in self.pool),
                           (lambda count: tuple(add(r) for r in fresh(count))) if fresh else None,
                           self.count_status)

    def for_run(self, count: int) -> RequestPlan:
        """The plan one run sends: a fresh pool of `count` requests when the plan builds one, else itself."""
        if self.fresh is None:
            return self
        return RequestPlan(self.request, self.fresh(count), None, self.count_status)

    def to_json(self) -> dict:
        return {"request": self.request.to_json(), "pool": [r.to_json() for r in self.pool],
                "count_status": self.count_status}


@dataclass(frozen=True)
class Context:
    """What a scenario may use to build its plan. Targets are already running when plans are built."""

    host: str                       # the tenant host every request carries
    halo_url: str | None            # HaloTrack's base URL, None when HaloTrack is not among the targets
    cookie_name: str                # the tenant's visitor cookie
    webhook_secret: str             # the tenant's webhook secret, for signed-request scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    plan: Callable[[Context], RequestPlan | str]
    target_vs_bare: float | None = None   # HaloTrack's throughput goal as a fraction of the bare proxy's
    tenant_extra: dict = field(default_factory=dict)
    # (other scenario, goal): HaloTrack's throughput here as a fraction of its own in that scenario, compared
    # when both ran in the same run
    target_vs_scenario: tuple[str, float] | None = None
    targets: tuple[str, ...] | None = None  # the only targets that can answer it; None: every target


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, description: str, *, target_vs_bare: float | None = None,
             tenant_extra: dict | None = None, target_vs_scenario: tuple[str, float] | None = None,
             targets: tuple[str, ...] | None = None):  # type: ignore[no-untyped-def]
    def register(fn: Callable[[Context], RequestPlan | str]) -> Callable[[Context], RequestPlan | str]:
        SCENARIOS[name] = Scenario(name, description, fn, target_vs_bare, dict(tenant_extra or {}),
                                   target_vs_scenario, targets)
        return fn
    return register


# ---------------------------------------------------------------------------------------------------------
# Scenarios.


@scenario("proxy_only", "GET of the ~4 KiB HTML page with only a Host header, as wrk sends it by default: not a "
          "page view (no Accept: text/html, no Sec-Fetch-Dest), so HaloTrack checks it, counts it as skipped and "
          "only proxies it; issue 2's target for the proxy itself", target_vs_bare=0.9)
def plan_proxy_only(ctx: Context) -> RequestPlan | str:
    return RequestPlan(Request("GET", "/page", ()))


@scenario("page", "GET of the page by a browser with no cookie and no campaign data: with the tenant's default "
          "consent (unknown counts as granted) every request is a new visitor, so HaloTrack creates and stores a "
          "session each time; held to the new-visitor target", target_vs_bare=0.6)
def plan_page(ctx: Context) -> RequestPlan | str:
    return RequestPlan(Request("GET", "/page", BROWSER_PAGE_HEADERS))


@scenario("returning", "the browser page view with the cookies HaloTrack set on a first visit (`_halo`, `_fbp`) "
          "and no campaign data: a returning visitor on the fast path, no database work", target_vs_bare=0.9)
def plan_returning(ctx: Context) -> RequestPlan | str:
    return returning_visitor(ctx, "/page")


@scenario("injected", "the returning visitor's page view of `/gz30`, a 30 KiB page the origin sends gzipped "
          "(level 6), the same bytes each time: HaloTrack injects its script tag once (decode, inject, re-encode "
          "with ISA-L level 1) and answers the next views of those exact bytes from its cache of injected pages; "
          "the bare proxy passes the gzip bytes through", target_vs_bare=0.8,
          target_vs_scenario=("returning_gz", 0.8))
def plan_injected(ctx: Context) -> RequestPlan | str:
    return returning_visitor(ctx, "/gz30")


@scenario("injected_unique", "as `injected`, but every request's page differs (`/gz30-unique?v=<n>`: a per-visit "
          "token in the footer, gzipped by the origin per request), so HaloTrack's cache of injected pages never "
          "answers: the decode, inject and re-encode of every view", target_vs_bare=0.8,
          target_vs_scenario=("returning_gz", 0.8))
def plan_injected_unique(ctx: Context) -> RequestPlan | str:
    return returning_visitor(ctx, "/gz30-unique?v={n}")


@scenario("returning_gz", "the returning visitor's page view of `/gz30-plain`, the same gzipped bytes with "
          "`Cache-Control: no-transform`: tracked on the fast path, injection skipped, the page passed through "
          "as it came; the reference `injected` is held to")
def plan_returning_gz(ctx: Context) -> RequestPlan | str:
    return returning_visitor(ctx, "/gz30-plain")


@scenario("new_visitor", "the browser page view with no cookie, arriving from a Google Ads click "
          "(`?utm_source=google&utm_medium=cpc&gclid=<n>`, a new <n> each request): a new session with a paid "
          "first touch and a click id, stored each time", target_vs_bare=0.6)
def plan_new_visitor(ctx: Context) -> RequestPlan | str:
    return RequestPlan(Request("GET", "/page?utm_source=google&utm_medium=cpc&gclid={n}", BROWSER_PAGE_HEADERS))


@scenario("lead", "a signed lead webhook (`POST /_halo/webhook/lead`, JSON with its own `event_id` and email, "
          "`X-Halo-Signature` HMAC-SHA256), half carrying the session id of a visit made before the run: "
          "HaloTrack checks the signature, validates, matches the session or looks the email up by blind index, "
          "encrypts the personal data and commits the conversion before its 201; only HaloTrack answers it",
          targets=("halotrack",), tenant_extra={"webhook_secret": "${HALO_BENCH_WEBHOOK_SECRET}"})
def plan_lead(ctx: Context) -> RequestPlan | str:
    cookies = halo_cookies(ctx)
    if isinstance(cookies, str):
        return cookies
    session = cookies.get(ctx.cookie_name)
    runs = [0]
    nonce = secrets.token_hex(4)

    def fresh(count: int) -> tuple[Request, ...]:
        runs[0] += 1
        stamp = int(time.time())
        out = []
        for i in range(count):
            payload: dict = {"email": f"lead-{nonce}-{runs[0]}-{i}@example.com",
                             "event_id": f"bench-{nonce}-{runs[0]}-{i}", "form_type": "contact", "value": 10}
            if session and i % 2 == 0:
                payload["session_id"] = session
            body = json.dumps(payload, separators=(",", ":"))
            out.append(Request("POST", "/_halo/webhook/lead", (
                ("Content-Type", "application/json"),
                ("X-Halo-Signature", sign_webhook(ctx.webhook_secret, body.encode(), stamp)),
            ), body))
        return tuple(out)

    return RequestPlan(Request("POST", "/_halo/webhook/lead", ()), fresh=fresh, count_status=201)


# ---------------------------------------------------------------------------------------------------------
# Helpers.


def sign_webhook(secret: str, body: bytes, t: int) -> str:
    """`X-Halo-Signature` as a tenant's server sends it: `t=<unix seconds>,v1=<hex HMAC-SHA256("<t>.<body>")>`."""
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


def halo_cookies(ctx: Context) -> dict[str, str] | str:
    """The cookies a first visit through HaloTrack sets, or why they cannot be had (a reason, as plans give)."""
    if ctx.halo_url is None:
        return "needs HaloTrack among the targets to obtain its cookie"
    try:
        return first_visit_cookies(ctx.halo_url, ctx.host)
    except OSError as err:
        return f"first visit through HaloTrack failed: {err}"


def tenant_extra(names: Iterable[str]) -> dict:
    """The tenant settings the named scenarios need, merged (one benchmark tenant serves them all)."""
    merged: dict = {}
    for name in names:
        merged |= SCENARIOS[name].tenant_extra
    return merged


def returning_visitor(ctx: Context, path: str) -> RequestPlan | str:
    """The browser page view of `path` with the cookies a first visit through HaloTrack set."""
    cookies = halo_cookies(ctx)
    if isinstance(cookies, str):
        return cookies
    if ctx.cookie_name not in cookies:
        return f"HaloTrack set no {ctx.cookie_name} cookie on a first visit"
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return RequestPlan(Request("GET", path, BROWSER_PAGE_HEADERS + (("Cookie", cookie),)))


def first_visit_cookies(base_url: str, host: str) -> dict[str, str]:
    """The cookies a browser holds after one page view through `base_url`: name -> value, in order."""
    url = base_url.removeprefix("http://")
    hostport, _, _ = url.partition("/")
    conn = http.client.HTTPConnection(hostport, timeout=10)
    try:
        conn.request("GET", "/page", headers=dict(BROWSER_PAGE_HEADERS) | {"Host": host})
        response = conn.getresponse()
        response.read()
        set_cookies = response.msg.get_all("Set-Cookie") or []
    finally:
        conn.close()
    jar: dict[str, str] = {}
    for line in set_cookies:
        try:
            parsed = SimpleCookie(line)
        except CookieError:
            continue
        for name, morsel in parsed.items():
            jar[name] = morsel.coded_value
    return jar


def plan_from_json(data: dict) -> RequestPlan:
    def req(d: dict) -> Request:
        return Request(d["method"], d["path"], tuple((k, v) for k, v in d["headers"]), d.get("body", ""))
    return RequestPlan(req(data["request"]), tuple(req(d) for d in data.get("pool", ())),
                       count_status=data.get("count_status"))


def dumps(plan: RequestPlan) -> str:
    return json.dumps(plan.to_json())
