"""Form bodies of HaloTrack's own routes: media types, urlencoded and multipart/form-data, parsed strictly and
in bounded time.

Written here rather than taken from the standard library: `email`'s header parser (which aiohttp's
`request.content_type` also uses) recurses once per `(` and re-scans parameters, so a Content-Type of a
thousand parentheses is a RecursionError and a few thousand parameters cost a second of the event loop, and
its MIME parser follows nested multiparts. aiohttp's `MultipartReader` reads from a live stream, not from a
body already read, capped and decoded. What a form post needs is small: a boundary, each part's name, filename
and charset, and its bytes.
"""

from __future__ import annotations

import codecs
import re
from urllib.parse import parse_qsl

MAX_HEADER_CHARS = 1024  # a Content-Type or a part header longer than this is refused
MAX_PART_HEADERS = 16
MAX_FIELDS = 200

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'  # a quoted-string: any character but `"` and `\`, or `\` and one character
_PARAM = re.compile(";[ \t]*(" + _TOKEN + ")[ \t]*=[ \t]*(" + _QUOTED + '|[^;"]*)')
_MEDIA = re.compile(rf"[ \t]*({_TOKEN}/{_TOKEN})[ \t]*")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")  # RFC 2046 5.1.1


class FormError(ValueError):
    """The form or header is malformed; `field` names the form field at fault when there is one."""

    def __init__(self, detail: str, field: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """`type/subtype; a=1; b="x y"` -> ("type/subtype", {"a": "1", "b": "x y"}), names lowercased, first
    value of each name kept. Raises FormError on a value too long or not of that shape."""
    if len(value) > MAX_HEADER_CHARS:
        raise FormError("A header is too long.")
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    if rest:
        rest = ";" + rest
        position = 0
        for match in _PARAM.finditer(rest):
            if rest[position:match.start()].strip(" \t"):
                raise FormError("A header's parameters are malformed.")
            name, raw = match.group(1).lower(), match.group(2).strip(" \t")
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params.setdefault(name, raw)
            position = match.end()
        if rest[position:].strip(" \t;"):
            raise FormError("A header's parameters are malformed.")
    return head.strip(" \t").lower(), params


def media_type(value: str | None) -> str:
    """The media type of a Content-Type value, lowercased ("" when absent or malformed)."""
    if not value:
        return ""
    head = value.split(";", 1)[0]
    return head.strip(" \t").lower() if len(value) <= MAX_HEADER_CHARS and _MEDIA.fullmatch(head) else ""


def parse_urlencoded(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as err:
        raise FormError("The form body could not be read.") from err
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    """First value of each text field of a multipart/form-data body (RFC 7578). Files are skipped; nested
    multiparts are not followed; at most MAX_FIELDS parts are read."""
    _, params = header_params(content_type)
    boundary = params.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise FormError("The multipart boundary is missing or invalid.")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) < 2 or not pieces[-1].startswith(b"--"):
        raise FormError("The multipart body does not end with its closing boundary.")
    fields: dict[str, str] = {}
    for count, piece in enumerate(pieces[1:-1]):
        if count >= MAX_FIELDS:
            break
        line_end = piece.find(b"\r\n")
        if line_end == -1 or piece[:line_end].strip(b" \t"):
            raise FormError("A multipart boundary line is malformed.")
        head, sep, content = piece[line_end + 2:].partition(b"\r\n\r\n")
        if not sep:
            if piece[line_end + 2:].startswith(b"\r\n"):  # no headers at all
                head, content = b"", piece[line_end + 4:]
            else:
                raise FormError("A multipart part has no end to its headers.")
        name, filename, charset = _part_headers(head)
        if name is None or filename is not None:
            continue
        try:
            codec = codecs.lookup(charset or "utf-8")
            text = content.decode(codec.name)
        except (LookupError, UnicodeError, ValueError) as err:
            raise FormError(f"The form field {name} is not text.", name) from err
        fields.setdefault(name, text)
    return fields


def _part_headers(head: bytes) -> tuple[str | None, str | None, str | None]:
    lines = head.split(b"\r\n") if head else []
    if len(lines) > MAX_PART_HEADERS:
        raise FormError("A multipart part has too many headers.")
    name = filename = charset = None
    for raw in lines:
        if len(raw) > MAX_HEADER_CHARS:
            raise FormError("A multipart part header is too long.")
        text = raw.decode("utf-8", "replace")
        key, colon, value = text.partition(":")
        if not colon or not re.fullmatch(_TOKEN, key):
            raise FormError("A multipart part header is malformed.")
        key = key.lower()
        if key == "content-disposition":
            kind, params = header_params(value)
            if kind != "form-data":
                raise FormError("A multipart part is not form-data.")
            name, filename = params.get("name"), params.get("filename")
        elif key == "content-type":
            kind, params = header_params(value)
            if kind.startswith("multipart/"):
                return None, None, None  # a nested multipart (files, by RFC 2388): skipped
            charset = params.get("charset")
    return name, filename, charset
