"""The script tag through the running proxy: a real upstream on loopback serves pages with each coding, CSP, cache
and range header, and what the visitor receives decodes to the upstream's bytes plus the one tag."""

from __future__ import annotations

import gzip
import zlib

import aiohttp
import brotli
import pytest
from aiohttp import web

from halo_proxy.app import create_app
from halo_proxy.config import parse
from halo_proxy.metrics import Metrics

HOST = "shop.localhost"
TAG = b'<script src="/_halo/t.js" async></script>'
PAGE = b"<!doctype html><html><head><title>Shop</title></head><body><p>" + b"hello " * 2000 + b"</p></body></html>"
BOMB = brotli.compress(b"<html><head>" + b"\0" * (40 << 20), quality=1)  # 40 MiB in a few hundred bytes
NAV = {"Host": HOST, "Sec-Fetch-Dest": "document", "Accept": "text/html"}


def encode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "br":
        return brotli.compress(data)
    return data


def decode(coding: str | None, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "deflate":
        return zlib.decompress(data)
    if coding == "br":
        return brotli.decompress(data)
    return data


def create_site() -> web.Application:
    async def page(request: web.Request) -> web.StreamResponse:
        q = request.query
        coding = q.get("coding", "identity")
        body = encode(coding, PAGE) if coding not in ("broken", "bomb") else BOMB if coding == "bomb" else \
            b"\x1f\x8b\x08\x00garbage-not-gzip"
        headers = {"Content-Type": q.get("type", "text/html; charset=utf-8"), "ETag": '"v1"'}
        if coding != "identity":
            headers["Content-Encoding"] = {"broken": "gzip", "bomb": "br"}.get(coding, coding)
        for name in ("Cache-Control", "Content-Security-Policy"):
            if name in q:
                headers[name] = q[name]
        if "stream" in q:  # chunked, in small writes: the head and the tag position split across chunks
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            for i in range(0, len(body), 7):
                await response.write(body[i:i + 7])
            await response.write_eof()
            return response
        status = int(q.get("status", "200"))
        if status == 304:
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(body=body, status=status, headers=headers)

    async def tagged(request: web.Request) -> web.Response:
        return web.Response(body=b"<html><head>" + TAG + b"</head><body>x</body></html>", content_type="text/html")

    async def ranged(request: web.Request) -> web.Response:
        return web.Response(body=PAGE[:100], status=206, content_type="text/html",
                            headers={"Content-Range": f"bytes 0-99/{len(PAGE)}"})

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/tagged", tagged)
    app.router.add_get("/ranged", ranged)
    return app


def settings_for(port: int, inject: bool = True):
    return parse(f"""
tenants:
  - id: shop
    hosts: [{HOST}]
    upstream: http://127.0.0.1:{port}
    inject: {{script: {"true" if inject else "false"}}}
""", "test.yaml", {})


@pytest.fixture
async def site(aiohttp_server):
    return await aiohttp_server(create_site())


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
async def proxy(aiohttp_server, site, metrics):
    return await aiohttp_server(create_app(settings_for(site.port), metrics))


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def fetch(client, proxy, path: str, headers=None, method="GET"):
    async with client.request(method, f"http://127.0.0.1:{proxy.port}{path}", headers=headers or NAV) as resp:
        return resp.status, resp.headers, await resp.read()


def with_tag(page: bytes) -> bytes:
    at = page.index(b"<head>") + len(b"<head>")
    return page[:at] + TAG + page[at:]


def count(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("coding", ["identity", "gzip", "deflate", "br"])
@pytest.mark.parametrize("stream", [False, True])
async def test_each_coding_is_decoded_injected_and_reencoded(proxy, client, metrics, coding, stream):
    path = f"/page?coding={coding}" + ("&stream=1" if stream else "")
    status, headers, body = await fetch(client, proxy, path)
    assert status == 200
    assert headers.get("Content-Encoding") == (None if coding == "identity" else coding)
    assert decode(headers.get("Content-Encoding"), body) == with_tag(PAGE)
    assert headers["ETag"] == 'W/"v1"'
    # Whole at once: a corrected length; streamed (however the upstream's small writes coalesce): chunked
    assert headers.get("Content-Length", str(len(body))) == str(len(body))
    assert count(metrics, "halo_injections_total", tenant="shop", outcome="head") == 1


async def test_a_csp_nonce_is_reused_and_a_csp_without_a_way_in_is_counted(proxy, client, metrics):
    csp = "script-src 'nonce-abc123' 'strict-dynamic'"
    _, headers, body = await fetch(client, proxy, f"/page?Content-Security-Policy={csp}")
    assert b'<script src="/_halo/t.js" async nonce="abc123"></script>' in body
    assert headers["Content-Security-Policy"] == csp
    _, _, body = await fetch(client, proxy, "/page?Content-Security-Policy=script-src 'none'")
    assert body == PAGE
    assert count(metrics, "halo_injection_skipped_total", tenant="shop", reason="csp") == 1


@pytest.mark.parametrize("path, headers, method, reason", [
    ("/page?type=application/json", NAV, "GET", None),
    ("/page?type=text/plain", NAV, "GET", None),
    ("/page", NAV, "HEAD", None),
    ("/page", {"Host": HOST, "Sec-Fetch-Dest": "empty", "Accept": "text/html"}, "GET", None),
    ("/page", {**NAV, "HX-Request": "true"}, "GET", None),
    ("/page", {"Host": HOST, "Accept": "*/*"}, "GET", None),
    ("/page?Cache-Control=public, no-transform", NAV, "GET", "no_transform"),
    ("/page?status=304", NAV, "GET", "status"),
    ("/ranged", {**NAV, "Range": "bytes=0-99"}, "GET", "status"),  # a 206
    ("/page?coding=identity", {**NAV, "Range": "bytes=0-99"}, "GET", "range"),
])
async def test_untouched_answers(proxy, client, metrics, path, headers, method, reason):
    site_headers = {"Host": HOST, **{k: v for k, v in headers.items() if k != "Host"}}
    status, out_headers, body = await fetch(client, proxy, path, site_headers, method)
    assert TAG not in body
    if status == 200 and method == "GET":
        assert body == PAGE
        assert out_headers["ETag"] == '"v1"'
    if reason is not None:
        assert count(metrics, "halo_injection_skipped_total", tenant="shop", reason=reason) == 1
    assert count(metrics, "halo_injections_total", tenant="shop", outcome="head") == 0


async def test_a_page_that_carries_the_tag_already_is_left_alone(proxy, client, metrics):
    _, _, body = await fetch(client, proxy, "/tagged")
    assert body.count(b"/_halo/t.js") == 1
    assert count(metrics, "halo_injections_total", tenant="shop", outcome="already_tagged") == 1


async def test_a_page_that_cannot_be_decoded_is_passed_on_as_it_came(proxy, client, metrics):
    status, headers, body = await fetch(client, proxy, "/page?coding=broken")
    assert status == 200
    assert body == b"\x1f\x8b\x08\x00garbage-not-gzip"
    assert headers["ETag"] == '"v1"'
    assert count(metrics, "halo_injections_total", tenant="shop", outcome="decode_error") == 1


async def test_inject_off_leaves_every_page_alone(aiohttp_server, site, client):
    proxy = await aiohttp_server(create_app(settings_for(site.port, inject=False), Metrics()))
    _, headers, body = await fetch(client, proxy, "/page?coding=gzip")
    assert gzip.decompress(body) == PAGE


async def test_a_compression_bomb_is_passed_on_as_it_came(proxy, client, metrics):
    status, headers, body = await fetch(client, proxy, "/page?coding=bomb")
    assert status == 200 and body == BOMB and headers["Content-Encoding"] == "br"
    assert count(metrics, "halo_injections_total", tenant="shop", outcome="too_large") == 1


async def test_a_page_served_again_byte_for_byte_is_answered_from_the_injected_pages(proxy, client, metrics):
    first = await fetch(client, proxy, "/page?coding=gzip")
    second = await fetch(client, proxy, "/page?coding=gzip")
    assert first[2] == second[2] and gzip.decompress(second[2]) == with_tag(PAGE)
    assert count(metrics, "halo_injections_total", tenant="shop", outcome="head") == 2
    csp = await fetch(client, proxy, "/page?coding=gzip&Content-Security-Policy=script-src 'nonce-n1'")
    assert b'nonce="n1"' in gzip.decompress(csp[2])  # another tag: injected afresh
