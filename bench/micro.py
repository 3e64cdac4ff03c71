"""Micro-benchmark of HaloTrack's per-request work, without sockets: `VisitTracker.observe` (with the request's
facts read as `edge.site` reads them) and the proxy's
header copying, for the request shapes of the `bench/run.py` scenarios.

    .venv/bin/python bench/micro.py                  # every case, 20000 requests each
    .venv/bin/python bench/micro.py --cases returning,new_visitor -n 50000

Each case builds its requests first (distinct request objects, so nothing aiohttp caches per request is
reused) and then times only the call under test. Figures are µs per call on this machine, the best of
`--repeat` runs; compare them only with figures of the same run. Writes are queued on a writer that never
flushes (no database is involved), so the queue is emptied between runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aiohttp.test_utils import make_mocked_request  # noqa: E402
from multidict import CIMultiDict  # noqa: E402
from scenarios import BROWSER_PAGE_HEADERS  # noqa: E402

from halo_proxy.config import parse  # noqa: E402
from halo_proxy.crypto import KeyRing, generate_master_secret  # noqa: E402
from halo_proxy.edge.admission import check_request  # noqa: E402
from halo_proxy.edge.proxy import upstream_request_headers  # noqa: E402
from halo_proxy.edge.site import CookieCache, visit_facts  # noqa: E402
from halo_proxy.edge.tenancy import Client  # noqa: E402
from halo_proxy.metrics import Metrics  # noqa: E402
from halo_proxy.services.visits import VisitTracker  # noqa: E402
from halo_proxy.storage.write_queue import VisitWriter  # noqa: E402

HOST = "bench.localhost"
CLIENT_IP = "127.0.0.1"


def settings():  # type: ignore[no-untyped-def]
    return parse(f"""
tenants:
  - id: bench
    hosts: [{HOST}]
    upstream: http://127.0.0.1:9
""", "micro.yaml", {})


def requests(path: Callable[[int], str], headers, n: int) -> list:  # type: ignore[no-untyped-def]
    """`n` mocked requests; `headers` is a tuple of pairs or a function of the request number giving one."""
    out = []
    for i in range(n):
        h = CIMultiDict(headers(i) if callable(headers) else headers)
        h["Host"] = HOST
        out.append(make_mocked_request("GET", path(i), headers=h))
    return out


def timed(fn: Callable[[object], object], items: list, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="requests per case (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case, best kept (default 3)")
    parser.add_argument("--cases", default="all")
    args = parser.parse_args()
    if not 100 <= args.n <= 1_000_000 or not 1 <= args.repeat <= 20:
        parser.error("-n must be 100..1000000, --repeat 1..20")

    tenant = settings().tenants[0]
    keys = KeyRing(generate_master_secret())
    metrics = Metrics()
    writer = VisitWriter(None, metrics, max_queue=10**7, batch_size=10**8)  # type: ignore[arg-type]
    tracker = VisitTracker(keys, writer, metrics, "/_halo")

    # A first visit through the tracker gives the returning visitor's cookie.
    first = requests(lambda i: "/page", BROWSER_PAGE_HEADERS, 1)[0]
    cookie_cache = CookieCache()
    set_cookies = tracker.observe(visit_facts(first, cookie_cache), tenant, CLIENT_IP, False)
    cookie = "; ".join(c.split(";", 1)[0] for c in set_cookies)
    n = args.n

    def observe(request) -> object:  # type: ignore[no-untyped-def]
        return tracker.observe(visit_facts(request, cookie_cache), tenant, CLIENT_IP, False)

    client = Client(CLIENT_IP, CLIENT_IP, False, False)
    the_settings = settings()

    def headers_up(request) -> object:  # type: ignore[no-untyped-def]
        return upstream_request_headers(request, tenant, client, None)

    def edge(request) -> object:  # type: ignore[no-untyped-def]
        host = check_request(request, "/_halo")
        return the_settings.tenant_for_name(host.name)  # type: ignore[union-attr]

    cases: dict[str, tuple[str, Callable[[], list], Callable[[object], object]]] = {
        "returning": ("observe: valid _halo cookie, no campaign data",
                      lambda: requests(lambda i: "/page", BROWSER_PAGE_HEADERS + (("Cookie", cookie),), n), observe),
        "returning_other": ("observe: a different valid cookie per request (cache misses)",
                            lambda: requests(lambda i: "/page", lambda i: BROWSER_PAGE_HEADERS + (
                                ("Cookie", f"_ga=GA1.1.{i}; " + cookie_for(tracker, tenant)),), n), observe),
        "page": ("observe: browser page view, no cookie (a new visitor)",
                 lambda: requests(lambda i: "/page", BROWSER_PAGE_HEADERS, n), observe),
        "new_visitor": ("observe: no cookie, UTMs and a new gclid",
                        lambda: requests(lambda i: f"/page?utm_source=google&utm_medium=cpc&gclid={i}",
                                         BROWSER_PAGE_HEADERS, n), observe),
        "plain_get": ("observe: GET with wrk's default headers (not a visit)",
                      lambda: requests(lambda i: "/page", (), n), observe),
        "headers_up": ("upstream_request_headers: browser headers",
                       lambda: requests(lambda i: "/page", BROWSER_PAGE_HEADERS + (("Cookie", cookie),), n),
                       headers_up),
        "edge_checks": ("check_request + tenant lookup: Host, target, reserved path, framing",
                        lambda: requests(lambda i: "/page", BROWSER_PAGE_HEADERS + (("Cookie", cookie),), n), edge),
    }
    wanted = list(cases) if args.cases == "all" else args.cases.split(",")
    for name in wanted:
        description, build, fn = cases[name]
        items = build()
        us = timed(fn, items, args.repeat)
        writer._visits.clear()
        print(f"{name:<16} {us:8.1f} µs/call   {description}", flush=True)
    return 0


def cookie_for(tracker: VisitTracker, tenant) -> str:  # type: ignore[no-untyped-def]
    value = tracker.keys.seal_session(tenant.id, tracker.keys.new_session_id(), 3)
    return f"{tenant.cookie.name}={value}"


if __name__ == "__main__":
    sys.exit(main())
