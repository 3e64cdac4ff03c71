"""Form bodies and header parameters (halo_proxy/routes/forms.py): strict, bounded, and never an exception other than
FormError, including on the inputs that made the standard library's parser recurse or crawl."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_proxy.routes.forms import FormError, header_params, media_type, parse_multipart, parse_urlencoded


def part(name: str, value: bytes, *headers: str) -> bytes:
    lines = [f'Content-Disposition: form-data; name="{name}"', *headers]
    return b"--b\r\n" + "\r\n".join(lines).encode() + b"\r\n\r\n" + value + b"\r\n"


@pytest.mark.parametrize(("value", "expected"), [
    ("application/json", "application/json"), ("Application/JSON; charset=utf-8", "application/json"),
    ("application/json; " + "(" * 1000, "application/json"), ("text/plain;" + "a=b;" * 4000, ""),
    ("", ""), (None, ""), ("json", ""), ("application/json garbage", ""),
])
def test_media_type(value, expected):
    assert media_type(value) == expected


def test_header_params():
    assert header_params('form-data; name="a\\"b"; filename=x.txt') == ("form-data", {"name": 'a"b',
                                                                                     "filename": "x.txt"})
    with pytest.raises(FormError):
        header_params("form-data; " + "(" * 600)
    with pytest.raises(FormError):
        header_params("form-data; name")


def test_multipart_fields_files_and_charsets():
    body = (part("email", b"m@example.cz") + part("note", "Příliš".encode("cp1250"), "Content-Type: text/plain; "
            "charset=windows-1250") + b'--b\r\nContent-Disposition: form-data; name="f"; filename="x"\r\n\r\nFILE\r\n'
            + b"--b--\r\n")
    assert parse_multipart(body, "multipart/form-data; boundary=b") == {"email": "m@example.cz", "note": "Příliš"}


@pytest.mark.parametrize(("body", "content_type"), [
    (part("a", b"hi", 'Content-Type: text/plain; charset="utf-8\x00"') + b"--b--\r\n", "boundary=b"),
    (part("a", b"hi", "Content-Type: text/plain; charset=undefined") + b"--b--\r\n", "boundary=b"),
    (part("a", b"hi", "Content-Type: text/plain; charset=hex") + b"--b--\r\n", "boundary=b"),
    (part("a", b"\xff\xfe", "") + b"--b--\r\n", "boundary=b"),
    (b'--b\r\nContent-Disposition: form-data; name=email; ' + b"(" * 600 + b"\r\n\r\nv\r\n--b--", "boundary=b"),
    (part("a", b"hi") + b"--b--\r\n", "boundary*=utf-8''b"),
    (part("a", b"hi"), "boundary=b"),  # no closing boundary
    (b"", "boundary=b"),
    (part("a", b"hi") + b"--b--\r\n", "boundary=" + "x" * 71),
    (b"--b\r\nX: " + b"y" * 2000 + b"\r\n\r\nz\r\n--b--\r\n", "boundary=b"),
])
def test_bad_multipart_is_a_form_error(body, content_type):
    with pytest.raises(FormError):
        parse_multipart(body, "multipart/form-data; " + content_type)


def test_thousands_of_parts_parameters_and_nested_multiparts():
    many = b"".join(part(f"f{i}", b"v") for i in range(5000)) + b"--b--\r\n"
    params = b'--b\r\nContent-Disposition: form-data; name="a"' + b"; x=1" * 150 + b"\r\n\r\nv\r\n--b--\r\n"
    assert len(parse_multipart(many, "multipart/form-data; boundary=b")) == 200  # MAX_FIELDS
    assert parse_multipart(params, "multipart/form-data; boundary=b") == {"a": "v"}
    nested = b"--b\r\nContent-Disposition: form-data; name=\"n\"\r\nContent-Type: multipart/mixed; boundary=c\r\n" \
             b"\r\n" + b"--c\r\n" * 1000 + b"\r\n--b--\r\n"
    assert parse_multipart(nested, "multipart/form-data; boundary=b") == {}


def test_urlencoded():
    assert parse_urlencoded(b"a=1&a=2&b=%C3%A9") == {"a": "1", "b": "é"}
    with pytest.raises(FormError):
        parse_urlencoded(b"a=\xff")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=400), st.text(max_size=120))
def test_multipart_never_raises_anything_but_form_error(body, params):
    try:
        parse_multipart(b"--b\r\n" + body, "multipart/form-data; boundary=b; " + params)
    except FormError:
        pass


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_header_params_never_raise_anything_but_form_error(value):
    try:
        header_params(value)
    except FormError:
        pass
    media_type(value)
