"""Which proxied requests are page views ("visits"), and why the others are not.

Runs on every proxied request, so the checks go from cheapest to dearest: method, path, request headers, and the
(cached) user-agent parse last.
"""

from __future__ import annotations

from collections.abc import Mapping

from halo_proxy.tracking.agent import classify_agent

# Closed set of reasons, usable as a metric label.
SKIP_METHOD = "method"
SKIP_RESERVED = "reserved"
SKIP_ASSET = "asset"
SKIP_PREFETCH = "prefetch"
SKIP_NOT_DOCUMENT = "not_document"
SKIP_BOT = "bot"
SKIP_REASONS: tuple[str, ...] = (SKIP_METHOD, SKIP_RESERVED, SKIP_ASSET, SKIP_PREFETCH, SKIP_NOT_DOCUMENT, SKIP_BOT)

# File extensions that are never a page a person lands on. Pages (.html, .php, .aspx, none) are absent.
ASSET_EXTENSIONS: frozenset[str] = frozenset({
    "js", "mjs", "cjs", "css", "map", "json", "xml", "txt", "webmanifest", "wasm",
    "png", "jpg", "jpeg", "gif", "webp", "avif", "svg", "ico", "bmp", "tif", "tiff", "heic",
    "woff", "woff2", "ttf", "otf", "eot",
    "mp4", "webm", "mov", "m4v", "mp3", "m4a", "ogg", "wav", "flac", "m3u8", "ts",
    "pdf", "zip", "gz", "br", "zst", "tar", "rar", "7z", "csv", "doc", "docx", "xls", "xlsx", "ppt", "pptx",
})


def is_reserved(path: str, reserved_prefix: str) -> bool:
    """True for the prefix itself and everything under it (`/_halo`, `/_halo/t.js`), not for `/_halox`."""
    prefix = reserved_prefix.rstrip("/")
    if not prefix:
        return False
    return path == prefix or path.startswith(prefix + "/")


def is_asset_path(path: str) -> bool:
    last = path.rsplit("/", 1)[-1]
    dot = last.rfind(".")
    if dot == -1:
        return False
    return last[dot + 1 :].lower() in ASSET_EXTENSIONS


def is_prefetch(headers: Mapping[str, str]) -> bool:
    """Speculative loads: `Sec-Purpose: prefetch` (any value starting so, including `prefetch;prerender`),
    legacy `Purpose: prefetch`, Firefox's `X-moz: prefetch` and Safari's `X-Purpose: preview`."""
    purpose = headers.get("sec-purpose")
    if purpose is not None and purpose.strip().lower().startswith("prefetch"):
        return True
    for name in ("purpose", "x-purpose"):
        purpose = headers.get(name)
        if purpose is not None and purpose.strip().lower() in ("prefetch", "preview"):
            return True
    moz = headers.get("x-moz")
    return moz is not None and moz.strip().lower() == "prefetch"


def is_document_request(headers: Mapping[str, str]) -> bool:
    """A top-level navigation: `Sec-Fetch-Dest: document` when the browser sends fetch metadata, else an `Accept`
    that asks for HTML (older browsers, some cache revalidations)."""
    dest = headers.get("sec-fetch-dest")
    if dest is not None:
        return dest.strip().lower() == "document"
    accept = headers.get("accept")
    return accept is not None and "text/html" in accept.lower()


def skip_reason(method: str, path: str, headers: Mapping[str, str], reserved_prefix: str) -> str | None:
    """None when the request is a page view to track, otherwise one of SKIP_REASONS.

    `path` is the URL path without the query; `headers` any case-insensitive mapping.
    """
    if method != "GET":
        return SKIP_METHOD
    if is_reserved(path, reserved_prefix):
        return SKIP_RESERVED
    if is_asset_path(path):
        return SKIP_ASSET
    if is_prefetch(headers):
        return SKIP_PREFETCH
    if not is_document_request(headers):
        return SKIP_NOT_DOCUMENT
    if classify_agent(headers.get("user-agent")).is_bot:
        return SKIP_BOT
    return None
