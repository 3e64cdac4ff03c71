"""The HTML injector as tables: where the tag goes, split at every byte, through each content coding, a large
page with flat memory, and the pages left alone. Pure: no sockets."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest

from halo_proxy.edge.inject import (
    ALREADY_TAGGED,
    DECODE_PIECE,
    INJECTED_BODY,
    INJECTED_HEAD,
    INJECTED_START,
    MAX_DECODED,
    NOT_ASCII_COMPATIBLE,
    DecodeError,
    InjectedPages,
    Injector,
    Plan,
    Recoder,
    TooLarge,
    csp_allows,
    plan_injection,
    script_tag,
)

TAG = b'<script src="/_halo/t.js" async></script>'
MARKER = b"/_halo/t.js"


def run(chunks: list[bytes], lookahead: int = 64 * 1024) -> tuple[bytes, str | None]:
    injector = Injector(TAG, MARKER, lookahead)
    out = b"".join(injector.feed(c) for c in chunks) + injector.finish()
    return out, injector.outcome


CASES = [
    # (page, where the tag goes: the text it follows, outcome)
    (b"<!doctype html><html><head><title>x</title></head><body>hi</body></html>", b"<head>", INJECTED_HEAD),
    (b'<!DOCTYPE html>\n<HTML lang="cs"><HEAD data-x="1">', b'<HEAD data-x="1">', INJECTED_HEAD),
    (b"<!-- <head> in a comment --><html><head >", b"<head >", INJECTED_HEAD),
    (b'<html data-a="<head>" data-b=\'<body>\'><head>', b"'><head>", INJECTED_HEAD),
    (b"<html><header>not it</header><head>", b"</header><head>", INJECTED_HEAD),
    (b"<script>var s = '<head>'; var b = '<body>';</script><head>", b"</script><head>", INJECTED_HEAD),
    (b"<title><head></title><head>", b"</title><head>", INJECTED_HEAD),
    (b"<?xml version='1.0'?><!DOCTYPE html><html><head>", b"<head>", INJECTED_HEAD),
    (b"<html><body class=x>no head</body></html>", b"<html>", INJECTED_BODY),
    (b"<!doctype html><BODY>", b"<!doctype html>", INJECTED_BODY),
    (b"just text, no tags at all", b"", INJECTED_START),
    (b"", b"", INJECTED_START),
    (b"a < b and 1<2 <3 <head>", b"<head>", INJECTED_HEAD),
    # The HTML tokenizer's own rules, where a simpler scan would put the tag inside a script (found by a probe):
    # "<!-->" and "<!--->" are whole empty comments, "--!>" closes a comment,
    (b'<!doctype html><!--><html><head><script>var s = "-->"; var t = "<head>";</script>', b"<html><head>",
     INJECTED_HEAD),
    (b'<!---><head><script>var s = "-->";</script>', b"<!---><head>", INJECTED_HEAD),
    (b"<!-- a --!><head><p>x -->", b"--!><head>", INJECTED_HEAD),
    # a quote opens an attribute value only right after "=",
    (b"<html lang=en data-note=it's><head><script>// Don't\nvar q = \"<head>\";</script>", b"it's><head>",
     INJECTED_HEAD),
    (b"<html a=b=\"c><head>", b"c><head>", INJECTED_HEAD),
    (b"<html data-x = 'a>b' ><head>", b"' ><head>", INJECTED_HEAD),
    # `<script/>` still opens a script, and `</scriptx>` does not close one,
    (b"<script/>var h = '<head>';</script><head>", b"</script><head>", INJECTED_HEAD),
    (b"<script>x = '</scriptx><head>';</SCRIPT ><head>", b"</SCRIPT ><head>", INJECTED_HEAD),
    # and without <head> or <body>, "the start" is after the doctype (before it, the page would be in quirks mode).
    (b"<!doctype html><meta charset=utf-8><title>t</title><p>hi", b"<!doctype html>", INJECTED_START),
    (b"<!-- c --><!DOCTYPE html>\n<p>hi", b"<!DOCTYPE html>", INJECTED_START),
    (b"<p>x</p><!doctype html><p>late doctype", b"", INJECTED_START),
]


@pytest.mark.parametrize(("page", "after", "outcome"), CASES)
def test_the_tag_goes_where_the_contract_says(page, after, outcome):
    out, got = run([page])
    assert got == outcome
    at = page.find(after) + len(after) if after else 0
    assert out == page[:at] + TAG + page[at:]


@pytest.mark.parametrize(("page", "after", "outcome"), CASES)
def test_a_split_at_any_byte_changes_nothing(page, after, outcome):
    whole, _ = run([page])
    for cut in range(len(page) + 1):
        assert run([page[:cut], page[cut:]]) == (whole, outcome), cut
    assert run([bytes([b]) for b in page]) == (whole, outcome)  # one byte a chunk


def test_a_late_head_is_found_across_many_chunks():
    page = b"<!doctype html>" + b"<!--" + b"x" * 20000 + b"-->" + b"<html>\n" * 100 + b"<head><meta charset=utf-8>"
    chunks = [page[i:i + 997] for i in range(0, len(page), 997)]
    out, outcome = run(chunks)
    assert outcome == INJECTED_HEAD and out == page.replace(b"<head>", b"<head>" + TAG)


@pytest.mark.parametrize("page", [
    b'<html><head><script src="/_halo/t.js" async></script></head>',
    b'<html><head><title>t</title><SCRIPT SRC="/_HALO/T.JS"></SCRIPT>',
    b'<script src="/_halo/t.js"></script><html><body>',
])
def test_a_page_that_already_carries_the_tag_is_untouched(page):
    assert run([page]) == (page, ALREADY_TAGGED)
    assert run([bytes([b]) for b in page]) == (page, ALREADY_TAGGED)


@pytest.mark.parametrize("bom", [b"\xff\xfe", b"\xfe\xff"])
def test_a_utf16_page_is_untouched(bom):
    page = bom + "<html><head>".encode("utf-16-le")
    assert run([page]) == (page, NOT_ASCII_COMPATIBLE)


def test_a_utf8_bom_and_other_ascii_compatible_charsets_are_injected():
    page = b"\xef\xbb\xbf<html><head><title>" + "Příliš žluťoučký".encode("iso-8859-2") + b"</title>"
    out, outcome = run([page])
    assert outcome == INJECTED_HEAD and out == page.replace(b"<head>", b"<head>" + TAG)


def test_nothing_is_held_back_past_the_lookahead():
    injector = Injector(TAG, MARKER, lookahead=1000)
    assert injector.feed(b"x" * 999) == b""
    out = injector.feed(b"y" * 10)
    assert injector.outcome == INJECTED_START and out == TAG + b"x" * 999 + b"y" * 10
    assert injector.feed(b"<head>") == b"<head>"  # decided: everything streams through unchanged


def test_a_head_still_open_is_injected_once_the_lookahead_passes():
    injector = Injector(TAG, MARKER, lookahead=100)
    assert injector.feed(b"<head>" + b"m" * 50) == b""  # waiting to see whether the tag is already there
    out = injector.feed(b"m" * 60)
    assert out == b"<head>" + TAG + b"m" * 110 and injector.outcome == INJECTED_HEAD


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}
DECODERS = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress}
PAGE = b"<!doctype html><html><head><title>shop</title></head><body>" + b"<p>item</p>" * 3000 + b"</body></html>"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
def test_each_coding_is_decoded_injected_and_encoded_again(coding, chunk):
    body = ENCODERS[coding](PAGE)
    recoder = Recoder(coding, Injector(TAG, MARKER))
    parts = [recoder.feed(body[i:i + chunk]) for i in range(0, len(body), chunk)]
    out = b"".join(parts) + recoder.finish()
    assert DECODERS[coding](out) == PAGE.replace(b"<head>", b"<head>" + TAG)


def test_raw_deflate_as_some_servers_send_it_is_read():
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = raw.compress(PAGE) + raw.flush()
    recoder = Recoder("deflate", Injector(TAG, MARKER))
    out = recoder.feed(body) + recoder.finish()
    assert zlib.decompress(out) == PAGE.replace(b"<head>", b"<head>" + TAG)


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_broken_body_is_a_decode_error(coding):
    recoder = Recoder(coding, Injector(TAG, MARKER))
    with pytest.raises(DecodeError):
        recoder.feed(b"this is not compressed at all" * 10)


def test_a_20_mb_page_streams_with_flat_memory():
    chunk = b"<div>" + b"x" * 16378 + b"</div>"  # 16 KiB
    recoder = Recoder("gzip", Injector(TAG, MARKER))
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # the upstream's gzip stream, flushed per chunk
    tracemalloc.start()
    try:
        sent = len(recoder.feed(compressor.compress(b"<html><head>") + compressor.flush(zlib.Z_SYNC_FLUSH)))
        baseline = None
        for i in range(1280):  # 20 MiB of page
            sent += len(recoder.feed(compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)))
            if i == 10:
                baseline = tracemalloc.get_traced_memory()[0]
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent > 0 and recoder.injector.outcome == INJECTED_HEAD
    assert baseline is not None and current - baseline < 1 << 20  # nothing accumulates
    assert peak < 8 << 20  # far below the page's size


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_compression_bomb_is_decoded_in_bounded_pieces_and_stopped(coding):
    page = b"<html><head>" + b"\0" * (64 << 20)  # 64 MiB from about 64 KiB (gzip) or a few hundred bytes (br)
    bomb = gzip.compress(page) if coding == "gzip" else brotli.compress(page, quality=1)
    recoder = Recoder(coding, Injector(TAG, MARKER))
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            for i in range(0, len(bomb), 8192):
                recoder.feed(bomb[i:i + 8192])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert MAX_DECODED < recoder.decoded <= MAX_DECODED + 2 * DECODE_PIECE
    with pytest.raises(TooLarge):
        Recoder(coding, Injector(TAG, MARKER)).feed_all(bomb)


def test_a_gzip_page_of_several_members_is_decoded_whole():
    page = b"<html><head><title>t</title></head><body>first-"
    rest = b"SECOND-MEMBER</body></html>"
    two = gzip.compress(page) + gzip.compress(rest)
    expected = (page + rest).replace(b"<head>", b"<head>" + TAG)
    assert gzip.decompress(Recoder("gzip", Injector(TAG, MARKER)).feed_all(two)) == expected
    streamed = Recoder("gzip", Injector(TAG, MARKER))
    out = b"".join(streamed.feed(two[i:i + 7]) for i in range(0, len(two), 7)) + streamed.finish()
    assert gzip.decompress(out) == expected


@pytest.mark.parametrize(("policies", "allowed", "nonce"), [
    ([], True, None),
    (["default-src 'self'"], True, None),
    (["script-src 'self' https://cdn.example"], True, None),
    (["script-src 'nonce-abc123' 'strict-dynamic'"], True, "abc123"),
    (["default-src 'none'; script-src 'nonce-r4nd0m=='"], True, "r4nd0m=="),
    (["script-src 'strict-dynamic' https:"], False, None),  # 'strict-dynamic' ignores host sources
    (["script-src 'nonce-a1'", "script-src 'nonce-b2'"], False, None),  # no nonce satisfies both policies
    (["script-src 'nonce-a1' 'nonce-c3'", "script-src 'nonce-c3'"], True, "c3"),
    (["script-src https://cdn.example"], False, None),
    (["default-src 'none'"], False, None),
    (["img-src *"], True, None),  # no script directive: scripts are not restricted
    (["script-src 'self'", "script-src https://cdn.example"], False, None),  # every policy must allow it
    (["script-src-elem 'self'; script-src 'none'"], True, None),
])
def test_csp_decides_whether_the_script_may_load_and_with_which_nonce(policies, allowed, nonce):
    assert csp_allows(policies) == (allowed, nonce)


HTML = [("Content-Type", "text/html; charset=utf-8")]


@pytest.mark.parametrize(("method", "page_view", "ranged", "status", "headers", "expected"), [
    ("HEAD", True, False, 200, HTML, "method"),
    ("POST", True, False, 200, HTML, "method"),
    ("GET", False, False, 200, HTML, "not_page_view"),
    ("GET", True, False, 204, HTML, "status"),
    ("GET", True, False, 206, HTML, "status"),
    ("GET", True, False, 304, HTML, "status"),
    ("GET", True, False, 101, HTML, "status"),
    ("GET", True, True, 200, HTML, "range"),
    ("GET", True, False, 200, [("Content-Type", "application/json")], "not_html"),
    ("GET", True, False, 200, [("Content-Type", "text/html-sandboxed")], "not_html"),
    ("GET", True, False, 200, [], "not_html"),
    ("GET", True, False, 200, HTML + [("Cache-Control", "public, No-Transform")], "no_transform"),
    ("GET", True, False, 200, HTML + [("Content-Encoding", "zstd")], "coding"),
    ("GET", True, False, 200, HTML + [("Content-Encoding", "gzip, br")], "coding"),
    ("GET", True, False, 200, HTML + [("Content-Security-Policy", "script-src https://cdn.example")], "csp"),
])
def test_answers_left_untouched_say_why(method, page_view, ranged, status, headers, expected):
    assert plan_injection(method, page_view, ranged, status, headers) == expected


def test_a_planned_answer_loses_its_length_and_digests_and_its_etag_turns_weak():
    headers = HTML + [("Content-Length", "1234"), ("ETag", '"abc"'), ("Content-Encoding", "GZIP"),
                      ("Repr-Digest", "sha-256=:x:"), ("Set-Cookie", "a=b"),
                      ("Content-Security-Policy", "script-src 'nonce-n0nce' 'strict-dynamic'")]
    plan = plan_injection("GET", True, False, 404, headers)  # an HTML error page is a page too
    assert isinstance(plan, Plan) and (plan.coding, plan.nonce) == ("gzip", "n0nce")
    assert plan.headers == [("Content-Type", "text/html; charset=utf-8"), ("ETag", 'W/"abc"'),
                            ("Content-Encoding", "GZIP"), ("Set-Cookie", "a=b"),
                            ("Content-Security-Policy", "script-src 'nonce-n0nce' 'strict-dynamic'")]
    weak = plan_injection("GET", True, False, 200, HTML + [("ETag", 'W/"x"'), ("Content-Encoding", "identity")])
    assert isinstance(weak, Plan) and weak.coding is None and weak.headers[1] == ("ETag", 'W/"x"')


def test_the_tag_is_ascii_and_carries_the_nonce():
    assert script_tag("/_halo") == TAG
    assert script_tag("/_t", "abc+/=") == b'<script src="/_t/t.js" async nonce="abc+/="></script>'


def test_the_script_named_after_the_head_does_not_count_as_the_tag_however_the_page_is_chunked():
    page = (b"<html><head><title>Docs</title></HEAD><body><p>Load <code>/_halo/t.js</code> yourself?</p>"
            b"<SCRIPT src=/_halo/T.JS></SCRIPT></body></html>")
    expected = page.replace(b"<head>", b"<head>" + TAG, 1)
    assert run([page]) == (expected, INJECTED_HEAD)
    for cut in range(1, len(page)):
        assert run([page[:cut], page[cut:]]) == (expected, INJECTED_HEAD), cut
    tagged = b"<html><head><SCRIPT SRC='/_HALO/T.JS'></script></head><body>x</body></html>"
    assert run([tagged]) == (tagged, ALREADY_TAGGED)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_a_whole_page_through_feed_all_equals_the_streamed_result(coding):
    page = b"<!doctype html><html><head><title>x</title></head><body>" + b"<p>row</p>" * 3000 + b"</body></html>"
    encoded = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[coding](page)
    whole = Recoder(coding, Injector(TAG, MARKER))
    decode = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress}[coding]
    assert decode(whole.feed_all(encoded)) == page.replace(b"<head>", b"<head>" + TAG, 1)
    assert whole.injector.outcome == INJECTED_HEAD
    streamed = Recoder(coding, Injector(TAG, MARKER))
    out = b"".join(streamed.feed(encoded[i:i + 100]) for i in range(0, len(encoded), 100)) + streamed.finish()
    assert decode(out) == page.replace(b"<head>", b"<head>" + TAG, 1)


def test_a_page_fed_a_byte_at_a_time_resumes_its_searches():
    # A long comment and a long script arrive two bytes at a time: each search resumes where it stopped (this
    # fails the call-count bound if every chunk re-searched from the start).
    page = b"<!--" + b"c" * 30000 + b"--><script>" + b"s" * 30000 + b"</script><head>"
    injector = Injector(TAG, MARKER)
    out = b"".join(injector.feed(page[i:i + 2]) for i in range(0, len(page), 2)) + injector.finish()
    assert injector.outcome == INJECTED_HEAD and out == page.replace(b"<head>", b"<head>" + TAG)
    assert injector._waiting is None


def test_injected_pages_are_kept_by_their_exact_bytes_and_bounded():
    pages = InjectedPages(max_bytes=1000, max_entry=300)
    page = b"<html><head>" + b"x" * 100
    assert pages.get(TAG, None, page) is None
    pages.put(TAG, None, page, b"out", INJECTED_HEAD)
    assert pages.get(TAG, None, page) == (b"out", INJECTED_HEAD)
    assert pages.get(TAG, None, page + b" ") is None  # one byte more: another page
    assert pages.get(TAG, "gzip", page) is None and pages.get(TAG + b" ", None, page) is None
    pages.put(TAG, None, b"y" * 301, b"big", INJECTED_HEAD)  # over max_entry: not kept
    assert pages.get(TAG, None, b"y" * 301) is None
    for i in range(20):  # each entry about 120 bytes: the oldest go, the total stays under max_bytes
        pages.put(TAG, None, b"%03d" % i + page, b"o", INJECTED_HEAD)
    assert pages._bytes <= 1000 and len(pages) < 10
    assert pages.get(TAG, None, page) is None and pages.get(TAG, None, b"019" + page) is not None
