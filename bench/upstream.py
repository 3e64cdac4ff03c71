"""The benchmark's origin site: a small aiohttp server answering `/` and `/page` with a ~4 KiB HTML page, and
`/gz30` with a 30 KiB one served compressed (`Content-Encoding: gzip`, level 6, as a typical origin sends it).

    python bench/upstream.py --port 9001

`/gz30-plain` is the same compressed bytes with `Cache-Control: no-transform` added, which a proxy must pass on
as they are (HaloTrack does not inject into it); `/gz30-unique?v=<token>` differs per request (the token in its
footer), gzipped per request. Every other path answers 404. The pages are built (and
compressed) once at import so the origin costs as little as possible per request; it is not what is being
measured.
"""

from __future__ import annotations

import argparse
import gzip

from aiohttp import web

PAGE_BYTES = 4096
GZ_PAGE_BYTES = 30 * 1024
GZ_LEVEL = 6  # zlib's default, what an origin's on-the-fly gzip typically uses


def build_page(size: int = PAGE_BYTES) -> bytes:
    """A plain product-listing page of exactly `size` bytes (UTF-8)."""
    head = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>Bench shop</title><link rel=\"stylesheet\" href=\"/static/site.css\"></head>\n<body>\n"
        '<nav><a href="/">Home</a> <a href="/page">Products</a> <a href="/contact">Contact</a></nav>\n'
        "<h1>Products</h1>\n<ul>\n"
    )
    tail = "</ul>\n<footer>Bench shop, 1 Example Street</footer>\n</body></html>\n"
    items = []
    n = 0
    while len(head) + sum(map(len, items)) + len(tail) < size:
        n += 1
        items.append(f'<li><a href="/product/{n}">Product {n}</a> <span class="price">{n * 7} EUR</span></li>\n')
    body = head + "".join(items) + tail
    # Trim or pad inside the footer so the page has the exact size.
    extra = len(body) - size
    if extra > 0:
        items.pop()
        body = head + "".join(items) + tail
    pad = size - len(body)
    body = body.replace("</footer>", " " * pad + "</footer>", 1)
    return body.encode()


PAGE = build_page()
GZ_PAGE = build_page(GZ_PAGE_BYTES)
GZ_BODY = gzip.compress(GZ_PAGE, compresslevel=GZ_LEVEL, mtime=0)


async def handle_page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")


GZ_HEADERS = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
GZ_PLAIN_HEADERS = GZ_HEADERS | {"Cache-Control": "no-transform"}


async def handle_gz(request: web.Request) -> web.Response:
    """The 30 KiB page, gzip-compressed, whatever the request's Accept-Encoding (every bench client sends gzip)."""
    return web.Response(body=GZ_BODY, content_type="text/html", charset="utf-8", headers=GZ_HEADERS)


async def handle_gz_plain(request: web.Request) -> web.Response:
    return web.Response(body=GZ_BODY, content_type="text/html", charset="utf-8", headers=GZ_PLAIN_HEADERS)


_GZ_HEAD, _, _GZ_TAIL = GZ_PAGE.partition(b"</footer>")


async def handle_gz_unique(request: web.Request) -> web.Response:
    """The 30 KiB page with the request's `v` in its footer, gzipped per request (level 1, to spare the origin):
    a page no two visitors get byte for byte (a per-visit token), which no cache of injected pages can serve."""
    token = request.query.get("v", "").encode()[:32]
    body = gzip.compress(_GZ_HEAD + b" " + token + b"</footer>" + _GZ_TAIL, compresslevel=1, mtime=0)
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=GZ_HEADERS)


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", handle_page)
    app.router.add_get("/page", handle_page)
    app.router.add_get("/gz30", handle_gz)
    app.router.add_get("/gz30-plain", handle_gz_plain)
    app.router.add_get("/gz30-unique", handle_gz_unique)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark origin: a ~4 KiB HTML page at / and /page, a gzipped "
                                                 "30 KiB one at /gz30 and /gz30-plain (no-transform).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None,
                backlog=2048)


if __name__ == "__main__":
    main()
