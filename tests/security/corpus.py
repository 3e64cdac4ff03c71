"""The corpus: malformed and adversarial HTTP/1.1 requests, each with what a careful proxy must do with it.

Every case is raw bytes sent on ONE client connection (one or more requests) and an expectation checked
against what the recording upstream received, byte for byte:

- `refused()`: every response came from HaloTrack and is 4xx/5xx, and the upstream received not a single
  byte. A proxy that cannot frame a request the way every parser behind it would must not pass any of it on.
- `local()`: answered by HaloTrack itself (any status), the upstream received nothing: reserved-prefix paths.
- `forwarded(n, ...)`: the upstream parsed exactly n requests, each body byte for byte as the client framed
  it (de-chunked if it was sent chunked), with no leftover bytes on any upstream connection, plus per-case
  checks on the forwarded heads (a header absent, Host equal to X, a target sent byte for byte).
- `one_of(...)`: either of several outcomes is safe (noted per case).

Where refusing and forwarding could both be argued, the case takes what a careful proxy (nginx) answers and
says so in a comment. A second request appearing upstream, or any forwarded body byte changing, fails.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import brotli

from tests.security.conftest import HOST, Exchange
from tests.security.recorder import Recorder, Request

# ---------------------------------------------------------------------------------------------------------
# Checks on one forwarded request: each returns None, or what is wrong.


@dataclass(frozen=True)
class Absent:
    """No header of this exact name (case-insensitive, so `X_Forwarded_For` is not `X-Forwarded-For`)."""

    name: str

    def __call__(self, request: Request) -> str | None:
        values = request.values(self.name)
        return f"header {self.name!r} forwarded: {values!r}" if values else None


@dataclass(frozen=True)
class Equals:
    """Exactly one header of this name, with exactly this value."""

    name: str
    value: str

    def __call__(self, request: Request) -> str | None:
        values = request.values(self.name)
        if values != [self.value.encode("latin-1")]:
            return f"header {self.name!r} is {values!r}, expected exactly [{self.value!r}]"
        return None


@dataclass(frozen=True)
class NotInHead:
    """These bytes appear nowhere in the forwarded request line and headers."""

    needle: bytes

    def __call__(self, request: Request) -> str | None:
        return f"{self.needle!r} appears in the forwarded head" if self.needle.lower() in request.head.lower() else None


@dataclass(frozen=True)
class MethodIs:
    method: bytes

    def __call__(self, request: Request) -> str | None:
        return None if request.method == self.method else f"method {request.method!r}, expected {self.method!r}"


@dataclass(frozen=True)
class HeaderRun:
    """Headers `prefix0` .. `prefix{count-1}` all arrive, in order."""

    prefix: str
    count: int

    def __call__(self, request: Request) -> str | None:
        wanted = self.prefix.lower().encode()
        got = [name.lower() for name, _ in request.headers if name.lower().startswith(wanted)]
        expected = [f"{self.prefix}{i}".lower().encode() for i in range(self.count)]
        return None if got == expected else f"{len(got)} {self.prefix}* headers (or out of order), sent {self.count}"


Check = Callable[[Request], "str | None"]


# ---------------------------------------------------------------------------------------------------------
# Expectations.


@dataclass(frozen=True)
class Refused:
    def check(self, client: Exchange, upstream: Recorder) -> list[str]:
        problems = []
        if upstream.received:
            problems.append(f"the upstream received {upstream.received} bytes ({len(upstream.requests)} requests)")
        bad = [status for status in client.statuses if status < 400]
        if bad:
            problems.append(f"non-error statuses {bad}")
        if not client.responses and client.ended == "timeout":
            problems.append("no answer and the connection was left open")
        return problems


@dataclass(frozen=True)
class Local:
    def check(self, client: Exchange, upstream: Recorder) -> list[str]:
        problems = []
        if upstream.received:
            problems.append(f"the upstream received {upstream.received} bytes ({len(upstream.requests)} requests)")
        if not client.responses:
            problems.append("HaloTrack sent no answer")
        return problems


@dataclass(frozen=True)
class Forwarded:
    n: int
    bodies: tuple[bytes, ...] | None = None  # None: every body empty
    targets: tuple[bytes, ...] | None = None  # None: not checked
    checks: tuple[Check, ...] = ()  # run on every forwarded request

    def check(self, client: Exchange, upstream: Recorder) -> list[str]:
        problems = []
        got = upstream.requests
        if len(got) != self.n:
            problems.append(f"the upstream parsed {len(got)} requests, expected {self.n}")
        for conn in upstream.leftovers():
            rest = conn.leftover or bytes(conn.buffer)
            problems.append(f"leftover on upstream connection #{conn.index}: {len(rest)} bytes"
                            + (f" ({conn.error})" if conn.error else ""))
        bodies = self.bodies if self.bodies is not None else (b"",) * self.n
        for i, (request, body) in enumerate(zip(got, bodies, strict=False)):
            if request.body != body:
                problems.append(f"request {i}: body {request.body[:80]!r} ({len(request.body)} bytes) differs "
                                f"from the {len(body)} bytes sent: {body[:80]!r}")
        if self.targets is not None:
            for i, (request, target) in enumerate(zip(got, self.targets, strict=False)):
                if request.target != target:
                    problems.append(f"request {i}: target {request.target!r}, sent {target!r}")
        for i, request in enumerate(got):
            for check in self.checks:
                problem = check(request)
                if problem:
                    problems.append(f"request {i}: {problem}")
        statuses = client.statuses
        if statuses[: self.n] != [200] * self.n or any(status < 400 for status in statuses[self.n:]):
            problems.append(f"client statuses {statuses}, expected {self.n} x 200 (then only errors)")
        return problems


@dataclass(frozen=True)
class OneOf:
    options: tuple[Refused | Local | Forwarded, ...]

    def check(self, client: Exchange, upstream: Recorder) -> list[str]:
        failures = []
        for option in self.options:
            problems = option.check(client, upstream)
            if not problems:
                return []
            failures.append(f"not {type(option).__name__}: " + "; ".join(problems))
        return failures


Expectation = Refused | Local | Forwarded | OneOf


def refused() -> Refused:
    return Refused()


def local() -> Local:
    return Local()


def forwarded(n: int = 1, *checks: Check, bodies: tuple[bytes, ...] | None = None,
              targets: tuple[bytes, ...] | None = None) -> Forwarded:
    return Forwarded(n, bodies, targets, checks)


def one_of(*options: Refused | Local | Forwarded) -> OneOf:
    return OneOf(options)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: Expectation
    note: str = field(default="", compare=False)


# ---------------------------------------------------------------------------------------------------------
# Building requests. `msg` writes exactly what it is given: lines are joined with `eol`, nothing is fixed up.

CRLF = b"\r\n"


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def msg(start: str | bytes = "GET / HTTP/1.1", *fields: str | bytes, body: bytes = b"", host: str | None = HOST,
        close: bool = True, eol: bytes = CRLF) -> bytes:
    """One request: start line, `Host` (unless None), the fields as given, `Connection: close` (unless
    `close=False`), the blank line, the body."""
    lines = [_b(start)]
    if host is not None:
        lines.append(b"Host: " + _b(host))
    lines += [_b(f) for f in fields]
    if close:
        lines.append(b"Connection: close")
    return eol.join(lines) + eol + eol + body


def chunked(*parts: bytes) -> bytes:
    """`parts` in chunked coding, ended by the last chunk and an empty trailer section."""
    return b"".join(f"{len(part):x}".encode() + CRLF + part + CRLF for part in parts) + b"0\r\n\r\n"


def post_cl(body: bytes, *fields: str | bytes, target: str = "/upload") -> bytes:
    return msg(f"POST {target} HTTP/1.1", f"Content-Length: {len(body)}", *fields, body=body)


def post_chunked(body: bytes, *fields: str | bytes, split: int = 7) -> bytes:
    parts = tuple(body[i: i + split] for i in range(0, len(body), split)) or (body,)
    return msg("POST /upload HTTP/1.1", "Transfer-Encoding: chunked", *fields, body=chunked(*parts))


# A complete request for the proxy's own tenant: if any stage takes it for a request, it reaches the recorder.
SMUGGLED = b"GET /SMUGGLED HTTP/1.1\r\nHost: shop.localhost\r\nConnection: close\r\n\r\n"
# What the crafted compressed bodies decompress to (as in the brief: an evil.com request, and a prefix).
INNER_REQUEST = b"GET /SMUGGLED HTTP/1.1\r\nHost: evil.com\r\n\r\n"
INNER_PREFIX = b"POST /SMUGGLED HTTP/1.1\r\nHost: evil.com\r\nContent-Length: 900\r\n\r\npartial"
TEXT = b"hello world, plain request body\r\n0\r\n\r\n"


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _deflate(data: bytes) -> bytes:  # Content-Encoding: deflate is the zlib format (RFC 9110 8.4.1.2)
    return zlib.compress(data)


def _raw_deflate(data: bytes) -> bytes:  # what many clients send as "deflate" anyway
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


# ---------------------------------------------------------------------------------------------------------
# The cases.

CASES: list[Case] = []


def case(name: str, data: bytes, expect: Expectation, note: str = "") -> None:
    assert name not in {c.name for c in CASES}, name
    CASES.append(Case(name, data, expect, note))


# -- Plain requests: these must pass; they prove the recorder, the client and the checks themselves. -------

case("plain_get", msg(), forwarded(1, Equals("Host", HOST), Absent("Connection"), targets=(b"/",)))
case("post_content_length", post_cl(b"hello"), forwarded(1, Equals("Content-Length", "5"), bodies=(b"hello",)))
case("post_chunked", post_chunked(b"hello chunked world"),
     forwarded(1, Equals("Transfer-Encoding", "chunked"), Absent("Content-Length"), bodies=(b"hello chunked world",)))
case("post_body_looks_like_framing", post_cl(TEXT + SMUGGLED), forwarded(1, bodies=(TEXT + SMUGGLED,)),
     "a body holding CRLFs, a last-chunk and a whole request is opaque data")
case("chunked_body_looks_like_framing", post_chunked(TEXT + SMUGGLED, split=10),
     forwarded(1, bodies=(TEXT + SMUGGLED,)))
case("get_with_body", msg("GET /q HTTP/1.1", "Content-Length: 5", body=b"hello"), forwarded(1, bodies=(b"hello",)))
case("expect_100_continue", post_cl(b"hello", "Expect: 100-continue"), forwarded(1, bodies=(b"hello",)))
case("chunk_extension", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked",
                            body=b"5;name=value\r\nhello\r\n0\r\n\r\n"), forwarded(1, bodies=(b"hello",)))
case("chunk_size_leading_zeros", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked",
                                     body=b"0005\r\nhello\r\n0000\r\n\r\n"), forwarded(1, bodies=(b"hello",)))
case("chunked_trailer", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked",
                            body=b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"), forwarded(1, bodies=(b"hello",)))
case("te_chunked_uppercase", msg("POST / HTTP/1.1", "Transfer-Encoding: CHUNKED", body=chunked(b"hello")),
     forwarded(1, bodies=(b"hello",)), "transfer-coding names are case-insensitive (RFC 9112 7)")
case("te_chunked_leading_tab", msg("POST / HTTP/1.1", "Transfer-Encoding:\tchunked", body=chunked(b"hello")),
     forwarded(1, bodies=(b"hello",)), "HTAB is optional whitespace")
case("te_chunked_trailing_tab", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked\t", body=chunked(b"hello")),
     one_of(refused(), forwarded(1, bodies=(b"hello",))),
     "valid OWS (nginx forwards), but llhttp refuses it; refusing is safe, forwarding must de-chunk exactly")
case("cl_ows", msg("POST / HTTP/1.1", "Content-Length:   5  ", body=b"hello"),
     forwarded(1, Equals("Content-Length", "5"), bodies=(b"hello",)))
case("xff_from_untrusted_replaced", msg("GET / HTTP/1.1", "X-Forwarded-For: 6.6.6.6"),
     forwarded(1, Equals("X-Forwarded-For", "127.0.0.1"), NotInHead(b"6.6.6.6")))
case("x_forwarded_host_replaced", msg("GET / HTTP/1.1", "X-Forwarded-Host: evil.com"),
     forwarded(1, Equals("X-Forwarded-Host", HOST), NotInHead(b"evil.com")))
case("x_forwarded_proto_replaced", msg("GET / HTTP/1.1", "X-Forwarded-Proto: https"),
     forwarded(1, Equals("X-Forwarded-Proto", "http")))
case("connection_named_header_dropped", msg("GET / HTTP/1.1", "X-Secret: 1", "Connection: close, X-Secret",
                                            close=False), forwarded(1, Absent("X-Secret"), Absent("Connection")))
case("connection_names_content_length", msg("POST / HTTP/1.1", "Content-Length: 5",
                                            "Connection: close, Content-Length", close=False, body=b"hello"),
     forwarded(1, Equals("Content-Length", "5"), bodies=(b"hello",)),
     "naming a framing header in Connection must not unframe the forwarded body")
case("connection_names_transfer_encoding", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked",
                                               "Connection: close, Transfer-Encoding", close=False,
                                               body=chunked(b"hello")), forwarded(1, bodies=(b"hello",)))
case("h2c_upgrade_stripped", msg("GET / HTTP/1.1", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
                                 "Connection: Upgrade, HTTP2-Settings, close", close=False),
     forwarded(1, Absent("Upgrade"), Absent("HTTP2-Settings")), "h2c smuggling: the upgrade never reaches the origin")

# -- Compressed request bodies: passed through untouched, never decoded. ----------------------------------

_COMPRESSED = [
    ("gzip", "gzip", _gzip(b"hello compressed world " * 20)),
    ("deflate", "deflate", _deflate(b"hello compressed world " * 20)),
    ("raw_deflate", "deflate", _raw_deflate(b"hello compressed world " * 20)),
    ("br", "br", brotli.compress(b"hello compressed world " * 20)),
    ("gzip_smuggled_request", "gzip", _gzip(INNER_REQUEST)),
    ("deflate_smuggled_request", "deflate", _deflate(INNER_REQUEST)),
    ("br_smuggled_request", "br", brotli.compress(INNER_REQUEST)),
    ("gzip_unfinished_prefix", "gzip", _gzip(INNER_PREFIX)),
    ("br_unfinished_prefix", "br", brotli.compress(INNER_PREFIX)),
    ("gzip_truncated_stream", "gzip", _gzip(INNER_REQUEST * 4)[:-12]),
    ("gzip_not_gzip", "gzip", b"this is not gzip at all\r\n\r\n" + SMUGGLED),
    ("gzip_bomb_10mb", "gzip", _gzip(b"\0" * (10 * 1024 * 1024))),
    ("gzip_then_br", "gzip, br", brotli.compress(_gzip(INNER_REQUEST))),
    ("x_gzip", "x-gzip", _gzip(INNER_REQUEST)),
]
for _name, _coding, _body in _COMPRESSED:
    case(f"ce_{_name}_cl", post_cl(_body, f"Content-Encoding: {_coding}"),
         forwarded(1, Equals("Content-Encoding", _coding), Equals("Content-Length", str(len(_body))),
                   bodies=(_body,)))
for _name, _coding, _body in _COMPRESSED[:8]:
    case(f"ce_{_name}_chunked", post_chunked(_body, f"Content-Encoding: {_coding}", split=16),
         forwarded(1, Equals("Content-Encoding", _coding), Equals("Transfer-Encoding", "chunked"), bodies=(_body,)))

# -- Framing: CL.TE, TE.CL, TE.TE and broken lengths. --------------------------------------------------------
# RFC 9112 6.1 lets a server process CL+TE by TE alone, but it must close afterwards, and an intermediary
# passing such a message on is the classic desync. nginx (>= 1.21.1) answers 400; so do these cases.

case("cl_te", msg("POST / HTTP/1.1", "Content-Length: 6", "Transfer-Encoding: chunked", close=False,
                  body=b"0\r\n\r\n" + SMUGGLED), refused())
case("te_cl", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", "Content-Length: 4", close=False,
                  body=b"4a\r\n" + SMUGGLED[:-2] + b"\r\n0\r\n\r\n"), refused())
case("cl_duplicate_different", msg("POST / HTTP/1.1", "Content-Length: 5", "Content-Length: 6", body=b"hello!"),
     refused())
case("cl_duplicate_same", msg("POST / HTTP/1.1", "Content-Length: 5", "Content-Length: 5", body=b"hello"), refused(),
     "RFC 9110 8.6 allows taking the shared value; nginx refuses a repeated Content-Length: so do we")
case("cl_list", msg("POST / HTTP/1.1", "Content-Length: 5, 5", body=b"hello"), refused())
case("te_chunked_identity", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked, identity", body=chunked(b"hello")),
     refused(), "chunked must be the final coding; identity is no coding at all (nginx: 501)")
case("te_identity_chunked", msg("POST / HTTP/1.1", "Transfer-Encoding: identity, chunked", "Content-Length: 5",
                                body=chunked(b"hello")), refused())
case("te_gzip_chunked", msg("POST / HTTP/1.1", "Transfer-Encoding: gzip, chunked", body=chunked(_gzip(b"hello"))),
     refused(), "a transfer coding other than chunked cannot be passed on as is (nginx: 501)")
case("te_space_before_colon", msg("POST / HTTP/1.1", "Content-Length: 5", "Transfer-Encoding : chunked",
                                  close=False, body=b"0\r\n\r\n" + SMUGGLED), refused(),
     "RFC 9112 5.1: whitespace before the colon MUST be rejected with 400")
case("te_obs_fold", msg("POST / HTTP/1.1", "Content-Length: 5", "Transfer-Encoding:", " chunked", close=False,
                        body=b"0\r\n\r\n" + SMUGGLED), refused())
case("te_duplicate_header", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked",
                                body=chunked(b"hello")), refused())
case("te_chunked_then_garbage", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", "Transfer-encoding: x",
                                    close=False, body=b"0\r\n\r\n" + SMUGGLED), refused())
case("te_xchunked", msg("POST / HTTP/1.1", "Content-Length: 5", "Transfer-Encoding: xchunked", close=False,
                        body=b"0\r\n\r\n" + SMUGGLED), refused())
case("te_quoted", msg("POST / HTTP/1.1", "Transfer-Encoding: \"chunked\"", close=False,
                      body=b"0\r\n\r\n" + SMUGGLED), refused())
case("te_vertical_tab", msg("POST / HTTP/1.1", "Content-Length: 5", b"Transfer-Encoding: \x0bchunked", close=False,
                            body=b"0\r\n\r\n" + SMUGGLED), refused())
case("te_on_http10", msg("POST / HTTP/1.0", "Transfer-Encoding: chunked", "Content-Length: 5", body=chunked(b"hello")),
     refused(), "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty")
case("te_line_ends_in_lf", msg("POST / HTTP/1.1", b"Content-Length: 5\nTransfer-Encoding: chunked", close=False,
                               body=b"0\r\n\r\n" + SMUGGLED), refused())
case("chunk_size_not_hex", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=b"g\r\nhello\r\n0\r\n\r\n"),
     refused())
case("chunk_size_0x", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n0\r\n\r\n"),
     refused())
case("chunk_size_negative", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=b"-5\r\nhello\r\n0\r\n\r\n"),
     refused())
case("chunk_size_huge", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked",
                            body=b"FFFFFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"), refused(),
     "24 hex digits overflow any integer: a parser that wraps reads a small size")
case("chunk_size_leading_space", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked",
                                     body=b" 5\r\nhello\r\n0\r\n\r\n"), refused())
case("chunk_extension_ctl", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked",
                                body=b"5;a\x00b\r\nhello\r\n0\r\n\r\n"), refused())
case("chunk_data_overrun", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", close=False,
                               body=b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED), refused())
case("chunk_missing_crlf", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", close=False,
                               body=b"5\r\nhello0\r\n\r\n" + SMUGGLED), refused())
case("chunk_lines_lf_only", msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", close=False,
                                body=b"5\nhello\n0\n\n" + SMUGGLED), refused())
case("cl_leading_zeros", msg("POST / HTTP/1.1", "Content-Length: 0005", body=b"hello"),
     forwarded(1, Equals("Content-Length", "5"), bodies=(b"hello",)),
     "a valid length; forwarded normalised, since some parsers read a leading 0 as octal")
case("cl_uint64_max", msg("POST / HTTP/1.1", "Content-Length: 18446744073709551615", body=b"hello"), refused(),
     "far beyond any body HaloTrack accepts, and 2**64-1 wraps to -1 in signed parsers")
case("cl_plus", msg("POST / HTTP/1.1", "Content-Length: +5", body=b"hello"), refused())
case("cl_inner_space", msg("POST / HTTP/1.1", "Content-Length: 5 5", body=b"hello"), refused())
case("cl_hex", msg("POST / HTTP/1.1", "Content-Length: 0x5", body=b"hello"), refused())
case("cl_negative", msg("POST / HTTP/1.1", "Content-Length: -5", body=b"hello"), refused())
case("cl_empty", msg("POST / HTTP/1.1", "Content-Length: ", body=b"hello"), refused())

# -- Host. -------------------------------------------------------------------------------------------------

case("host_userinfo", msg(host="shop.localhost:1@evil.com"), refused())
case("host_port_not_digits", msg(host="shop.localhost:abc"), refused())
case("host_port_out_of_range", msg(host="shop.localhost:99999"), refused())
case("host_twice_same", msg("GET / HTTP/1.1", f"Host: {HOST}"), refused(), "RFC 9112 3.2: more than one Host is a 400")
case("host_twice_different", msg("GET / HTTP/1.1", "Host: evil.com"), refused())
case("host_inner_space", msg(host="shop.localhost evil.com"), refused())
case("host_missing", msg(host=None), refused(), "RFC 9112 3.2: an HTTP/1.1 request without Host is a 400")
case("host_empty", msg(host=""), refused())
case("host_trailing_dot", msg(host="shop.localhost."), forwarded(1))
case("host_upper_case_with_port", msg(host="SHOP.localhost:8080"), forwarded(1))
case("host_ows", msg(host="  shop.localhost\t"), forwarded(1, Equals("Host", HOST)))
case("absolute_form_foreign", msg("GET http://evil.com/ HTTP/1.1"),
     one_of(refused(), forwarded(1, Equals("Host", HOST), NotInHead(b"evil.com"), targets=(b"/",))),
     "RFC 9112 3.2.2 says the target's authority wins over Host (so: 421); forwarding in origin-form to "
     "the tenant named by Host is safe too. Never the evil.com target.")
case("absolute_form_tenant", msg("GET http://shop.localhost/page?a=1 HTTP/1.1"),
     one_of(refused(), forwarded(1, Equals("Host", HOST), targets=(b"/page?a=1",))))

# -- Header names with underscores: many origins (CGI, PHP, Rack, WSGI) read `X_Forwarded_For` as
# `X-Forwarded-For`. nginx drops them by default (underscores_in_headers off). ---------------------------

for _header in ("X_Forwarded_For: 6.6.6.6", "X_Forwarded_Host: evil.com", "X_Forwarded_Proto: https",
                "X-Forwarded_For: 6.6.6.6", "x_real_ip: 6.6.6.6", "Content_Length: 100"):
    _name = _header.split(":")[0]
    case(f"underscore {_name}", msg("GET / HTTP/1.1", _header), forwarded(1, Absent(_name)))
case("underscore Transfer_Encoding", msg("POST / HTTP/1.1", "Content-Length: 5", "Transfer_Encoding: chunked",
                                         body=b"hello"), forwarded(1, Absent("Transfer_Encoding"), bodies=(b"hello",)))
case("underscore X_Custom_Thing kept", msg("GET / HTTP/1.1", "X_Custom_Thing: 1"),
     forwarded(1, Equals("X_Custom_Thing", "1")),
     "only names that alias a forwarding or framing header are dropped; others pass")

# -- Client-IP headers from an untrusted peer: the upstream must not see the visitor's claim. ----------------

case("forwarded_header_untrusted", msg("GET / HTTP/1.1", "Forwarded: for=6.6.6.6;proto=https"),
     forwarded(1, NotInHead(b"6.6.6.6")))
case("x_real_ip_untrusted", msg("GET / HTTP/1.1", "X-Real-IP: 6.6.6.6"), forwarded(1, NotInHead(b"6.6.6.6")))

# -- The reserved prefix: anything an origin could normalise into /_halo is HaloTrack's, never forwarded. ----

for _path in ("/x/../_halo/healthz", "/%2e%2e/_halo/healthz", "//_halo/healthz", "/./_halo/healthz",
              "/_halo%2Fhealthz", "/_halo;x/healthz", "/_HALO/healthz", "/_halo\\healthz", "/%5Fhalo/healthz",
              "/_hal%6F/healthz"):
    case(f"reserved {_path}", msg(f"GET {_path} HTTP/1.1"), local())
# ... while paths that do not normalise into the prefix are forwarded byte for byte.
# `/x%2F..%2F_halo/healthz` is not among them: the contract has `%2F` decoded as a separator, so it
# normalises to `/_halo/healthz` and is refused (below).
case("reserved via encoded slashes", msg("GET /x%2F..%2F_halo/healthz HTTP/1.1"), local())
for _path in ("/_halogen/page", "/a/_halo", "/a/_halo/healthz", "/x%2F..%2Fy/healthz",
              "/page?next=/_halo/healthz", "/a%2Fb/%7Euser;p=1?q=%20a+b&x=1&x=2"):
    case(f"not reserved {_path}", msg(f"GET {_path} HTTP/1.1"), forwarded(1, targets=(_path.encode(),)))

# -- Request-line and header oddities. ---------------------------------------------------------------------

case("method_lowercase", msg("get / HTTP/1.1"), refused(), "methods are case-sensitive; nginx answers 400")
case("method_unknown", msg("FROB /x HTTP/1.1"), one_of(refused(), forwarded(1, MethodIs(b"FROB"))),
     "nginx forwards any upper-case token method, llhttp knows a fixed list: both are safe without a body")
case("method_connect", msg("CONNECT evil.com:443 HTTP/1.1", host="evil.com:443"), refused(),
     "a reverse proxy never opens tunnels")
case("http10_keep_alive_pipelined",
     msg("GET /one HTTP/1.0", "Connection: keep-alive", "Keep-Alive: timeout=5", close=False)
     + msg("GET /two HTTP/1.0", close=False),
     forwarded(2, Absent("Keep-Alive"), targets=(b"/one", b"/two")))
case("http09", b"GET /\r\n\r\n", refused(),
     "with the blank line: a bare `GET /\\r\\n` is, to an HTTP/1 parser, the start of a head still arriving")
case("http20_request_line", msg("GET / HTTP/2.0"), refused(), "nginx: 505 over HTTP/1")
case("h2_prior_knowledge_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", refused())
case("header_over_16k", msg("GET / HTTP/1.1", "X-Big: " + "a" * (17 * 1024)), refused())
case("headers_200", msg("GET / HTTP/1.1", *[f"X-H-{i}: {i}" for i in range(200)]), one_of(refused(), forwarded(1, HeaderRun("X-H-", 200))),
     "nginx forwards 200 short headers; a header-count cap (431/400) is safe too. Never a truncated set")
case("header_value_nul", msg("GET / HTTP/1.1", b"X-A: a\x00b"), refused(), "RFC 9110 5.5; nginx answers 400")
case("header_value_bare_cr", msg("GET / HTTP/1.1", b"X-A: a\rb"), refused())
case("header_line_ends_bare_cr", msg("GET / HTTP/1.1", b"X-A: a\rX-B: b"), refused())
case("header_name_space", msg("GET / HTTP/1.1", "X A: 1"), refused())
case("header_name_empty", msg("GET / HTTP/1.1", ": 1"), refused())
case("header_obs_fold", msg("GET / HTTP/1.1", "X-A: a", " b"), refused(),
     "RFC 9112 5.2 allows replacing obs-fold with SP; nginx rejects it, and so do we")
case("target_with_space", msg("GET /a b HTTP/1.1"), refused())
case("lf_only_request", msg(eol=b"\n"),
     one_of(refused(), forwarded(1, Equals("Host", HOST), targets=(b"/",))),
     "RFC 9112 2.2 lets a recipient accept bare LF (nginx does, and re-frames with CRLF); refusing is safe too")

# -- Pipelining. ---------------------------------------------------------------------------------------------

case("pipelined_two_gets", msg("GET /one HTTP/1.1", close=False) + msg("GET /two HTTP/1.1"),
     forwarded(2, targets=(b"/one", b"/two")))
case("pipelined_post_then_get", msg("POST /one HTTP/1.1", "Content-Length: 5", close=False, body=b"hello")
     + msg("GET /two HTTP/1.1"), forwarded(2, bodies=(b"hello", b""), targets=(b"/one", b"/two")))
case("pipelined_chunked_then_get", msg("POST /one HTTP/1.1", "Transfer-Encoding: chunked", close=False,
                                       body=chunked(b"hel", b"lo")) + msg("GET /two HTTP/1.1"),
     forwarded(2, bodies=(b"hello", b""), targets=(b"/one", b"/two")))
case("pipelined_then_cl_te", msg("GET /first HTTP/1.1", close=False)
     + msg("POST / HTTP/1.1", "Content-Length: 6", "Transfer-Encoding: chunked", close=False,
           body=b"0\r\n\r\n" + SMUGGLED), one_of(forwarded(1, targets=(b"/first",)), refused()),
     "nginx serves the honest request and refuses the attempt behind it; refusing the whole connection (aiohttp "
     "refuses everything in a read that fails to parse) is safe too")
case("pipelined_then_te_cl", msg("GET /first HTTP/1.1", close=False)
     + msg("POST / HTTP/1.1", "Transfer-Encoding: chunked", "Content-Length: 4", close=False,
           body=b"4a\r\n" + SMUGGLED[:-2] + b"\r\n0\r\n\r\n"), one_of(forwarded(1, targets=(b"/first",)), refused()))
case("pipelined_then_gzip_smuggle", msg("GET /first HTTP/1.1", close=False)
     + post_cl(_gzip(INNER_REQUEST), "Content-Encoding: gzip"),
     forwarded(2, bodies=(b"", _gzip(INNER_REQUEST)), targets=(b"/first", b"/upload")))
