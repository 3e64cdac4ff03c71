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
streaming; a page that arrived whole is done in one go (`feed_all`, no flushes). gzip and deflate go through ISA-L
(`isal`, the same formats as zlib): encoding the 30 KB page of `bench/micro.py inject` takes it about 38 µs at level
1, where zlib needs about 79 µs at level 1 and 247 µs at its default, with a smaller result than zlib's level 1.
Brotli at quality 1 takes about 59 µs (quality 4: 211 µs, but a third smaller): speed first, as the page is still
an eleventh of its identity size.

`csp_allows` decides from the upstream's Content-Security-Policy whether a same-origin script may run, and with
which nonce; `plan_injection` decides, from the request and the upstream's answer head, whether to inject (or why
not: HEAD, 1xx/204/206/304, Range, not HTML, no-transform, a coding it cannot re-encode, a CSP without a way in)
and how the answer's headers change (length and digests dropped, a strong ETag made weak).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping

import brotli
from isal import isal_zlib

LOOKAHEAD = 64 * 1024  # bytes held back at most while the insertion point (and an existing tag) is looked for
DECODE_PIECE = 256 * 1024  # decoded bytes produced at a time from one compressed chunk
# An injected page decodes to at most this much; past it, a page that arrived whole is passed on as it came and a
# streamed one is cut off (a compression bomb would otherwise hold the event loop for seconds: 6 KB of br can
# decode to 4 GB). A 20 MB page is injected.
MAX_DECODED = 32 * 1024 * 1024
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
_SPACE = b" \t\n\r\f"
_SPACE_GT = b" \t\n\r\f>"
_HEAD_END = re.compile(rb"</head|<body", re.IGNORECASE)
_BOMS = (b"\xff\xfe", b"\xfe\xff")


class Injector:
    """Feed the page's bytes in order (`feed`), then `finish`; each returns the bytes to send on."""

    def __init__(self, tag: bytes, marker: bytes, lookahead: int = LOOKAHEAD):
        self.tag = tag
        self.marker = marker.lower()  # a page whose head holds this (the script's path) is already tagged
        self._marker = re.compile(re.escape(self.marker), re.IGNORECASE)
        self.lookahead = lookahead
        self.outcome: str | None = None  # set once decided
        self._held: bytes | bytearray = b""
        self._pos = 0  # where the tokenizer resumes in _held
        self._at: int | None = None  # the insertion point, once found
        self._where: str | None = None
        self._start = 0  # where "the start of the document" is: after a leading doctype
        self._seen_element = False
        self._waiting: tuple[re.Pattern[bytes], int, bool] | None = None  # a search to resume (`_skip`)
        self._head_from = 0  # where the search for the end of <head> resumes

    # -- the stream ----------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        if self.outcome is not None:
            return data
        held = self._held
        if not held:
            self._held = data  # the common case, a page whose head is in its first chunk: no copy
        else:
            if type(held) is bytes:
                self._held = held = bytearray(held)
            held += data
        if len(self._held) >= 2 and self._held[:2] in _BOMS:
            return self._decide(NOT_ASCII_COMPATIBLE, None)
        if self._at is None:
            self._scan()
        if self._at is not None:
            return self._after_insertion_point(final=False)
        if len(self._held) > self.lookahead:  # neither <head nor <body early enough
            return self._decide(INJECTED_START, self._start)
        return b""

    def finish(self) -> bytes:
        if self.outcome is not None:
            return b""
        if len(self._held) >= 2 and self._held[:2] in _BOMS:
            return self._decide(NOT_ASCII_COMPATIBLE, None)
        if self._at is not None:
            return self._after_insertion_point(final=True)
        return self._decide(INJECTED_START, self._start)

    # -- deciding ------------------------------------------------------------------------------------------

    def _after_insertion_point(self, *, final: bool) -> bytes:
        """The insertion point is known: wait (bounded) for the end of <head> to see whether the tag is there.
        Only the page up to the end of its head is searched (case-insensitively, without copying it), so a page
        that names the script further down is injected the same however it was chunked."""
        held = self._held
        at = self._at or 0
        if self._where == INJECTED_BODY:
            head_end: int | None = at
        else:
            found = _HEAD_END.search(held, max(at, self._head_from))
            head_end = found.start() if found is not None else None
            self._head_from = max(at, len(held) - 8)
        if head_end is None and not final and len(held) - at <= self.lookahead:
            return b""
        if self._marker.search(held, 0, len(held) if head_end is None else head_end):
            return self._decide(ALREADY_TAGGED, None)
        return self._decide(self._where or INJECTED_START, at)

    def feed_all(self, data: bytes) -> bytes:
        """A page that arrived whole: `feed` then `finish`."""
        return self.feed(data) + self.finish()

    def _decide(self, outcome: str, at: int | None) -> bytes:
        self.outcome = outcome
        held = self._held
        self._held = b""
        if at is None:
            return bytes(held)
        view = memoryview(held)
        return b"".join((view[:at], self.tag, view[at:]))  # one copy

    # -- the tokenizer -------------------------------------------------------------------------------------

    def _scan(self) -> None:
        """Walk whole tokens from `_pos`; stop at the insertion point, or where a token is not complete yet (a
        search that must wait for more bytes resumes where it stopped, so a page fed a byte at a time costs no
        more than one fed whole). The token rules follow the HTML tokenizer where a `<head` could hide."""
        buf = self._held
        n = len(buf)
        waiting = self._waiting
        if waiting is not None:
            pattern, start, use_end = waiting
            found = pattern.search(buf, start)
            if found is None:
                self._waiting = (pattern, max(start, n - 16), use_end)
                return
            self._waiting = None
            self._pos = found.end() if use_end else found.start()
        while True:
            lt = buf.find(b"<", self._pos)
            if lt == -1:
                self._pos = n
                return
            if lt + 1 >= n:
                self._pos = lt
                return
            nxt = buf[lt + 1]
            if nxt == 0x21:  # "!": a comment, a doctype, CDATA (a bogus comment in HTML)
                if n - lt < 4 and b"<!--".startswith(bytes(buf[lt:])):
                    self._pos = lt
                    return
                if buf[lt:lt + 4] == b"<!--":
                    # ends at "-->" or "--!>"; "<!-->" and "<!--->" are whole (empty) comments
                    if not self._skip(_COMMENT_END, lt + 2, True):
                        return
                    continue
                word = bytes(buf[lt + 2:lt + 9]).lower()
                if len(word) < 7 and b"doctype".startswith(word):
                    self._pos = lt  # perhaps a doctype: wait for its name
                    return
                if word == b"doctype":
                    end = buf.find(b">", lt + 9)  # a doctype is short: searched again whole if split
                    if end == -1:
                        self._pos = lt
                        return
                    self._pos = end + 1
                    if not self._seen_element:
                        self._start = self._pos  # "the start" of the document is after its doctype
                    continue
                if not self._skip(_GT, lt + 2, True):
                    return
                continue
            if nxt == 0x3F or nxt == 0x2F:  # "?" a processing instruction, "/" an end tag: up to ">"
                if not self._skip(_GT, lt + 2, True):
                    return
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
            self._seen_element = True
            if name in _RAW_TEXT:  # its content, up to its end tag, is not markup (`<script/>` included)
                if not self._skip(_raw_end(name), tag_end, False):
                    return
                continue
            self._pos = tag_end

    def _skip(self, pattern: re.Pattern[bytes], start: int, use_end: bool) -> bool:
        """Move `_pos` to the pattern's match from `start` (its end or its start); False, and remember where to
        resume, when it is not in the bytes yet."""
        found = pattern.search(self._held, start)
        if found is None:
            self._waiting = (pattern, max(start, len(self._held) - 16), use_end)
            self._pos = len(self._held)
            return False
        self._pos = found.end() if use_end else found.start()
        return True


def _tag_end(buf: bytes | bytearray, start: int) -> int:
    """Just past the `>` closing the tag whose attributes begin at `start`, or -1. As the HTML tokenizer does, a
    quote opens a value only right after `=` (and optional whitespace); an unquoted value runs to whitespace or
    `>`; a quote anywhere else (`<html data-note=it's>`) is an ordinary character."""
    i, n = start, len(buf)
    while i < n:
        c = buf[i]
        if c == 0x3E:
            return i + 1
        if c != 0x3D:
            i += 1
            continue
        i += 1
        while i < n and buf[i] in _SPACE:
            i += 1
        if i >= n:
            return -1
        quote = buf[i]
        if quote == 0x22 or quote == 0x27:
            close = buf.find(b'"' if quote == 0x22 else b"'", i + 1)
            if close == -1:
                return -1
            i = close + 1
            continue
        while i < n and buf[i] not in _SPACE_GT:
            i += 1
    return -1


_COMMENT_END = re.compile(rb"--!?>")
_GT = re.compile(rb">")
_RAW_ENDS: dict[bytes, re.Pattern[bytes]] = {}


def _raw_end(name: bytes) -> re.Pattern[bytes]:
    """Where a raw-text element's content ends: `</name` then whitespace, `/` or `>`, in any case."""
    pattern = _RAW_ENDS.get(name)
    if pattern is None:
        pattern = _RAW_ENDS[name] = re.compile(rb"</" + re.escape(name) + rb"[\t\n\f\r />]", re.IGNORECASE)
    return pattern


# ---------------------------------------------------------------------------------------------------------
# Through a content coding.


class Recoder:
    """An Injector behind a decoder and before an encoder of the same content coding."""

    CODINGS = ("gzip", "x-gzip", "deflate", "br")

    def __init__(self, coding: str, injector: Injector):
        self.injector = injector
        self.coding = coding
        self.decoded = 0  # bytes decoded so far (MAX_DECODED)
        if coding in ("gzip", "x-gzip"):
            self._decoder: Callable[[bytes], Iterator[bytes]] = _zlib_decoder(31)
            comp = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
            self._encode = lambda data: comp.compress(data) + comp.flush(isal_zlib.Z_SYNC_FLUSH)
            self._compress = comp.compress
            self._close = comp.flush
        elif coding == "deflate":
            self._decoder = _zlib_decoder(15)
            comp = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 15)
            self._encode = lambda data: comp.compress(data) + comp.flush(isal_zlib.Z_SYNC_FLUSH)
            self._compress = comp.compress
            self._close = comp.flush
        elif coding == "br":
            self._decoder = _brotli_decoder()
            encoder = brotli.Compressor(quality=BROTLI_QUALITY)
            self._encode = lambda data: encoder.process(data) + encoder.flush()
            self._compress = encoder.process
            self._close = encoder.finish
        else:
            raise ValueError(f"unsupported content coding {coding!r}")

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        for piece in self._decoder(data):
            self.decoded += len(piece)
            if self.decoded > MAX_DECODED:
                raise TooLarge(f"the page decodes to more than {MAX_DECODED} bytes")
            yield piece

    def feed(self, data: bytes) -> bytes:
        """The encoded bytes to send for this chunk. Decoded a piece at a time, each piece injected and encoded
        before the next is decoded: a chunk that inflates a thousandfold never sits decoded in memory."""
        out = []
        for piece in self._pieces(data):
            injected = self.injector.feed(piece)
            if injected:
                out.append(self._encode(injected))
        return b"".join(out)

    def finish(self) -> bytes:
        tail = self.feed(b"")
        rest = self.injector.finish()
        return tail + (self._encode(rest) if rest else b"") + self._close()

    def feed_all(self, data: bytes) -> bytes:
        """A page that arrived whole: decoded, injected and encoded in one go, with no flush on the way."""
        injector = self.injector
        pieces = [injector.feed(piece) for piece in self._pieces(data)]
        pieces.append(injector.feed(b""))
        pieces.append(injector.finish())
        return self._compress(b"".join(pieces)) + self._close()


class DecodeError(ValueError):
    """The upstream's compressed page could not be decoded."""


class TooLarge(DecodeError):
    """The page decodes to more than MAX_DECODED bytes: a compression bomb, or a page too large to re-encode
    without holding the event loop."""


def _zlib_decoder(wbits: int) -> Callable[[bytes], Iterator[bytes]]:
    """gzip (31) or deflate (15, or a raw deflate stream as some servers send) decoded in pieces; a gzip body of
    several members (RFC 1952 allows it; browsers read them all) is decoded member after member."""
    state = {"d": isal_zlib.decompressobj(wbits), "settled": wbits != 15}

    def decode(data: bytes) -> Iterator[bytes]:
        d = state["d"]
        while True:
            try:
                piece = d.decompress(data, DECODE_PIECE)
            except isal_zlib.error as err:
                if state["settled"]:
                    raise DecodeError(str(err)) from err
                # "deflate" sent as a raw deflate stream
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
                    break
                try:
                    piece = d.decompress(d.unconsumed_tail, DECODE_PIECE)
                except isal_zlib.error as err:
                    raise DecodeError(str(err)) from err
            if wbits != 31 or not d.eof or not d.unused_data:
                return
            data = d.unused_data  # the next gzip member
            state["d"] = d = isal_zlib.decompressobj(31)

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
# Pages injected before.


class InjectedPages:
    """Whole pages already injected, kept by their exact bytes: a site that serves the same page to every visitor
    (a cached or static page) costs one decode and re-encode, not one per view. The key is the upstream's body
    itself with its coding and the tag, compared byte for byte on a hit, so a page that differs by one byte (a
    CSRF token, a nonce) is injected afresh. An LRU bounded in bytes; pages over `max_entry` are not kept."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024, max_entry: int = 256 * 1024):
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self._pages: OrderedDict[tuple[bytes, str | None, bytes], tuple[bytes, str]] = OrderedDict()
        self._bytes = 0

    def get(self, tag: bytes, coding: str | None, body: bytes) -> tuple[bytes, str] | None:
        if len(body) > self.max_entry:
            return None
        key = (tag, coding, body)
        found = self._pages.get(key)
        if found is not None:
            self._pages.move_to_end(key)
        return found

    def put(self, tag: bytes, coding: str | None, body: bytes, out: bytes, outcome: str) -> None:
        size = len(body) + len(out)
        if len(body) > self.max_entry or size > self.max_bytes:
            return
        key = (tag, coding, body)
        if key in self._pages:
            return
        self._pages[key] = (out, outcome)
        self._bytes += size
        while self._bytes > self.max_bytes:
            (_, _, old), (old_out, _) = self._pages.popitem(last=False)
            self._bytes -= len(old) + len(old_out)

    def __len__(self) -> int:
        return len(self._pages)


# ---------------------------------------------------------------------------------------------------------
# Content-Security-Policy.

_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/=_-]+)'")


def csp_allows(policies: list[str]) -> tuple[bool, str | None]:
    """Whether a same-origin external script may load under these Content-Security-Policy headers, and the nonce
    to give it (the upstream's own, so the page's policy stays as it is). Every policy must allow it: policies
    that admit scripts by nonce must share one."""
    shared: set[str] | None = None
    for policy in policies:
        directives: dict[str, list[str]] = {}
        for part in policy.split(";"):
            words = part.split()
            if words:
                directives.setdefault(words[0].lower(), words[1:])
        sources = directives.get("script-src-elem", directives.get("script-src", directives.get("default-src")))
        if sources is None:
            continue
        nonces = {m.group(1) for s in sources if (m := _NONCE.fullmatch(s))}
        lowered = [s.lower() for s in sources]
        if "'strict-dynamic'" in lowered or nonces:
            if not nonces:
                return False, None
            shared = nonces if shared is None else shared & nonces
            if not shared:
                return False, None
            continue
        if "'self'" in lowered or "*" in lowered or "http:" in lowered or "https:" in lowered:
            continue
        return False, None
    return True, (min(shared) if shared else None)


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
TOO_LARGE = "too_large"
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
