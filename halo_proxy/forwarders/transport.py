"""What every platform module shares: the HTTP call, Retry-After, the status-code fallback and scrubbing.

Retry rules common to all platforms (posthog-python's): network errors, timeouts, 408, 429 and 5xx are worth
another try; any other status is a request the platform will refuse again.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from .models import SendResult

CONNECT_TIMEOUT_S = 5.0  # of a request's send timeout, at most this much may go to connecting

__all__ = ["MAX_RESPONSE_BYTES", "http_result", "parse_json", "post_json", "retry_after", "scrub"]

# Platform answers are small; a larger body is cut, which at worst makes the answer unparseable.
MAX_RESPONSE_BYTES = 256 * 1024
# aiohttp sends larger bodies from a file-like object so writing them never blocks the loop.
_LARGE_BODY_BYTES = 1 << 20
# A Retry-After beyond this is treated as this (a day): a misbehaving header must not park a row for years.
MAX_RETRY_AFTER_S = 86_400.0

Classifier = Callable[[int, Mapping[str, str], bytes], SendResult]

_SCRUB_RULES = (
    (re.compile(r"[^\s@\"']+@[^\s@\"']+"), "<email>"),
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), "<hex>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<ip>"),
    (re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])"), "<ip>"),
    (re.compile(r"\+?\d[\d\s().-]{6,}\d"), "<number>"),
    (re.compile(r"https?://\S+"), "<url>"),
    (re.compile(r"(?i)(access_token|api_secret|token|secret)=\S+"), r"\1=<redacted>"),
)


def scrub(text: object, limit: int = 200) -> str:
    """A platform message made safe for logs and the outbox: emails, hashes, IPs, long numbers, URLs and
    tokens replaced; one line; at most `limit` characters."""
    value = " ".join(str(text).split())
    for pattern, replacement in _SCRUB_RULES:
        value = pattern.sub(replacement, value)
    return value[:limit]


def parse_json(body: bytes) -> Any:
    """The decoded body, or None when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header: delta-seconds, or an HTTP date measured against the response's own
    Date header (so this stays a pure function). None when absent or unreadable."""
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
            sent = parsedate_to_datetime(headers["Date"])
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        seconds = (when - sent).total_seconds()
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def http_result(status: int, headers: Mapping[str, str], detail: str = "", platform_code: str | None = None,
                ) -> SendResult:
    """The verdict from the HTTP status alone, for answers a platform module found nothing more specific in."""
    if 200 <= status < 300:
        return SendResult("ok", "ok", status=status, detail=detail)
    after = retry_after(headers)
    if status == 408:
        return SendResult("retry", "http_408", after, detail or "request timeout", status, platform_code)
    if status == 429:
        return SendResult("retry", "http_429", after, detail or "rate limited", status, platform_code)
    if status >= 500:
        return SendResult("retry", "http_5xx", after, detail or f"server error {status}", status, platform_code)
    if status in (401, 403):
        return SendResult("permanent", "auth", None, detail or f"refused credentials ({status})", status,
                          platform_code)
    if 400 <= status < 500:
        return SendResult("permanent", "http_4xx", None, detail or f"client error {status}", status, platform_code)
    return SendResult("permanent", "http_other", None, detail or f"unexpected status {status}", status,
                      platform_code)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)[:MAX_RESPONSE_BYTES]


async def post_json(
    session: aiohttp.ClientSession,
    request: tuple[str, str, dict[str, str], Any],
    timeout: float,  # noqa: ASYNC109 - becomes aiohttp.ClientTimeout; a timeout is a result, not an exception
    classify: Classifier,
) -> SendResult:
    """Sends a `build_request` tuple with the injected session and classifies the answer.

    The whole exchange (connect, send, read) is bounded by `timeout` seconds. Timeouts and connection errors
    become ``retry``: ``connect`` when no connection was made (the request cannot have arrived), ``timeout`` or
    ``network`` when it may have; their detail names only the error type, never the URL (which may carry a
    token).
    """
    method, url, headers, body = request
    raw = orjson.dumps(body)
    data: bytes | io.BytesIO = io.BytesIO(raw) if len(raw) > _LARGE_BODY_BYTES else raw
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            data=data,
            # A connect phase of its own, so that a connection never made is told apart from an answer not come.
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
            allow_redirects=False,
        ) as response:
            raw = await _read_capped(response)
            return classify(response.status, response.headers, raw)
    except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: it must come first
        return SendResult("retry", "connect", detail="could not connect in time")
    except TimeoutError:
        return SendResult("retry", "timeout", detail=f"no answer within {timeout:g} s")
    except aiohttp.ClientConnectorError as err:  # no connection was made: the request cannot have arrived
        return SendResult("retry", "connect", detail=f"could not connect ({type(err).__name__})")
    except aiohttp.ClientError as err:
        return SendResult("retry", "network", detail=f"connection failed ({type(err).__name__})")
