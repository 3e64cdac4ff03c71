"""The benchmark's origin site: a small aiohttp server answering `/` and `/page` with a ~4 KiB HTML page.

    python bench/upstream.py --port 9001

Every other path answers 404. The page is built once at import so the origin costs as little as possible
per request; it is not what is being measured.
"""

from __future__ import annotations

import argparse

from aiohttp import web

PAGE_BYTES = 4096


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


async def handle_page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", handle_page)
    app.router.add_get("/page", handle_page)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark origin: a ~4 KiB HTML page at / and /page.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None,
                backlog=2048)


if __name__ == "__main__":
    main()
