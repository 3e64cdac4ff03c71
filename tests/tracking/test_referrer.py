import pytest

from halo_proxy.tracking.referrer import Referrer, parse_referrer
from halo_proxy.tracking.sources import classify_host, source_category

TENANT_HOSTS = ("acme.localhost", "*.acme.example", "shop.acme.cz:8443")


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        pytest.param(
            "https://www.google.com/", Referrer("google.com", "https://www.google.com/", "search", "google"), id="google"
        ),
        pytest.param(
            "https://www.google.co.uk/", Referrer("google.co.uk", "https://www.google.co.uk/", "search", "google"),
            id="google-country-two-labels",
        ),
        pytest.param(
            "https://www.google.de/search?q=boty", Referrer("google.de", "https://www.google.de/search",
                                                            "search", "google"),
            id="google-country",
        ),
        pytest.param(
            "android-app://com.google.android.googlequicksearchbox/https/www.google.com",
            Referrer("com.google.android.googlequicksearchbox",
                     "android-app://com.google.android.googlequicksearchbox/https/www.google.com", "search", "google"),
            id="google-app",
        ),
        pytest.param("https://www.bing.com/", Referrer("bing.com", "https://www.bing.com/", "search", "bing"), id="bing"),
        pytest.param(
            "https://duckduckgo.com/", Referrer("duckduckgo.com", "https://duckduckgo.com/", "search", "duckduckgo"),
            id="duckduckgo",
        ),
        pytest.param(
            "https://search.seznam.cz/?q=x", Referrer("search.seznam.cz", "https://search.seznam.cz/", "search",
                                                      "seznam"),
            id="seznam",
        ),
        pytest.param(
            "https://yandex.com.tr/", Referrer("yandex.com.tr", "https://yandex.com.tr/", "search", "yandex"),
            id="yandex-tr",
        ),
        pytest.param(
            "https://l.facebook.com/l.php?u=x", Referrer("l.facebook.com", "https://l.facebook.com/l.php", "social",
                                                          "facebook"),
            id="facebook-link-shim",
        ),
        pytest.param(
            "https://l.instagram.com/", Referrer("l.instagram.com", "https://l.instagram.com/", "social", "instagram"),
            id="instagram",
        ),
        pytest.param("https://t.co/abc", Referrer("t.co", "https://t.co/abc", "social", "twitter"), id="t.co"),
        pytest.param("https://x.com/", Referrer("x.com", "https://x.com/", "social", "x"), id="x.com"),
        pytest.param(
            "https://www.linkedin.com/", Referrer("linkedin.com", "https://www.linkedin.com/", "social", "linkedin"),
            id="linkedin",
        ),
        pytest.param(
            "https://cz.pinterest.com/", Referrer("cz.pinterest.com", "https://cz.pinterest.com/", "social",
                                                  "pinterest"),
            id="pinterest-subdomain",
        ),
        pytest.param(
            "https://m.youtube.com/watch?v=1", Referrer("m.youtube.com", "https://m.youtube.com/watch", "video",
                                                         "youtube"),
            id="youtube",
        ),
        pytest.param(
            "https://mail.google.com/", Referrer("mail.google.com", "https://mail.google.com/", "email", "gmail"),
            id="gmail-beats-google",
        ),
        pytest.param(
            "https://www.amazon.de/dp/1", Referrer("amazon.de", "https://www.amazon.de/dp/1", "shopping", "amazon"),
            id="amazon",
        ),
        pytest.param(
            "https://chatgpt.com/", Referrer("chatgpt.com", "https://chatgpt.com/", "other", None), id="ai-assistant"
        ),
        pytest.param(
            "http://Blog.Example.ORG:8080/post#frag",
            Referrer("blog.example.org", "http://blog.example.org/post", "other", None),
            id="other-host-lowercased-port-fragment-dropped",
        ),
        pytest.param(
            "https://mail.example.net/inbox?to=jan@example.cz&tel=%2B420777123456",
            Referrer("mail.example.net", "https://mail.example.net/inbox", "other", None),
            id="query-with-personal-data-dropped",
        ),
        pytest.param(
            "https://user:secret@crm.example.net/contacts/jan.novak@example.cz/+420%20777%20123%20456",
            Referrer("crm.example.net", "https://crm.example.net/contacts/[email]/[phone]", "other", None),
            id="userinfo-dropped-email-in-path-redacted",
        ),
        pytest.param(
            "https://crm.example.net/people/+420 777 123 456/edit",
            Referrer("crm.example.net", "https://crm.example.net/people/[phone]/edit", "other", None),
            id="phone-in-path-redacted",
        ),
        pytest.param(
            "https://google.example.com/", Referrer("google.example.com", "https://google.example.com/", "other", None),
            id="brand-not-at-tld",
        ),
        pytest.param(
            "https://notgoogle.com/", Referrer("notgoogle.com", "https://notgoogle.com/", "other", None),
            id="label-boundary",
        ),
    ],
)
def test_external_referrers(referer, expected):
    assert parse_referrer(referer, "acme.localhost", TENANT_HOSTS) == expected


@pytest.mark.parametrize(
    ("referer", "request_host"),
    [
        pytest.param("https://acme.localhost/cart", "acme.localhost", id="same-host"),
        pytest.param("https://ACME.localhost:8080/", "acme.localhost:8080", id="same-host-port-case"),
        pytest.param("https://www.shop.test/", "shop.test", id="www-of-request-host"),
        pytest.param("https://shop.test/", "www.shop.test", id="request-host-has-www"),
        pytest.param("https://blog.acme.example/post", "acme.localhost", id="tenant-wildcard"),
        pytest.param("https://a.b.acme.example/", "acme.localhost", id="tenant-wildcard-deep"),
        pytest.param("https://shop.acme.cz/", "acme.localhost", id="tenant-host-with-port"),
        pytest.param("https://acme.localhost/", None, id="tenant-host-without-request-host"),
    ],
)
def test_self_referrals_are_ignored(referer, request_host):
    assert parse_referrer(referer, request_host, TENANT_HOSTS) is None


def test_wildcard_does_not_cover_lookalike():
    found = parse_referrer("https://evilacme.example/", "acme.localhost", TENANT_HOSTS)
    assert found is not None and found.domain == "evilacme.example"


@pytest.mark.parametrize(
    "referer",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("not a url", id="text"),
        pytest.param("/relative/path", id="relative"),
        pytest.param("ftp://files.example.com/", id="ftp"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("https://", id="no-host"),
        pytest.param("https://[::1", id="broken-ipv6"),
        pytest.param("https://exa mple.com/", id="space-in-host"),
        pytest.param("https://example.com/\r\nX-Injected: 1", id="control-characters"),
        pytest.param("https://ex<ample>.com/", id="bad-host-characters"),
    ],
)
def test_garbage_is_no_referrer(referer):
    assert parse_referrer(referer, "acme.localhost", TENANT_HOSTS) is None


def test_long_referrer_url_is_capped():
    found = parse_referrer("https://example.com/" + "a" * 5000, "acme.localhost")
    assert found is not None and len(found.url) == 1024


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("google.com.br", ("search", "google")),
        ("images.google.com", ("search", "google")),
        ("mail.yandex.ru", ("email", "yandex mail")),
        ("search.yahoo.co.jp", ("search", "yahoo")),
        ("news.yahoo.com", ("other", None)),
        ("ebay.co.uk", ("shopping", "ebay")),
        ("localhost", ("other", None)),
    ],
)
def test_classify_host(host, expected):
    assert classify_host(host) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("google", "search"),
        ("Google", "search"),
        ("fb", "social"),
        ("ig", "social"),
        ("l.facebook.com", "social"),
        ("www.youtube.com", "video"),
        ("amazon", "shopping"),
        ("newsletter", None),
        ("example.com", None),
        ("", None),
        (None, None),
    ],
)
def test_source_category(source, expected):
    assert source_category(source) == expected
