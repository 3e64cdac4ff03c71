"""HaloTrack's own JSON routes under the reserved prefix: the shared request handling.

Every route resolves its tenant from the Host header, reads a bounded body, and answers errors as the contract's
JSON `{"error", "detail", "field"}`. Bad input never yields a 500: a database outage is a 503 with Retry-After,
so senders retry and nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from .storage.errors import StorageError, StorageUnavailable

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
        return web.Response(status=self.status, body=orjson.dumps(payload), content_type="application/json",
                            headers=self.headers)


async def call(route: Callable[[], Awaitable[web.StreamResponse]], on_error: Callable[[str], None],
               path: str) -> web.StreamResponse:
    """Run a route body: ApiError as its JSON answer, storage trouble as 503 with Retry-After, never a 500."""
    try:
        return await route()
    except ApiError as err:
        on_error(err.code)
        return err.response()
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


def media_type(request: web.Request) -> str:
    return request.content_type.lower() if request.content_type else ""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refused with 413 past `limit` bytes (before reading when Content-Length says so)."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "body_too_large", f"The body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"The body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


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
