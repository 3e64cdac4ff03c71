"""Micro-benchmark of HaloTrack's per-request work, without sockets: `VisitTracker.observe` (with the request's
facts read as `edge.site` reads them) and the proxy's
header copying, for the request shapes of the `bench/run.py` scenarios.

    .venv/bin/python bench/micro.py                  # every case, 20000 requests each
    .venv/bin/python bench/micro.py --cases returning,new_visitor -n 50000
    .venv/bin/python bench/micro.py inject           # the script tag into a compressed 30 KiB page, 1000 pages

Each case builds its requests first (distinct request objects, so nothing aiohttp caches per request is
reused) and then times only the call under test. Figures are µs per call on this machine, the best of
`--repeat` runs; compare them only with figures of the same run. Writes are queued on a writer that never
flushes (no database is involved), so the queue is emptied between runs.

`inject` times the two ways of giving a visitor who accepts gzip an injected copy of the `/gz30` page of
`bench/upstream.py` (30 KiB, gzipped at level 6 by the origin): (a) decode the origin's gzip, inject, re-encode
(what HaloTrack does, `inject.Recoder`, ISA-L level 1), and (b) ask the origin for identity and only inject and
compress (`Injector`, then the same ISA-L encoder with a Z_SYNC_FLUSH per chunk). Its parts (decoding alone,
injecting alone, each encoder alone on the injected page: ISA-L level 1, zlib levels 1 and 6, Brotli qualities 1
and 4) are timed too, with the size of what each sends. Every output is decoded once and checked to be the page
with the tag. The upstream's body is fed whole (a page that arrived in one read, as a 30 KiB page over loopback
does), or in `--chunk` byte pieces, each encoded and flushed as the proxy does.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import brotli  # noqa: E402
import upstream as upstream_bench  # noqa: E402
from aiohttp.test_utils import make_mocked_request  # noqa: E402
from isal import isal_zlib  # noqa: E402
from multidict import CIMultiDict  # noqa: E402
from scenarios import BROWSER_PAGE_HEADERS  # noqa: E402

from halo_proxy.config import parse  # noqa: E402
from halo_proxy.crypto import KeyRing, generate_master_secret  # noqa: E402
from halo_proxy.edge.admission import check_request  # noqa: E402
from halo_proxy.edge.inject import Injector, Recoder, _zlib_decoder, script_tag  # noqa: E402
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
    parser.add_argument("mode", nargs="?", choices=("observe", "inject"), default="observe",
                        help="observe: the tracking and header cases (default); inject: the script tag into a "
                             "compressed 30 KiB page")
    parser.add_argument("-n", type=int, default=None,
                        help="requests (inject: pages) per case (default 20000; inject: 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case, best kept (default 3)")
    parser.add_argument("--cases", default="all")
    parser.add_argument("--chunk", type=int, default=0,
                        help="inject: feed the upstream's body in pieces of this many bytes (default 0: whole)")
    args = parser.parse_args()
    if args.n is None:
        args.n = 1000 if args.mode == "inject" else 20000
    if not 100 <= args.n <= 1_000_000 or not 1 <= args.repeat <= 20:
        parser.error("-n must be 100..1000000, --repeat 1..20")
    if not 0 <= args.chunk <= 1 << 20:
        parser.error("--chunk must be 0..1048576")
    if args.mode == "inject":
        return inject_main(args)

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


# ---------------------------------------------------------------------------------------------------------
# inject: the script tag into a compressed page.


def encoder(kind: str) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    """(encode a chunk and flush it, finish) for `kind`: isal-<level> and zlib-<level> give gzip, br-<quality>
    Brotli; the chunk flush is Recoder's (Z_SYNC_FLUSH, Brotli's flush)."""
    name, _, level = kind.partition("-")
    if name in ("isal", "zlib"):
        lib = isal_zlib if name == "isal" else zlib
        comp = lib.compressobj(int(level), lib.DEFLATED, 31)
        return (lambda data: comp.compress(data) + comp.flush(lib.Z_SYNC_FLUSH)), comp.flush
    if name == "br":
        br = brotli.Compressor(quality=int(level))
        return (lambda data: br.process(data) + br.flush()), br.finish
    raise ValueError(kind)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data] if size <= 0 else [data[i:i + size] for i in range(0, len(data), size)]


def inject_main(args: argparse.Namespace) -> int:
    page, gz = upstream_bench.GZ_PAGE, upstream_bench.GZ_BODY
    tag, marker = script_tag("/_halo"), b"/_halo/t.js"
    gz_in, page_in = pieces(gz, args.chunk), pieces(page, args.chunk)
    expected = Injector(tag, marker).feed(page) or b""
    injected = expected  # the whole page arrives in one piece: the injector decides at once
    assert injected and tag in injected, "the injector held the page back"

    def recode(_: object) -> bytes:  # (a) HaloTrack: decode the origin's gzip, inject, re-encode
        codec = Recoder("gzip", Injector(tag, marker))
        return b"".join([codec.feed(c) for c in gz_in]) + codec.finish()

    def recode_with(kind: str) -> Callable[[object], bytes]:  # (a) with another encoder
        def run(_: object) -> bytes:
            decode, injector = _zlib_decoder(31), Injector(tag, marker)
            encode, close = encoder(kind)
            out = [encode(i) for c in gz_in for piece in decode(c) if (i := injector.feed(piece))]
            rest = injector.finish()
            return b"".join(out) + (encode(rest) if rest else b"") + close()
        return run

    def identity(_: object) -> bytes:  # (b) ask the origin for identity: inject, compress
        injector = Injector(tag, marker)
        encode, close = encoder("isal-1")
        out = [encode(i) for c in page_in if (i := injector.feed(c))]
        rest = injector.finish()
        return b"".join(out) + (encode(rest) if rest else b"") + close()

    def decode_only(_: object) -> bytes:
        decode = _zlib_decoder(31)
        return b"".join(piece for c in gz_in for piece in decode(c))

    def inject_only(_: object) -> bytes:
        injector = Injector(tag, marker)
        return b"".join([injector.feed(c) for c in page_in]) + injector.finish()

    def encode_only(kind: str) -> Callable[[object], bytes]:
        chunks = pieces(injected, args.chunk)

        def run(_: object) -> bytes:
            encode, close = encoder(kind)
            return b"".join([encode(c) for c in chunks]) + close()
        return run

    # name: (description, function, what its output is: "gzip", "br" or "identity")
    cases: dict[str, tuple[str, Callable[[object], bytes], str]] = {
        "decode": ("decode the origin's gzip-6 (ISA-L), nothing else", decode_only, "identity"),
        "inject": ("Injector alone on the identity page", inject_only, "identity"),
        "enc_isal1": ("encode the injected page: ISA-L level 1 (gzip)", encode_only("isal-1"), "gzip"),
        "enc_zlib1": ("encode the injected page: zlib level 1 (gzip)", encode_only("zlib-1"), "gzip"),
        "enc_zlib6": ("encode the injected page: zlib level 6 (gzip)", encode_only("zlib-6"), "gzip"),
        "enc_br1": ("encode the injected page: Brotli quality 1", encode_only("br-1"), "br"),
        "enc_br4": ("encode the injected page: Brotli quality 4", encode_only("br-4"), "br"),
        "recode": ("(a) gzip-6 in: decode, inject, re-encode ISA-L 1 (Recoder, HaloTrack)", recode, "gzip"),
        "recode_zlib1": ("(a) with zlib level 1 as the encoder", recode_with("zlib-1"), "gzip"),
        "recode_zlib6": ("(a) with zlib level 6 as the encoder", recode_with("zlib-6"), "gzip"),
        "identity": ("(b) identity in: inject, compress ISA-L 1", identity, "gzip"),
    }
    wanted = list(cases) if args.cases == "all" else args.cases.split(",")
    unknown = [c for c in wanted if c not in cases]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {', '.join(cases)}", file=sys.stderr)
        return 2
    print(f"page {len(page)} bytes; the origin's gzip level 6: {len(gz)} bytes; fed "
          + (f"in {args.chunk}-byte pieces" if args.chunk else "whole") + f"; {args.n} pages per case, "
          f"best of {args.repeat}", flush=True)
    items = [None] * args.n
    for name in wanted:
        description, fn, kind = cases[name]
        out = fn(None)
        decoded = (zlib.decompress(out, 31) if kind == "gzip" else brotli.decompress(out) if kind == "br" else out)
        if decoded != (page if name == "decode" else injected):
            print(f"{name}: wrong output", file=sys.stderr)
            return 1
        us = timed(fn, items, args.repeat)
        print(f"{name:<14} {us:8.1f} µs/page  {len(out):6d} bytes out   {description}", flush=True)
    return 0


def cookie_for(tracker: VisitTracker, tenant) -> str:  # type: ignore[no-untyped-def]
    value = tracker.keys.seal_session(tenant.id, tracker.keys.new_session_id(), 3)
    return f"{tenant.cookie.name}={value}"


if __name__ == "__main__":
    sys.exit(main())
