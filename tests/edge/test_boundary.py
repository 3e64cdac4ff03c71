"""The trust boundary's pure rules (edge/boundary.py): tables of inputs and decisions, then hypothesis for the
properties that must hold for any input (never an exception, never a forwarded path that an origin reads as
one under the reserved prefix)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_proxy.edge.boundary import (
    GUARDED_REQUEST_HEADERS,
    Host,
    content_length,
    local_path,
    normalise_path,
    parse_host,
    parse_url,
    reaches_prefix,
    underscore_alias,
)

FUZZ = settings(max_examples=400, deadline=None, derandomize=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("shop.example", Host("shop.example", None)),
        ("SHOP.Example.:8080", Host("shop.example", 8080)),
        ("shop.example:", Host("shop.example", None)),  # RFC 3986: port = *DIGIT, may be empty
        ("127.0.0.1:80", Host("127.0.0.1", 80)),
        ("[::1]:8080", Host("[::1]", 8080)),
        ("[0:0::1]", Host("[::1]", None)),
        ("under_score.example", Host("under_score.example", None)),
        ("shop.example:1@evil.com", None),
        ("shop.example:abc", None),
        ("shop.example:99999", None),
        ("shop.example:123456", None),
        ("shop example", None),
        ("shop.example ", None),
        ("", None),
        (None, None),
        ("user@shop.example", None),
        ("shop.example/evil", None),
        ("shop..example", None),
        (".shop.example", None),
        ("[::1", None),
        ("[not-ip]", None),
        ("shop.example,evil.com", None),
        ("%73hop.example", None),
        ("shop.example\\evil", None),
    ],
)
def test_parse_host(value, expected):
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    ("value", "host", "rest"),
    [
        ("https://shop.example/thanks?x=1", "shop.example", "/thanks?x=1"),
        ("HTTP://Shop.Example:8080", "shop.example", ""),
        ("https://shop.example?x", "shop.example", "?x"),
    ],
)
def test_parse_url_accepts(value, host, rest):
    url = parse_url(value)
    assert url is not None and url.host.name == host and url.rest == rest


@pytest.mark.parametrize("value", [
    "http://shop.example:1@evil.com/", "http://shop.example@evil.com/", "http://evil.com\\@shop.example/",
    "http://shop.example\\.evil.com/", "https://shop.ex\tample/", "javascript:alert(1)", "//evil.com/",
    "ftp://shop.example/", "https:///path", "https://shop.example:99999/", "http://[::1/", "",
    "https://shop.example/\n", None,
])
def test_parse_url_refuses(value):
    assert parse_url(value) is None


@pytest.mark.parametrize(("value", "ok"), [
    ("/", True), ("/thanks?x=1", True), ("//evil.com", False), ("/\\evil.com", False), ("/\tx", False),
    ("thanks", False), ("", False), (None, False), ("/a\\b", False),
])
def test_local_path(value, ok):
    assert local_path(value) is ok


@pytest.mark.parametrize("path", [
    "/_halo", "/_halo/", "/_halo/healthz", "/x/../_halo/healthz", "/%2e%2e/_halo/healthz", "//_halo/healthz",
    "/./_halo/healthz", "/_halo%2Fhealthz", "/_halo;x/healthz", "/_HALO/healthz", "/_halo\\healthz",
    "/%5Fhalo/healthz", "/_hal%6F/healthz", "/%255Fhalo/x", "/_halo./x", "/_halo%20/x", "/a/b/../../_halo",
    "/..;/_halo/x", "/.%2e/_halo/x", "/x/..;/_halo/healthz", "/x/..;jsessionid=1/_halo/webhook/lead",
    "/x/y/..;/..;/_halo/identify", "/x/..%3B/_halo/healthz", "/x/..%20/_halo", "/x/..%2520/_halo", "/x/.../_halo",
])
def test_paths_that_reach_the_prefix(path):
    assert reaches_prefix(path, "/_halo")


@pytest.mark.parametrize("path", [
    "/", "/_halogen/page", "/a/_halo", "/shop/_halo/x", "/%41bc", "/x/./y", "/a//b", "/style.css",
    "/_hal", "/x%2F..%2Fy", "/a;b/c",
])
def test_paths_that_do_not(path):
    assert not reaches_prefix(path, "/_halo")


def test_normalise_path():
    assert normalise_path("/A/./b//c/../%44;x/") == "/a/b/d/"
    assert normalise_path("/../../x") == "/x"


@pytest.mark.parametrize(("name", "dropped"), [
    ("x_forwarded_for", True), ("x-forwarded_for", True), ("x_forwarded_host", True), ("x_forwarded_proto", True),
    ("transfer_encoding", True), ("content_length", True), ("x_real_ip", True), ("host", False),
    ("x_custom_thing", False), ("x-forwarded-for", False),  # the dashed one is replaced, not dropped here
])
def test_underscore_alias(name, dropped):
    assert underscore_alias(name) is dropped


@pytest.mark.parametrize(("value", "expected"), [
    ("5", 5), ("0005", 5), ("0", 0), (" 7 ", 7), ("18446744073709551615", None), ("+5", None), ("-1", None),
    ("5 5", None), ("0x5", None), ("", None), ("٥", None), ("1e3", None),
])
def test_content_length(value, expected):
    assert content_length(value) == expected


# ---------------------------------------------------------------------------------------------------------
# Properties.

@FUZZ
@given(st.text(max_size=80))
def test_parse_host_never_raises_and_round_trips(value):
    host = parse_host(value)
    if host is not None:
        text = host.name + (f":{host.port}" if host.port is not None else "")
        assert parse_host(text) == host
        assert "@" not in host.name and "/" not in host.name


@FUZZ
@given(st.text(max_size=120))
def test_parse_url_never_raises(value):
    url = parse_url(value)
    if url is not None:
        assert url.scheme in ("http", "https")
        assert "@" not in url.host.name


_PATH_ALPHABET = st.sampled_from(list("/._;\\%2eEfF5haloHALO ") + ["%2e", "%2f", "%5f", "%25", "..", "_halo"])


@FUZZ
@given(st.lists(_PATH_ALPHABET, max_size=16).map("".join))
def test_a_path_the_fast_check_forwards_never_normalises_into_the_prefix(tail):
    path = "/" + tail
    normal = normalise_path(path)
    into = normal == "/_halo" or normal.startswith("/_halo/")
    assert reaches_prefix(path, "/_halo") is into


@FUZZ
@given(st.text(max_size=60))
def test_normalise_path_never_raises(value):
    out = normalise_path("/" + value)
    assert out.startswith("/")
    assert "/../" not in out and "//" not in out


@FUZZ
@given(st.sampled_from(sorted(GUARDED_REQUEST_HEADERS)), st.lists(st.booleans(), min_size=30, max_size=30),
       st.lists(st.booleans(), min_size=30, max_size=30))
def test_any_mix_of_underscores_and_case_in_a_guarded_name_is_caught(name, underscores, upper):
    spelled = "".join(("_" if underscores[i % 30] else c) if c == "-" else (c.upper() if upper[i % 30] else c)
                      for i, c in enumerate(name))
    lname = spelled.lower()
    assert underscore_alias(lname) is ("_" in lname)


@FUZZ
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=30))
def test_a_name_is_dropped_only_when_it_spells_a_guarded_header(lname):
    assert underscore_alias(lname) is ("_" in lname and lname.replace("_", "-") in GUARDED_REQUEST_HEADERS)
