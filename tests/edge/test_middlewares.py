"""Admission and the routes' error answers on a bare app shaped as app.py composes them: HaloTrack's routes in a
sub-application under the prefix with the middlewares (tenancy, client address, error answers), and a site
handler that admits by a plain call. The handlers are the tests' own; the real routes are tested where they live."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from halo_proxy.config import parse
from halo_proxy.edge.admission import (
    CLIENT,
    TENANT,
    admit,
    setup_client_address,
    setup_tenancy,
    tenant_free,
)
from halo_proxy.metrics import Metrics
from halo_proxy.routes.common import ApiError, setup_error_answers, setup_fallback
from halo_proxy.storage.errors import StorageError, StorageUnavailable
from halo_proxy.tracking.conversion import InputError

SETTINGS = parse("""
server:
  trusted_proxies: [127.0.0.0/8]
tenants:
  - id: shop
    hosts: [shop.localhost]
    upstream: http://127.0.0.1:9
""", "test.yaml", {})


def rejected(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("halo_rejected_requests_total", {"tenant": "shop", "reason": reason}) or 0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def client(aiohttp_client, metrics):
    app = web.Application()
    reserved = web.Application()
    setup_tenancy(reserved, lambda: SETTINGS)
    setup_client_address(reserved, lambda: SETTINGS)
    setup_error_answers(reserved, metrics)

    @tenant_free
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"tenant": TENANT in request})

    async def who(request: web.Request) -> web.Response:
        client = request[CLIENT]
        return web.json_response({"tenant": request[TENANT].id, "ip": client.ip, "https": client.https})

    failures = {
        "api": ApiError(409, "duplicate", "Already recorded.", "order_id"),
        "input": InputError("invalid_field", "value must be a number", "value"),
        "down": StorageUnavailable("pool timeout"),
        "storage": StorageError("constraint"),
        "oserror": ConnectionRefusedError(),
        "bug": ZeroDivisionError(),
        "redirect": web.HTTPSeeOther(location="/thanks"),
    }

    async def fail(request: web.Request) -> web.Response:
        raise failures[request.match_info["kind"]]

    async def site(request: web.Request) -> web.StreamResponse:
        tenant = admit(request, SETTINGS, metrics, "/_halo", 0.0)
        if isinstance(tenant, web.StreamResponse):
            return tenant
        return web.Response(text=f"site of {tenant.id}")

    reserved.router.add_get("/healthz", health)
    reserved.router.add_get("/who", who)
    reserved.router.add_get("/fail/{kind}", fail)
    setup_fallback(reserved)
    app.add_subapp("/_halo", reserved)
    app.router.add_route("*", "/{tail:.*}", site)
    return await aiohttp_client(app)


@pytest.mark.parametrize(("path", "host", "status", "body"), [
    ("/_halo/who", "shop.localhost", 200, {"tenant": "shop", "ip": "127.0.0.1", "https": False}),
    ("/_halo/who", "SHOP.localhost:8080", 200, {"tenant": "shop", "ip": "127.0.0.1", "https": False}),
    ("/_halo/who", "other.localhost", 421, {"error": "misdirected", "detail": "This host is not served here."}),
    ("/_halo/who", "bad host", 400, {"error": "bad_host",
                                     "detail": "The Host header is missing, repeated or not a host name."}),
    ("/_halo/nothing", "other.localhost", 421, {"error": "misdirected", "detail": "This host is not served here."}),
    ("/_halo/nothing", "shop.localhost", 404, {"error": "not_found", "detail": "No route GET /_halo/nothing."}),
    ("/_halo/healthz", "other.localhost", 200, {"tenant": False}),  # health answers for any Host
])
async def test_tenancy_answers_reserved_routes_in_json(client, path, host, status, body):
    answer = await client.get(path, headers={"Host": host})
    assert (answer.status, await answer.json()) == (status, body)


@pytest.mark.parametrize(("host", "status", "text"), [
    ("shop.localhost", 200, "site of shop"),
    ("other.localhost", 421, "This host is not served here."),
    ("bad host", 400, "The Host header is missing, repeated or not a host name."),
])
async def test_admit_refuses_forwarded_requests_as_html_before_the_site_sees_them(client, metrics, host, status,
                                                                                   text):
    answer = await client.get("/page", headers={"Host": host})
    assert answer.status == status and text in await answer.text()
    if status == 400:
        assert answer.headers["Connection"] == "close"
        assert metrics.registry.get_sample_value("halo_bad_requests_total", {"reason": "host"}) == 1


async def test_a_path_the_router_gives_the_site_but_an_origin_may_read_as_reserved_is_refused(client):
    # `%2F` keeps the router on the site's catch-all; the boundary refuses a path an origin may read as reserved.
    answer = await client.get("/_halo%2Fwho", headers={"Host": "shop.localhost"})
    assert answer.status == 400 and "reserved" in await answer.text()


@pytest.mark.parametrize(("xff", "proto", "ip", "https"), [
    (None, None, "127.0.0.1", False),
    ("203.0.113.9", "https", "203.0.113.9", True),  # the peer is a trusted proxy
])
async def test_client_address_is_believed_from_a_trusted_proxy(client, xff, proto, ip, https):
    headers = {"Host": "shop.localhost"}
    if xff:
        headers |= {"X-Forwarded-For": xff, "X-Forwarded-Proto": proto}
    body = await (await client.get("/_halo/who", headers=headers)).json()
    assert (body["ip"], body["https"]) == (ip, https)


@pytest.mark.parametrize(("kind", "status", "error", "retry_after"), [
    ("api", 409, "duplicate", None),
    ("input", 422, "invalid_field", None),
    ("down", 503, "database_unavailable", "5"),
    ("oserror", 503, "database_unavailable", "5"),
    ("storage", 503, "storage_error", "5"),
    ("bug", 500, "internal_error", None),
])
async def test_error_answers_are_the_contract_s_json_and_counted(client, metrics, kind, status, error, retry_after):
    answer = await client.get(f"/_halo/fail/{kind}", headers={"Host": "shop.localhost"})
    body = await answer.json()
    assert (answer.status, body["error"]) == (status, error)
    assert answer.headers.get("Retry-After") == retry_after
    assert rejected(metrics, error) == 1
    if kind in ("api", "input"):
        assert body["field"] in ("order_id", "value")


async def test_an_http_answer_raised_by_a_route_is_not_an_error(client, metrics):
    answer = await client.get("/_halo/fail/redirect", headers={"Host": "shop.localhost"}, allow_redirects=False)
    assert (answer.status, answer.headers["Location"]) == (303, "/thanks")
    assert metrics.registry.get_sample_value("halo_rejected_requests_total",
                                             {"tenant": "shop", "reason": "internal_error"}) is None



async def test_the_router_s_own_refusal_is_the_contract_s_json(client, metrics):
    # The prefix itself matches no route of the sub-application: the router's 404, answered as JSON.
    answer = await client.post("/_halo", headers={"Host": "shop.localhost"})
    assert (answer.status, answer.content_type) == (404, "application/json")
    assert (await answer.json())["error"] == "not_found"
    assert rejected(metrics, "not_found") == 1


@pytest.mark.parametrize(("head", "status", "error"), [
    (b"GET http://evil.example/_halo/who HTTP/1.1\r\nHost: shop.localhost\r\n", 400, "bad_target"),
    (b"POST /_halo/who HTTP/1.1\r\nHost: shop.localhost\r\nTransfer-Encoding: gzip, chunked\r\n", 501,
     "bad_transfer_encoding"),
    (b"GET /_halo/who HTTP/1.1\r\nHost: bad_host!\r\n", 400, "bad_host"),
])
async def test_halotrack_s_routes_pass_the_same_boundary_as_forwarded_requests(client, head, status, error):
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(head + b"Connection: close\r\n\r\n" + (b"0\r\n\r\n" if b"chunked" in head else b""))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    first, _, rest = answer.partition(b"\r\n")
    assert first.startswith(b"HTTP/1.1 %d" % status), answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == error
