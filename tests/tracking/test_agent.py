"""Bots and devices from the User-Agent header."""

import pytest

from halo_proxy.tracking.agent import agent_cache_info, classify_agent
from halo_proxy.tracking.bots import is_bot
from halo_proxy.tracking.device import parse_device
from halo_proxy.tracking.models import Device

CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile "
    "Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1"
)
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15"
)
FACEBOOK_IN_APP = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 "
    "[FBAN/FBIOS;FBAV/460.0.0.38.109;FBBV/590000000;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.4;FBSS/3;FBLC/cs_CZ]"
)
CUBOT_PHONE = (
    "Mozilla/5.0 (Linux; Android 13; Cubot KingKong 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Mobile Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        pytest.param(CHROME_ANDROID, Device("mobile", "Chrome Mobile", "Android"), id="chrome-android"),
        pytest.param(SAFARI_IPHONE, Device("mobile", "Mobile Safari", "iOS"), id="safari-iphone"),
        pytest.param(SAFARI_IPAD, Device("tablet", "Mobile Safari", "iOS"), id="safari-ipad"),
        pytest.param(CHROME_WINDOWS, Device("desktop", "Chrome", "Windows"), id="chrome-windows"),
        pytest.param(FIREFOX_LINUX, Device("desktop", "Firefox", "Ubuntu"), id="firefox-linux"),
        pytest.param(SAFARI_MAC, Device("desktop", "Safari", "Mac OS X"), id="safari-mac"),
        pytest.param(FACEBOOK_IN_APP, Device("mobile", "Facebook", "iOS"), id="facebook-in-app-browser"),
        pytest.param(CUBOT_PHONE, Device("mobile", "Chrome Mobile", "Android"), id="cubot-phone-not-a-bot"),
        pytest.param("Googlebot/2.1 (+http://www.google.com/bot.html)", Device("other", None, None), id="bot"),
        pytest.param("", Device("other", None, None), id="empty"),
        pytest.param("SomethingUnknown/1.0", Device("other", None, None), id="unknown"),
    ],
)
def test_parse_device(user_agent, expected):
    assert parse_device(user_agent) == expected


HUMANS = [CHROME_ANDROID, SAFARI_IPHONE, SAFARI_IPAD, CHROME_WINDOWS, FIREFOX_LINUX, SAFARI_MAC, FACEBOOK_IN_APP,
          CUBOT_PHONE]

BOTS = {
    # caught by user-agents itself
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot-smartphone": (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.6367.201 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    ),
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    # HTTP libraries
    "curl": "curl/8.5.0",
    "wget": "Wget/1.21.4",
    "python-requests": "python-requests/2.32.3",
    "python-httpx": "python-httpx/0.27.0",
    "aiohttp": "Python/3.12 aiohttp/3.9.5",
    "go": "Go-http-client/2.0",
    "okhttp": "okhttp/4.12.0",
    # headless browsers and audits
    "headless-chrome": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 "
        "Safari/537.36"
    ),
    "lighthouse": (
        "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse"
    ),
    "webpagetest": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36 PTST/240501.123456"
    ),
    "gtmetrix": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 "
        "GTmetrix"
    ),
    # monitors
    "datadog": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 DatadogSynthetics",
    "newrelic": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 NewRelicSynthetics/1",
    "checkly": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Checkly/2.0",
    "site24x7": "Site24x7",
    "uptimerobot": "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "statuscake": "Mozilla/5.0 (compatible; StatusCake)",
    "betteruptime": "Better Uptime Bot Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)",
    "hetrix": "Mozilla/5.0 (compatible; HetrixTools Uptime Monitoring Bot. https://hetrix.tools/)",
    "uptime-kuma": "Uptime-Kuma/1.23.11",
    "pingdom": "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
    # link unfurlers
    "slackbot": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit": "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "imessage-preview": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1 "
        "Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0"
    ),
    "twitterbot": "Twitterbot/1.0",
    "whatsapp": "WhatsApp/2.23.20.0 A",
    "telegram": "TelegramBot (like TwitterBot)",
    "discord": "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "linkedin": "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "skype": (
        "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com"
    ),
    "embedly": "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
    "iframely": "Iframely/1.3.1 (+https://iframely.com/docs/about)",
    "redditbot": "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
    "pinterest": "Pinterest/0.2 (+https://www.pinterest.com/bot.html)",
    "vercel": "Vercelbot/0.1 (+https://vercel.com)",
    # AI assistants and crawlers
    "gptbot": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "chatgpt-user": (
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; +https://openai.com/bot"
    ),
    "oai-searchbot": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; OAI-SearchBot/1.0",
    "claude-user": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Claude-User/1.0)",
    "claudebot": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)",
    "perplexitybot": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; PerplexityBot/1.0)",
    "perplexity-user": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Perplexity-User/1.0)",
    "bytespider": "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
    "amazonbot": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_1) AppleWebKit/600.2.5 (KHTML, like Gecko) Version/8.0.2 Safari/600.2.5 (Amazonbot/0.1; +https://developer.amazon.com/support/amazonbot)",
    "ccbot": "CCBot/2.0 (https://commoncrawl.org/faq/)",
    "meta-externalagent": "meta-externalagent/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)",
    "applebot": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 "
        "Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)"
    ),
    # nothing at all
    "empty": "",
    "blank": "   ",
}


@pytest.mark.parametrize("user_agent", [pytest.param(v, id=k) for k, v in BOTS.items()])
def test_bots(user_agent):
    assert is_bot(user_agent) is True


def test_missing_user_agent_is_a_bot():
    assert is_bot(None) is True


@pytest.mark.parametrize("user_agent", HUMANS)
def test_browsers_are_not_bots(user_agent):
    assert is_bot(user_agent) is False


def test_one_cached_parse_serves_bot_check_and_device():
    ua = CHROME_WINDOWS + " unique-for-cache-test"
    before = agent_cache_info()
    assert is_bot(ua) is False
    assert parse_device(ua).device_type == "desktop"
    after = agent_cache_info()
    assert after.misses - before.misses == 1
    assert after.hits - before.hits == 1
    assert after.maxsize is not None


def test_long_user_agents_share_a_cache_entry():
    base = CHROME_WINDOWS + " " + "x" * 2000
    assert classify_agent(base + "a") is classify_agent(base + "b")
