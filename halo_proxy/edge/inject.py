"""The HTML injector: puts HaloTrack's one `<script>` tag into a streamed page. Sans-IO: bytes in, bytes out, its
state kept between chunks; the proxy feeds it (wiring: issue 12's next slice).

Where the tag goes (CONTRACT.md, Browser side): right after the opening `<head …>` tag, else right before the
opening `<body …>` tag, else at the very start of the document. Only the page's beginning is scanned: a small
tokenizer that knows what can hide a `<head`: comments, doctype and processing instructions, quoted attribute
values, and raw-text elements (`<script>`, `<style>`, `<title>`, ...) whose content is not markup. Not an HTML
parser, by design: `lol-html-py` (0.1.2) was examined and does not fit (a fixed rewriter with no element handlers,
and a Tokio runtime of its own), and html5lib/lxml parse whole documents; finding the first `<head`/`<body` open tag
is all that is needed. Bytes are held back only until the insertion point is known and the rest of `<head>` has
been seen (to leave a page that already carries the tag untouched), at most `lookahead` bytes; then everything
streams through unchanged. A page in UTF-16 (its BOM) is left untouched: the tag is ASCII, the page is not.

`Recoder` does the same through a content coding (gzip, deflate, br): decoded in bounded pieces (a small gzip bomb
never becomes one large buffer), injected, re-encoded in the same coding with a flush per chunk so the page keeps
streaming. gzip and deflate go through ISA-L (`isal`, the same formats as zlib): re-encoding a 30 KB page takes it
about 70 µs at level 1 where zlib needs 365 µs at level 1 and 790 µs at its default, with a smaller result than
zlib's level 1 (`bench/micro.py inject`). Brotli at quality 1 costs about as much and stays within 10 % of quality 4's
size on pages.

`csp_allows` decides from the upstream's Content-Security-Policy whether a same-origin script may run, and with
which nonce; `plan_injection` decides, from the request and the upstream's answer head, whether to inject (or why
not: HEAD, 1xx/204/206/304, Range, not HTML, no-transform, a coding it cannot re-encode, a CSP without a way in)
and how the answer's headers change (length and digests dropped, a strong ETag made weak).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

import brotli
from isal import isal_zlib

LOOKAHEAD = 64 * 1024  # bytes held back at most while the insertion point (and an existing tag) is looked for
DECODE_PIECE = 256 * 1024  # decoded bytes produced at a time from one compressed chunk
GZIP_LEVEL = 1  # ISA-L's levels are 0-3; 1 is its balanced default
BROTLI_QUALITY = 1

# Outcomes, usable as metric labels.
INJECTED_HEAD = "head"
INJECTED_BODY = "body"
INJECTED_START = "start"
ALREADY_TAGGED = "already_tagged"
NOT_ASCII_COMPATIBLE = "charset"

_RAW_TEXT = frozenset({b"script", b"style", b"title", b"textarea", b"template", b"noscript", b"xmp", b"iframe",
                       b"noembed", b"noframes"})
_NAME_END = b" \t\n\r\f/>"
_BOMS = (b"\xff\xfe", b"\xfe\xff")


class Injector:
    """Feed the page's bytes in order (`feed`), then `finish`; each returns the bytes to send on."""

    def __init__(self, tag: bytes, marker: bytes, lookahead: int = LOOKAHEAD):
        self.tag = tag
        self.marker = marker.lower()  # a page whose beginning holds this (the script's path) is already tagged
        self.lookahead = lookahead
        self.outcome: str | None = None  # set once decided
        self._held = bytearray()
        self._pos = 0  # where the tokenizer resumes in _held
        self._at: int | None = None  # the insertion point, once found
        self._where: str | None = None

    # -- the stream ----------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        if self.outcome is not None:
            return data
        self._held += data
        if len(self._held) >= 2 and self._held[:2] in _BOMS:
            return self._decide(NOT_ASCII_COMPATIBLE, None)
        if self._at is None:
            self._scan()
        if self._at is not None:
            return self._after_insertion_point(final=False)
        if len(self._held) > self.lookahead:  # neither <head nor <body early enough
            return self._decide(INJECTED_START, 0)
        return b""

    def finish(self) -> bytes:
        if self.outcome is not None:
            return b""
        if len(self._held) >= 2 and self._held[:2] in _BOMS:
            return self._decide(NOT_ASCII_COMPATIBLE, None)
        if self._at is not None:
            return self._after_insertion_point(final=True)
        return self._decide(INJECTED_START, 0)

    # -- deciding ------------------------------------------------------------------------------------------

    def _after_insertion_point(self, *, final: bool) -> bytes:
        """The insertion point is known: wait (bounded) for the end of <head> to see whether the tag is there."""
        held = bytes(self._held)
        lower = held.lower()
        if self.marker in lower:
            return self._decide(ALREADY_TAGGED, None)
        at = self._at or 0
        head_seen = self._where == INJECTED_BODY or b"</head" in lower[at:] or b"<body" in lower[at:]
        if final or head_seen or len(held) - at > self.lookahead:
            return self._decide(self._where or INJECTED_START, at)
        return b""

    def _decide(self, outcome: str, at: int | None) -> bytes:
        self.outcome = outcome
        held = bytes(self._held)
        self._held = bytearray()
        if at is None:
            return held
        return held[:at] + self.tag + held[at:]

    # -- the tokenizer -------------------------------------------------------------------------------------

    def _scan(self) -> None:
        """Walk whole tokens from `_pos`; stop at the insertion point, or where a token is not complete yet."""
        buf = self._held
        n = len(buf)
        while True:
            lt = buf.find(b"<", self._pos)
            if lt == -1:
                self._pos = n
                return
            if lt + 1 >= n:
                self._pos = lt
                return
            nxt = buf[lt + 1]
            if nxt == 0x21:  # "!": a comment, a doctype, CDATA
                if buf[lt:lt + 4] == b"<!--":
                    end = buf.find(b"-->", lt + 4)
                    if end == -1:
                        self._pos = lt
                        return
                    self._pos = end + 3
                    continue
                if n - lt < 4 and b"<!--".startswith(bytes(buf[lt:])):
                    self._pos = lt
                    return
                end = buf.find(b">", lt + 2)
                if end == -1:
                    self._pos = lt
                    return
                self._pos = end + 1
                continue
            if nxt == 0x3F or nxt == 0x2F:  # "?" a processing instruction, "/" an end tag
                end = buf.find(b">", lt + 2)
                if end == -1:
                    self._pos = lt
                    return
                self._pos = end + 1
                continue
            if not (0x41 <= nxt <= 0x5A or 0x61 <= nxt <= 0x7A):  # "<" not opening a tag: text
                self._pos = lt + 1
                continue
            name_end = lt + 1
            while name_end < n and buf[name_end] not in _NAME_END:
                name_end += 1
            if name_end >= n:
                self._pos = lt
                return
            name = bytes(buf[lt + 1:name_end]).lower()
            if name == b"body":
                self._at, self._where = lt, INJECTED_BODY
                return
            tag_end = _tag_end(buf, name_end)
            if tag_end == -1:
                self._pos = lt
                return
            if name == b"head":
                self._at, self._where = tag_end, INJECTED_HEAD
                return
            if name in _RAW_TEXT and buf[tag_end - 2] != 0x2F:  # content up to its end tag is not markup
                close = _find_ci(buf, b"</" + name, tag_end)
                if close == -1:
                    self._pos = lt
                    return
                self._pos = close
                continue
            self._pos = tag_end


def _tag_end(buf: bytearray, start: int) -> int:
    """Just past the `>` closing the tag whose attributes begin at `start` (quotes respected), or -1."""
    i, n = start, len(buf)
    quote = 0
    while i < n:
        c = buf[i]
        if quote:
            if c == quote:
                quote = 0
        elif c == 0x22 or c == 0x27:
            quote = c
        elif c == 0x3E:
            return i + 1
        i += 1
    return -1


def _find_ci(buf: bytearray, needle: bytes, start: int) -> int:
    """Where `needle` (lowercase) starts in `buf` from `start`, ignoring ASCII case, or -1."""
    found = bytes(buf[start:]).lower().find(needle)
    return -1 if found == -1 else found + start


# ---------------------------------------------------------------------------------------------------------
# Through a content coding.


class Recoder:
    """An Injector behind a decoder and before an encoder of the same content coding."""

    CODINGS = ("gzip", "x-gzip", "deflate", "br")

    def __init__(self, coding: str, injector: Injector):
        self.injector = injector
        self.coding = coding
        if coding in ("gzip", "x-gzip"):
            self._decoder: Callable[[bytes], Iterator[bytes]] = _zlib_decoder(31)
            comp = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
            self._encode = lambda data: comp.compress(data) + comp.flush(isal_zlib.Z_SYNC_FLUSH)
            self._close = comp.flush
        elif coding == "deflate":
            self._decoder = _zlib_decoder(15)
            comp = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 15)
            self._encode = lambda data: comp.compress(data) + comp.flush(isal_zlib.Z_SYNC_FLUSH)
            self._close = comp.flush
        elif coding == "br":
            self._decoder = _brotli_decoder()
            encoder = brotli.Compressor(quality=BROTLI_QUALITY)
            self._encode = lambda data: encoder.process(data) + encoder.flush()
            self._close = encoder.finish
        else:
            raise ValueError(f"unsupported content coding {coding!r}")

    def feed(self, data: bytes) -> bytes:
        """The encoded bytes to send for this chunk. Decoded a piece at a time, each piece injected and encoded
        before the next is decoded: a chunk that inflates a thousandfold never sits decoded in memory."""
        out = []
        for piece in self._decoder(data):
            injected = self.injector.feed(piece)
            if injected:
                out.append(self._encode(injected))
        return b"".join(out)

    def finish(self) -> bytes:
        tail = self.feed(b"")
        rest = self.injector.finish()
        return tail + (self._encode(rest) if rest else b"") + self._close()


class DecodeError(ValueError):
    """The upstream's compressed page could not be decoded."""


def _zlib_decoder(wbits: int) -> Callable[[bytes], Iterator[bytes]]:
    state = {"d": isal_zlib.decompressobj(wbits), "settled": wbits != 15}

    def decode(data: bytes) -> Iterator[bytes]:
        d = state["d"]
        try:
            piece = d.decompress(data, DECODE_PIECE)
        except isal_zlib.error as err:
            if state["settled"]:
                raise DecodeError(str(err)) from err
            # "deflate" sent as a raw deflate stream, as some servers do
            state["d"] = d = isal_zlib.decompressobj(-15)
            try:
                piece = d.decompress(data, DECODE_PIECE)
            except isal_zlib.error as err2:
                raise DecodeError(str(err2)) from err2
        state["settled"] = True
        while True:
            if piece:
                yield piece
            if not d.unconsumed_tail:
                return
            try:
                piece = d.decompress(d.unconsumed_tail, DECODE_PIECE)
            except isal_zlib.error as err:
                raise DecodeError(str(err)) from err

    return decode  # type: ignore[return-value]


def _brotli_decoder() -> Callable[[bytes], Iterator[bytes]]:
    d = brotli.Decompressor()

    def decode(data: bytes) -> Iterator[bytes]:
        try:
            piece = d.process(data, output_buffer_limit=DECODE_PIECE)
            while True:
                if piece:
                    yield piece
                if d.is_finished() or d.can_accept_more_data():
                    return
                piece = d.process(b"", output_buffer_limit=DECODE_PIECE)
        except brotli.error as err:
            raise DecodeError(str(err)) from err

    return decode


# ---------------------------------------------------------------------------------------------------------
# Content-Security-Policy.

_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/=_-]+)'")


def csp_allows(policies: list[str]) -> tuple[bool, str | None]:
    """Whether a same-origin external script may load under these Content-Security-Policy headers, and the nonce
    to give it (the upstream's own, so the page's policy stays as it is). Every policy must allow it."""
    nonce: str | None = None
    for policy in policies:
        directives: dict[str, list[str]] = {}
        for part in policy.split(";"):
            words = part.split()
            if words:
                directives.setdefault(words[0].lower(), words[1:])
        sources = directives.get("script-src-elem", directives.get("script-src", directives.get("default-src")))
        if sources is None:
            continue
        found = next((m.group(1) for s in sources if (m := _NONCE.fullmatch(s))), None)
        lowered = [s.lower() for s in sources]
        if "'strict-dynamic'" in lowered or found is not None:
            if found is None:
                return False, None
            nonce = found
            continue
        if "'self'" in lowered or "*" in lowered or "http:" in lowered or "https:" in lowered:
            continue
        return False, None
    return True, nonce


# ---------------------------------------------------------------------------------------------------------
# Whether to inject into an answer, and how its headers change.

# Skip reasons, usable as metric labels (halo_injection_skipped_total{reason}).
SKIP_NOT_PAGE_VIEW = "not_page_view"
SKIP_METHOD = "method"
SKIP_STATUS = "status"
SKIP_RANGE = "range"
SKIP_NOT_HTML = "not_html"
SKIP_NO_TRANSFORM = "no_transform"
SKIP_CODING = "coding"
SKIP_CSP = "csp"
SKIP_REASONS = (SKIP_NOT_PAGE_VIEW, SKIP_METHOD, SKIP_STATUS, SKIP_RANGE, SKIP_NOT_HTML, SKIP_NO_TRANSFORM,
                SKIP_CODING, SKIP_CSP)

# Outcomes counted when a page was passed on untouched although it was planned for (halo_injections_total).
DECODE_ERROR = "decode_error"
# Skip reasons worth counting: an HTML page view left as it was. The others are simply not pages.
COUNTED_SKIPS = frozenset({SKIP_STATUS, SKIP_RANGE, SKIP_NO_TRANSFORM, SKIP_CODING, SKIP_CSP})
_PAGE_DESTS = frozenset({"document", "iframe", "frame", "embed", "object"})


def wants_injection(headers: Mapping[str, str]) -> bool:
    """Whether a request's HTML answer is a page a browser will show: a navigation or a frame (`Sec-Fetch-Dest`),
    or without fetch metadata an `Accept` that asks for HTML. Never a script's fetch of an HTML fragment
    (`Sec-Fetch-Dest: empty`, htmx's `HX-Request`, a Turbo frame, `X-Requested-With`): a tag there would change
    what the page's own code inserts. Prefetches are pages too: they are shown later."""
    if "hx-request" in headers or "turbo-frame" in headers or "x-requested-with" in headers:
        return False
    dest = headers.get("sec-fetch-dest")
    if dest is not None:
        return dest.strip().lower() in _PAGE_DESTS
    accept = headers.get("accept")
    return accept is not None and "text/html" in accept.lower()


# Headers that describe the exact bytes of the upstream's body, which injection changes.
_BODY_BOUND = frozenset({"content-length", "content-md5", "digest", "content-digest", "repr-digest"})


class Plan:
    """Inject, through `coding` (None: identity), with `nonce` on the tag; `headers` replace the answer's."""

    __slots__ = ("coding", "headers", "nonce")

    def __init__(self, coding: str | None, nonce: str | None, headers: list[tuple[str, str]]):
        self.coding = coding
        self.nonce = nonce
        self.headers = headers

    def __repr__(self) -> str:
        return f"Plan(coding={self.coding!r}, nonce={self.nonce!r}, headers={self.headers!r})"


def plan_injection(method: str, page_view: bool, request_has_range: bool, status: int,
                   headers: list[tuple[str, str]]) -> Plan | str:
    """The plan for one answer, or the reason it is left untouched (SKIP_REASONS). `headers` are the upstream's
    answer headers as sent (names in any case)."""
    if method != "GET":
        return SKIP_METHOD
    if not page_view:
        return SKIP_NOT_PAGE_VIEW
    if status < 200 or status in (204, 206, 304):
        return SKIP_STATUS
    if request_has_range:
        return SKIP_RANGE
    content_type = codings = None
    no_transform = False
    policies: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "content-type":
            content_type = value
        elif lname == "content-encoding":
            codings = (codings + "," if codings else "") + value
        elif lname == "cache-control" and "no-transform" in value.lower():
            no_transform = True
        elif lname == "content-security-policy":
            policies.append(value)
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "text/html":
        return SKIP_NOT_HTML
    if no_transform:
        return SKIP_NO_TRANSFORM
    names = [c.strip().lower() for c in (codings or "").split(",") if c.strip() and c.strip().lower() != "identity"]
    if len(names) > 1 or (names and names[0] not in Recoder.CODINGS):
        return SKIP_CODING
    allowed, nonce = csp_allows(policies)
    if not allowed:
        return SKIP_CSP
    out: list[tuple[str, str]] = []
    for name, value in headers:
        lname = name.lower()
        if lname in _BODY_BOUND:
            continue
        if lname == "etag" and not value.lstrip().startswith("W/"):
            value = "W/" + value.strip()  # the bytes differ; the page means the same
        out.append((name, value))
    return Plan(names[0] if names else None, nonce, out)


def script_tag(reserved_prefix: str, nonce: str | None = None) -> bytes:
    """The one tag injected: `<script src="/_halo/t.js" async></script>`, with the upstream's nonce if any."""
    attributes = f' nonce="{nonce}"' if nonce else ""
    return f'<script src="{reserved_prefix}/t.js" async{attributes}></script>'.encode("ascii")
