"""HaloTrack's own JSON routes under the reserved prefix: the shared request handling.

Every route reads a bounded body and answers errors as the contract's JSON `{"error", "detail", "field"}`, all
from one place: `setup_error_answers`, the middleware behind admission. Bad input never yields a 500: a database
outage is a 503 with Retry-After, so senders retry and nothing is lost. `setup_fallback` answers 404 for any
other path under the prefix, which is never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import brotli
import orjson
from aiohttp import web

from ..edge.admission import CLIENT, TENANT, Handler
from ..metrics import Metrics
from ..storage.errors import StorageError, StorageUnavailable
from ..tracking.conversion import InputError
from ..tracking.identity import IdentityError
from . import forms

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/json"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
RETRY_AFTER_DB_S = "5"


class ApiError(Exception):
    """An answer other than success, in the contract's error shape."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = headers

    def response(self) -> web.Response:
        payload: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.field:
            payload["field"] = self.field
        response = web.Response(status=self.status, body=orjson.dumps(payload), content_type="application/json",
                                headers=self.headers)
        if self.status in (408, 413):  # the rest of the body is not read: the connection cannot be reused
            response.force_close()
        return response


async def call(route: Callable[[], Awaitable[web.StreamResponse]], on_error: Callable[[str], None],
               path: str, method: str = "") -> web.StreamResponse:
    """Run a route body: ApiError as its JSON answer, storage trouble as 503 with Retry-After, never a 500."""
    request_line = f"{method} {path}".strip()
    try:
        return await route()
    except ApiError as err:
        on_error(err.code)
        return err.response()
    except (InputError, IdentityError) as err:  # the parsers' verdict on a well-formed body: 422, field named
        code = "invalid_field" if isinstance(err, IdentityError) else err.code
        on_error(code)
        return ApiError(422, code, err.detail, err.field).response()
    except (StorageUnavailable, OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError) as err:
        on_error("database_unavailable")
        log.warning("database unavailable on %s: %s", path, type(err).__name__)
        return ApiError(503, "database_unavailable", "The database is not available; retry later.",
                        headers={"Retry-After": RETRY_AFTER_DB_S}).response()
    except StorageError as err:
        on_error("storage_error")
        log.error("storage error on %s: %s", path, err)
        return ApiError(503, "storage_error", "The request could not be stored; retry later.",
                        headers={"Retry-After": RETRY_AFTER_DB_S}).response()
    except web.HTTPException as err:
        if err.status < 400:
            raise  # a redirect (303) and the like are answers, not failures
        # The router's own refusals (405 for a known path with another method) in the contract's shape.
        code = "method_not_allowed" if err.status == 405 else "not_found" if err.status == 404 else "bad_request"
        on_error(code)
        allow = err.headers.get("Allow")
        return ApiError(err.status, code, f"No route {request_line}.",
                        headers={"Allow": allow} if allow else None).response()
    except Exception:  # a defect of HaloTrack's: still the contract's JSON shape, logged once with its cause
        on_error("internal_error")
        log.exception("unexpected error on %s", path)
        return ApiError(500, "internal_error", "HaloTrack could not answer this request.").response()


def setup_error_answers(app: web.Application, metrics: Metrics) -> None:
    """Every route under the reserved prefix answers its errors through `call`, each counted by tenant and code
    (halo_rejected_requests_total)."""
    rejected = metrics.rejected

    @web.middleware
    async def error_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
        if TENANT not in request:  # health: nothing of a tenant's to count
            return await handler(request)
        tenant_id = request[TENANT].id

        def count(code: str) -> None:
            rejected.labels(tenant=tenant_id, reason=code).inc()

        return await call(lambda: handler(request), count, request.path, request.method)

    app.middlewares.append(error_answers)


def handler_for(body: Callable[..., Awaitable[web.StreamResponse]], routes: Callable[[], Any],
                settings: Callable[[], Any]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler for a route body `body(routes, request, tenant, settings, client_ip)`: the tenant and
    client come from the admission middlewares, `routes()` gives the bodies' object once storage has started
    (None without a database: the route answers 404)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        found = routes()
        if found is None:
            raise ApiError(404, "not_found", "This route needs HaloTrack's database, which is not configured.")
        return await body(found, request, request[TENANT], settings(), request[CLIENT].ip)

    handle.__name__ = f"handle_{body.__name__}"
    return handle


def setup_fallback(app: web.Application, prefix: str = "") -> None:
    """Any other path under the prefix: 405 with Allow for a known path asked with another method, else 404;
    never forwarded. Register it after every route of the prefix."""

    async def handle_reserved_unknown(request: web.Request) -> web.Response:
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is fallback:
                continue
            match, methods = await resource.resolve(request)
            if match is None:
                allowed |= methods  # the path is known, under other methods
        if allowed:
            raise ApiError(405, "method_not_allowed", f"{request.path} takes {', '.join(sorted(allowed))}.",
                           headers={"Allow": ", ".join(sorted(allowed))})
        raise ApiError(404, "not_found", f"No route {request.method} {request.path}.")

    fallback = app.router.add_route("*", prefix + "/{tail:.*}", handle_reserved_unknown).resource


def media_type(request: web.Request) -> str:
    """The request's media type, parsed by `forms.media_type` (bounded; not aiohttp's `content_type`, whose
    standard-library parser recurses on a Content-Type of many parentheses)."""
    return forms.media_type(request.headers.get("Content-Type"))


async def read_body(request: web.Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The body, decoded from its Content-Encoding (gzip, deflate, br), refused with 413 past `limit` bytes
    sent or decoded (before reading when Content-Length says so), 408 when it has not all arrived in `timeout_s`,
    400 when the visitor breaks it off or its framing or coding is broken.

    The proxy never decodes a body: aiohttp's own decoding is off (see app.py), so this is the only place."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "body_too_large", f"The body is larger than {limit} bytes.")
    decoder = body_decoder(request.headers.getall("Content-Encoding", ()), limit)
    chunks: list[bytes] = []
    size = 0
    content = request.content
    try:
        # The whole body within `timeout_s`, not only some progress: a route body is small (max_body_kb), so a
        # visitor trickling a byte now and then cannot hold the connection for longer than that.
        async with asyncio.timeout(timeout_s):
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "body_too_large", f"The body is larger than {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError as err:
        raise ApiError(408, "body_timeout", f"The body did not arrive within {timeout_s:g} s.") from err
    except (ConnectionError, web.RequestPayloadError, aiohttp.ClientPayloadError) as err:
        raise ApiError(400, "body_incomplete", "The body was broken off or its framing is invalid.") from err
    body = b"".join(chunks)
    return body if decoder is None else decoder(body)


def body_decoder(codings: list[str] | tuple[str, ...], limit: int):  # type: ignore[no-untyped-def]
    """A function decoding a body of these Content-Encodings (applied in order, RFC 9110 8.4), its output
    capped at `limit` bytes (a 1 KB gzip bomb is not inflated to a gigabyte); None for identity."""
    names = [c.strip().lower() for value in codings for c in value.split(",") if c.strip()]
    names = [n for n in names if n != "identity"]
    if not names:
        return None
    for name in names:
        if name not in _DECODERS:
            raise ApiError(415, "unsupported_content_encoding",
                           "Send the body uncompressed, or as gzip, deflate or br.")
    if len(names) > 2:
        raise ApiError(415, "unsupported_content_encoding", "At most two content codings are accepted.")

    def decode(body: bytes) -> bytes:
        for name in reversed(names):
            body = _DECODERS[name](body, limit)
        return body

    return decode


def _zlib(wbits: int):  # type: ignore[no-untyped-def]
    def decode(body: bytes, limit: int) -> bytes:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
            if len(out) > limit:
                raise ApiError(413, "body_too_large", f"The decoded body is larger than {limit} bytes.")
            if not inflater.eof or inflater.unused_data:
                raise ApiError(400, "invalid_encoding", "The compressed body is truncated or has trailing bytes.")
        except zlib.error as err:
            if wbits == 15:  # "deflate" sent as a raw deflate stream, as some clients do
                return _zlib(-15)(body, limit)
            raise ApiError(400, "invalid_encoding", "The compressed body could not be decoded.") from err
        return out

    return decode


def _brotli(body: bytes, limit: int) -> bytes:
    decompressor = brotli.Decompressor()
    try:
        out = decompressor.process(body, output_buffer_limit=limit + 1)
    except brotli.error as err:
        raise ApiError(400, "invalid_encoding", "The compressed body could not be decoded.") from err
    if len(out) > limit:
        raise ApiError(413, "body_too_large", f"The decoded body is larger than {limit} bytes.")
    if not decompressor.is_finished():
        raise ApiError(400, "invalid_encoding", "The compressed body is truncated.")
    return out


_DECODERS = {"gzip": _zlib(31), "x-gzip": _zlib(31), "deflate": _zlib(15), "br": _brotli}


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise ApiError(400, "invalid_json", "The body is empty; a JSON object is expected.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {err.msg} at position {err.pos}.") from err
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    return data


def require_json(request: web.Request) -> None:
    if media_type(request) not in JSON_TYPES:
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")


def json_ok(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json",
                        headers=headers)
