"""Runs every case of the security corpus (tests/security/corpus.py) against the real proxy and the recording
upstream, and first checks the harness itself: the recorder's strict parser and the raw client, talking to each
other directly with no proxy between them, so a failing case is the proxy's behaviour and not the harness's."""

from __future__ import annotations

import pytest

from tests.security.conftest import exchange
from tests.security.corpus import CASES, Case, chunked, msg
from tests.security.recorder import Malformed, Recorder, parse_one


def report(case: Case, client, upstream: Recorder, problems: list[str]) -> str:  # type: ignore[no-untyped-def]
    sent = case.data if len(case.data) <= 600 else case.data[:600] + b"..."
    lines = [f"case {case.name!r}: expected {case.expect}"]
    if case.note:
        lines.append(f"note: {case.note}")
    lines += [f"sent {len(case.data)} bytes: {sent!r}", *(f"PROBLEM: {p}" for p in problems),
              client.describe(), upstream.describe()]
    return "\n".join(lines)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_corpus_case(case: Case, recorder: Recorder, live_proxy) -> None:  # type: ignore[no-untyped-def]
    client = await exchange(live_proxy.port, case.data)
    # Stop the proxy before looking: its upstream connections close, so everything it sent has arrived.
    await live_proxy.stop()
    problems = [] if await recorder.settled() else ["an upstream connection stayed open after the proxy stopped"]
    problems += case.expect.check(client, recorder)
    assert not problems, report(case, client, recorder, problems)


# ---------------------------------------------------------------------------------------------------------
# The harness on its own.


def test_recorder_parses_strictly() -> None:
    data = b"POST /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX: caf\xe9 \r\n\r\nabcEXTRA"
    request, used = parse_one(data)
    assert (request.method, request.target, request.body, used) == (b"POST", b"/a?b", b"abc", len(data) - 5)
    assert request.headers == [(b"Host", b"h"), (b"Content-Length", b"3"), (b"X", b"caf\xe9")]
    request, used = parse_one(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\nNEXT")
    assert (request.body, request.chunked, request.trailers) == (b"abcde", True, [(b"T", b"1")])
    assert parse_one(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")[1] == 27
    for incomplete in (b"GET / HTTP/1.1\r\nHost: h\r", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabc",
                       b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"):
        assert parse_one(incomplete) is None, incomplete
    for bad in (b"GET / HTTP/1.1\nHost: h\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",
                b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
                b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\na",
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"):
        with pytest.raises(Malformed):
            parse_one(bad)


async def test_client_and_recorder_agree_without_a_proxy(recorder: Recorder) -> None:
    """Three pipelined requests straight to the recorder: three 200s, three requests, exact bodies, no leftover;
    the last carries Connection: close, which the recorder ignores, so reading ends by the client's timeout."""
    data = (msg("POST /a HTTP/1.1", "Content-Length: 5", close=False, body=b"hello")
            + msg("POST /b HTTP/1.1", "Transfer-Encoding: chunked", close=False, body=chunked(b"wor", b"ld"))
            + msg("GET /c HTTP/1.1"))
    client = await exchange(recorder.port, data, read_timeout_s=0.3)
    assert client.statuses == [200, 200, 200] and [r.body for r in client.responses] == [b"ok"] * 3
    assert not client.rest and client.ended == "timeout"
    assert [(r.target, r.body) for r in recorder.requests] == [(b"/a", b"hello"), (b"/b", b"world"), (b"/c", b"")]
    assert recorder.received == len(data) and not recorder.leftovers()


async def test_recorder_keeps_leftover_and_closes_on_malformed(recorder: Recorder) -> None:
    data = msg("GET /a HTTP/1.1", close=False) + b"GET /b HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"
    client = await exchange(recorder.port, data)
    assert client.statuses == [200] and client.ended in ("closed", "reset")
    assert await recorder.settled()
    [conn] = recorder.leftovers()
    assert conn.error and conn.error.startswith("obs-fold") and conn.leftover.startswith(b"GET /b")
    assert [r.target for r in recorder.requests] == [b"/a"]


async def test_recorder_reports_an_unfinished_request_as_leftover(recorder: Recorder) -> None:
    data = msg("POST /a HTTP/1.1", "Content-Length: 10", close=False, body=b"hello")
    client = await exchange(recorder.port, data, read_timeout_s=0.2)
    assert client.statuses == [] and client.ended == "timeout"
    assert await recorder.settled()
    [conn] = recorder.leftovers()
    assert conn.leftover == data and conn.error is None and not recorder.requests
