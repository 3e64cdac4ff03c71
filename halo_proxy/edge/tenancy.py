"""Tenancy at the edge: which tenant a request is for (its Host), and who sent it (the client address, believed
from X-Forwarded-For only when the peer is a trusted proxy)."""

from __future__ import annotations

import functools
from typing import NamedTuple

from aiohttp import web

from ..config import Settings, Tenant
from ..tracking.clientip import client_ip, parse_ip
from .boundary import Host, parse_host


class Client(NamedTuple):
    """Who sent a request, as far as HaloTrack can believe it."""

    ip: str | None  # the visitor's address: the peer, or the last untrusted hop of a trusted proxy's chain
    forwarded_for: str | None  # the X-Forwarded-For to send upstream
    https: bool  # the visitor's own scheme (a trusted TLS proxy's X-Forwarded-Proto)
    trusted: bool  # the peer is one of `server.trusted_proxies`


def request_host(request: web.Request) -> Host | None:
    """The request's Host header, parsed strictly; None when it is missing or malformed. (A repeated Host
    never gets here: aiohttp's parser refuses it with 400, tests/edge/test_proxy_boundary.py checks.)"""
    return parse_host(request.headers.get("Host"))


def tenant_for(request: web.Request, settings: Settings) -> Tenant | int:
    """The request's tenant, or the status that refuses it: 400 for a malformed Host, 421 for a host that no
    tenant serves."""
    host = request_host(request)
    if host is None:
        return 400
    tenant = settings.tenant_for_name(host.name)
    return 421 if tenant is None else tenant


def client_address(request: web.Request, trusted: tuple) -> Client:
    """Who sent the request. X-Forwarded-For and X-Forwarded-Proto are believed only from a trusted proxy; the
    peer is then appended to the chain. From anyone else they are replaced: the peer is the client."""
    peer = request.remote
    if not trusted or not _is_trusted(peer, trusted):  # the common case: the socket's address is canonical
        return Client(peer, peer, request.secure, False)
    headers = request.headers
    xff = ", ".join(headers.getall("X-Forwarded-For")) if "X-Forwarded-For" in headers else None
    proto = headers.get("X-Forwarded-Proto")
    https = proto.split(",")[0].strip().lower() == "https" if proto else request.secure
    return Client(client_ip(peer, xff, trusted), (f"{xff}, {peer}" if xff else peer), https, True)


@functools.lru_cache(maxsize=1024)
def _is_trusted(peer: str | None, trusted: tuple) -> bool:
    address = parse_ip(peer)
    return address is not None and any(address in net for net in trusted)
