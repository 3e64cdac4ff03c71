import pytest
from multidict import CIMultiDict

from halo_proxy.tracking.visit import SKIP_REASONS, skip_reason

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
NAV_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def navigation(**extra):
    headers = CIMultiDict(
        {
            "User-Agent": CHROME,
            "Accept": NAV_ACCEPT,
            "Sec-Fetch-Dest": "document",
            "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Site": "none",
            "Sec-Fetch-User": "?1",
        }
    )
    for name, value in extra.items():
        name = name.replace("_", "-")
        if value is None:
            headers.popall(name, None)
        else:
            headers[name] = value
    return headers


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        pytest.param("GET", "/", navigation(), None, id="navigation"),
        pytest.param("GET", "/products/shoe.html", navigation(), None, id="html-page"),
        pytest.param("GET", "/landing", navigation(Sec_Fetch_Site="cross-site", Sec_Fetch_User=None), None,
                     id="cross-site-navigation"),
        pytest.param(
            "GET", "/", navigation(Sec_Fetch_Dest=None, Sec_Fetch_Mode=None, Sec_Fetch_Site=None, Sec_Fetch_User=None),
            None, id="old-browser-html-accept",
        ),
        pytest.param("HEAD", "/", navigation(), "method", id="head"),
        pytest.param("POST", "/checkout", navigation(), "method", id="post"),
        pytest.param("OPTIONS", "/", navigation(), "method", id="options"),
        pytest.param("GET", "/_halo/t.js", navigation(), "reserved", id="reserved-script"),
        pytest.param("GET", "/_halo", navigation(), "reserved", id="reserved-root"),
        pytest.param("GET", "/_halox/page", navigation(), None, id="prefix-lookalike-is-a-page"),
        pytest.param("GET", "/static/app.js", navigation(), "asset", id="asset-js"),
        pytest.param("GET", "/img/Logo.PNG", navigation(), "asset", id="asset-uppercase"),
        pytest.param("GET", "/favicon.ico", navigation(Sec_Fetch_Dest="image"), "asset", id="favicon"),
        pytest.param("GET", "/robots.txt", navigation(), "asset", id="robots"),
        pytest.param("GET", "/v1.2/docs", navigation(), None, id="dot-in-directory"),
        pytest.param("GET", "/", navigation(Sec_Purpose="prefetch"), "prefetch", id="sec-purpose-prefetch"),
        pytest.param("GET", "/", navigation(Sec_Purpose="prefetch;prerender"), "prefetch", id="prerender"),
        pytest.param("GET", "/", navigation(Sec_Purpose="prefetch;anonymous-client-ip"), "prefetch",
                     id="prefetch-anonymous-ip"),
        pytest.param("GET", "/", navigation(Purpose="prefetch", Sec_Fetch_Dest=None), "prefetch", id="purpose"),
        pytest.param("GET", "/", navigation(X_moz="prefetch"), "prefetch", id="x-moz"),
        pytest.param("GET", "/", navigation(X_Purpose="preview"), "prefetch", id="safari-preview"),
        pytest.param("GET", "/", navigation(Sec_Fetch_Dest="iframe"), "not_document", id="iframe"),
        pytest.param("GET", "/api/cart", navigation(Sec_Fetch_Dest="empty", Sec_Fetch_Mode="cors"), "not_document",
                     id="fetch-xhr"),
        pytest.param("GET", "/", navigation(Sec_Fetch_Dest="image"), "not_document", id="image"),
        pytest.param("GET", "/", navigation(Sec_Fetch_Dest="DOCUMENT"), None, id="dest-case-insensitive"),
        pytest.param("GET", "/", navigation(Sec_Fetch_Dest=None, Accept="application/json"), "not_document",
                     id="json-accept-no-fetch-metadata"),
        pytest.param("GET", "/", navigation(Sec_Fetch_Dest=None, Accept=None), "not_document", id="no-accept"),
        pytest.param("GET", "/", navigation(Accept="application/json"), None, id="fetch-metadata-wins-over-accept"),
        pytest.param("GET", "/", navigation(User_Agent="curl/8.5.0"), "bot", id="curl"),
        pytest.param("GET", "/", navigation(User_Agent=None), "bot", id="no-user-agent"),
        pytest.param("GET", "/", navigation(User_Agent="Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"),
                     "bot", id="unfurler"),
        pytest.param("GET", "/app.js", navigation(User_Agent="curl/8.5.0"), "asset", id="asset-checked-before-bot"),
        pytest.param("HEAD", "/_halo/healthz", navigation(User_Agent="curl/8.5.0"), "method",
                     id="method-checked-first"),
    ],
)
def test_skip_reason(method, path, headers, expected):
    assert skip_reason(method, path, headers, "/_halo") == expected
    assert expected is None or expected in SKIP_REASONS


def test_reserved_prefix_with_trailing_slash():
    assert skip_reason("GET", "/_t/x", navigation(), "/_t/") == "reserved"


def test_plain_dict_headers_with_lowercase_names():
    assert skip_reason("GET", "/", {"sec-fetch-dest": "document", "user-agent": CHROME}, "/_halo") is None
