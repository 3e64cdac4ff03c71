"""Built-in table of traffic sources: which hosts and source names are search, social, video, email or shopping.

A compact subset of Google's GA4 source-category list and the Snowplow referer-parser data (reference, section 2.3),
enough for the sources that bring nearly all traffic. Hosts are matched on whole labels from the right, so
`l.facebook.com` and `m.facebook.com` match `facebook.com`; brands marked with a `*` TLD (`google.*`) match any country
domain (`google.de`, `google.co.uk`, `google.com.br`).
"""

from __future__ import annotations

import re
from functools import lru_cache

SEARCH = "search"
SOCIAL = "social"
VIDEO = "video"
EMAIL = "email"
SHOPPING = "shopping"
OTHER = "other"

CATEGORIES: frozenset[str] = frozenset({SEARCH, SOCIAL, VIDEO, EMAIL, SHOPPING, OTHER})

# host (or host suffix) -> (category, source name). More specific hosts must be listed even when a shorter suffix
# exists with another category (mail.google.com vs google.*): the longest match wins.
_HOSTS: dict[str, tuple[str, str]] = {
    # search
    "bing.com": (SEARCH, "bing"),
    "search.yahoo.com": (SEARCH, "yahoo"),
    "search.yahoo.co.jp": (SEARCH, "yahoo"),
    "duckduckgo.com": (SEARCH, "duckduckgo"),
    "baidu.com": (SEARCH, "baidu"),
    "search.naver.com": (SEARCH, "naver"),
    "sogou.com": (SEARCH, "sogou"),
    "ecosia.org": (SEARCH, "ecosia"),
    "search.brave.com": (SEARCH, "brave"),
    "qwant.com": (SEARCH, "qwant"),
    "search.seznam.cz": (SEARCH, "seznam"),
    "search.daum.net": (SEARCH, "daum"),
    "coccoc.com": (SEARCH, "coccoc"),
    "so.com": (SEARCH, "360.cn"),
    "so.360.cn": (SEARCH, "360.cn"),
    "m.sm.cn": (SEARCH, "sm.cn"),
    "search.aol.com": (SEARCH, "aol"),
    "ask.com": (SEARCH, "ask"),
    "go.mail.ru": (SEARCH, "mail.ru"),
    "msn.com": (SEARCH, "msn"),
    "startpage.com": (SEARCH, "startpage"),
    "com.google.android.googlequicksearchbox": (SEARCH, "google"),
    # social
    "facebook.com": (SOCIAL, "facebook"),
    "fb.me": (SOCIAL, "facebook"),
    "instagram.com": (SOCIAL, "instagram"),
    "threads.net": (SOCIAL, "threads"),
    "threads.com": (SOCIAL, "threads"),
    "t.co": (SOCIAL, "twitter"),
    "twitter.com": (SOCIAL, "twitter"),
    "x.com": (SOCIAL, "x"),
    "go.bsky.app": (SOCIAL, "bluesky"),
    "bsky.app": (SOCIAL, "bluesky"),
    "linkedin.com": (SOCIAL, "linkedin"),
    "lnkd.in": (SOCIAL, "linkedin"),
    "reddit.com": (SOCIAL, "reddit"),
    "news.ycombinator.com": (SOCIAL, "hacker news"),
    "tiktok.com": (SOCIAL, "tiktok"),
    "snapchat.com": (SOCIAL, "snapchat"),
    "tumblr.com": (SOCIAL, "tumblr"),
    "quora.com": (SOCIAL, "quora"),
    "vk.com": (SOCIAL, "vk"),
    "ok.ru": (SOCIAL, "ok.ru"),
    "weibo.com": (SOCIAL, "weibo"),
    "t.cn": (SOCIAL, "weibo"),
    "web.whatsapp.com": (SOCIAL, "whatsapp"),
    "web.telegram.org": (SOCIAL, "telegram"),
    "t.me": (SOCIAL, "telegram"),
    "app.slack.com": (SOCIAL, "slack"),
    "messenger.com": (SOCIAL, "messenger"),
    "discord.com": (SOCIAL, "discord"),
    "mastodon.social": (SOCIAL, "mastodon"),
    # video
    "youtube.com": (VIDEO, "youtube"),
    "youtu.be": (VIDEO, "youtube"),
    "vimeo.com": (VIDEO, "vimeo"),
    "twitch.tv": (VIDEO, "twitch"),
    "dailymotion.com": (VIDEO, "dailymotion"),
    "netflix.com": (VIDEO, "netflix"),
    "ted.com": (VIDEO, "ted"),
    # email (web mail front ends)
    "mail.google.com": (EMAIL, "gmail"),
    "com.google.android.gm": (EMAIL, "gmail"),
    "outlook.live.com": (EMAIL, "outlook"),
    "outlook.office.com": (EMAIL, "outlook"),
    "outlook.office365.com": (EMAIL, "outlook"),
    "mail.live.com": (EMAIL, "outlook"),
    "mail.yahoo.com": (EMAIL, "yahoo mail"),
    "mail.proton.me": (EMAIL, "proton mail"),
    "e.mail.ru": (EMAIL, "mail.ru"),
    "deref-web.de": (EMAIL, "web.de"),
    "email.seznam.cz": (EMAIL, "seznam mail"),
    # shopping
    "etsy.com": (SHOPPING, "etsy"),
    "walmart.com": (SHOPPING, "walmart"),
    "shopping.naver.com": (SHOPPING, "naver shopping"),
    "checkout.shopify.com": (SHOPPING, "shopify"),
    "shop.app": (SHOPPING, "shop.app"),
}

# Brands that exist under many country domains: leading labels -> (category, name). `google` matches google.com,
# google.de, google.co.uk, google.com.br; `mail.yandex` matches mail.yandex.ru.
_BRANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("google",): (SEARCH, "google"),
    ("yandex",): (SEARCH, "yandex"),
    ("mail", "google"): (EMAIL, "gmail"),
    ("mail", "yandex"): (EMAIL, "yandex mail"),
    ("deref-gmx",): (EMAIL, "gmx"),
    ("pinterest",): (SOCIAL, "pinterest"),
    ("amazon",): (SHOPPING, "amazon"),
    ("ebay",): (SHOPPING, "ebay"),
}

# Public-suffix-like tails accepted after a brand: one or two short alphabetic labels (com, de, co.uk, com.br).
_TLD_LABEL = re.compile(r"[a-z]{2,3}")

# Bare source names as they appear in utm_source (GA4 lists both names and hosts).
_NAMES: dict[str, str] = {
    **{n: SEARCH for n in (
        "google", "bing", "yahoo", "duckduckgo", "baidu", "yandex", "naver", "sogou", "ecosia", "brave", "qwant",
        "seznam", "daum", "coccoc", "ask", "aol", "msn", "startpage", "so.com", "360.cn", "sm.cn", "mail.ru",
    )},
    **{n: SOCIAL for n in (
        "facebook", "fb", "meta", "instagram", "ig", "threads", "twitter", "x", "bluesky", "linkedin", "reddit",
        "tiktok", "snapchat", "pinterest", "tumblr", "quora", "vk", "ok.ru", "weibo", "whatsapp", "telegram",
        "slack", "messenger", "discord", "mastodon", "hacker news", "line", "wechat",
    )},
    **{n: VIDEO for n in ("youtube", "vimeo", "twitch", "dailymotion", "netflix", "ted")},
    **{n: SHOPPING for n in (
        "amazon", "ebay", "etsy", "walmart", "shopify", "shop.app", "google shopping", "igshopping", "naver shopping",
    )},
    **{n: EMAIL for n in ("gmail", "outlook", "yahoo mail", "proton mail", "web.de", "gmx", "yandex mail")},
}


def _brand_match(labels: list[str]) -> tuple[str, str] | None:
    for size in (1, 2):
        if len(labels) <= size:
            break
        hit = _BRANDS.get(tuple(labels[:size]))
        if hit is None:
            continue
        tail = labels[size:]
        if 1 <= len(tail) <= 2 and all(_TLD_LABEL.fullmatch(label) for label in tail):
            return hit
    return None


@lru_cache(maxsize=2048)
def classify_host(host: str) -> tuple[str, str | None]:
    """Category and source name of a lowercased host (no port), e.g. ("search", "google") or ("other", None).

    Tries the whole host, then drops leading labels one by one, so the most specific entry wins.
    """
    labels = host.strip(".").split(".")
    for start in range(len(labels)):
        tail = labels[start:]
        hit = _HOSTS.get(".".join(tail)) or _brand_match(tail)
        if hit is not None:
            return hit
    return OTHER, None


def source_category(source: str | None) -> str | None:
    """Category of a utm_source-style value: a bare name (`google`, `fb`, `ig`) or a host (`l.facebook.com`).

    Returns None when the source is unknown, which the channel rules read as "not in any list".
    """
    if not source:
        return None
    value = source.strip().lower()
    named = _NAMES.get(value)
    if named is not None:
        return named
    if value.startswith("www."):
        value = value[4:]
    if "." not in value or " " in value:
        return None
    category, _name = classify_host(value)
    return None if category == OTHER else category
