import pytest

from halo_proxy.tracking.campaign import Campaign
from halo_proxy.tracking.channel import CHANNELS, default_channel, derive_source_medium
from halo_proxy.tracking.referrer import Referrer


@pytest.mark.parametrize(
    ("source", "medium", "campaign", "expected"),
    [
        # one row per channel, in the order of the GA4 table
        pytest.param("(direct)", "(none)", None, "Direct", id="direct"),
        pytest.param("(direct)", "(not set)", None, "Direct", id="direct-not-set"),
        pytest.param("google", "cpc", "pmax-cross-network-spring", "Cross-network", id="cross-network"),
        pytest.param("amazon", "cpc", None, "Paid Shopping", id="paid-shopping-source"),
        pytest.param("newsletter", "ppc", "Shopping-Q4", "Paid Shopping", id="paid-shopping-campaign"),
        pytest.param("google", "cpc", "summer", "Paid Search", id="paid-search"),
        pytest.param("bing", "paidsearch", None, "Paid Search", id="paid-search-paid-prefix"),
        pytest.param("facebook", "cpc", None, "Paid Social", id="paid-social"),
        pytest.param("ig", "retargeting", None, "Paid Social", id="paid-social-retargeting"),
        pytest.param("youtube", "cpv", None, "Paid Video", id="paid-video"),
        pytest.param("dv360", "display", None, "Display", id="display"),
        pytest.param("google", "cpm", None, "Paid Search", id="cpm-with-search-source-is-paid"),
        pytest.param("criteo", "cpm", None, "Display", id="display-cpm"),
        pytest.param("partner", "banner", None, "Display", id="display-banner"),
        pytest.param("partner", "paid", None, "Paid Other", id="paid-other"),
        pytest.param("etsy.com", "referral", None, "Organic Shopping", id="organic-shopping-source"),
        pytest.param("newsletter", "email", "shop-opening", "Organic Shopping", id="organic-shopping-campaign"),
        pytest.param("facebook", "social", None, "Organic Social", id="organic-social"),
        pytest.param("l.facebook.com", "referral", None, "Organic Social", id="organic-social-host"),
        pytest.param("mastodon.example", "social-network", None, "Organic Social", id="organic-social-medium"),
        pytest.param("vimeo", "referral", None, "Organic Video", id="organic-video-source"),
        pytest.param("partner", "video-embed", None, "Organic Video", id="organic-video-medium"),
        pytest.param("google", "organic", None, "Organic Search", id="organic-search"),
        pytest.param("startpage", "referral", None, "Organic Search", id="organic-search-source-only"),
        pytest.param("somewhere", "organic", None, "Organic Search", id="organic-medium"),
        pytest.param("blog.example.org", "referral", None, "Referral", id="referral"),
        pytest.param("partner-app", "app", None, "Referral", id="referral-app"),
        pytest.param("newsletter", "email", None, "Email", id="email-medium"),
        pytest.param("e-mail", "blast", None, "Email", id="email-source"),
        pytest.param("awin", "affiliate", None, "Affiliates", id="affiliates"),
        pytest.param("spotify", "audio", None, "Audio", id="audio"),
        pytest.param("sms", "text", None, "SMS", id="sms-source"),
        pytest.param("twilio", "sms", None, "SMS", id="sms-medium"),
        pytest.param("onesignal", "web-push", None, "Mobile Push Notifications", id="push-suffix"),
        pytest.param("app", "mobile-alert", None, "Mobile Push Notifications", id="push-mobile"),
        pytest.param("firebase", "fcm", None, "Mobile Push Notifications", id="push-firebase"),
        pytest.param("newsletter", "weekly", None, "Unassigned", id="unassigned"),
        pytest.param(None, None, None, "Unassigned", id="nothing"),
        # precedence and case
        pytest.param("GOOGLE", "CPC", None, "Paid Search", id="case-insensitive"),
        pytest.param("(Direct)", "(None)", "summer", "Direct", id="direct-wins-over-campaign"),
        pytest.param("facebook", "cpc", "cross-network", "Cross-network", id="cross-network-before-paid-social"),
        pytest.param("google", "cpc", "workshop-leads", "Paid Search", id="workshop-is-not-shop"),
        pytest.param("google", "cpc", "e-shop", "Paid Shopping", id="dash-shop-is-shop"),
        pytest.param("google", "cpc", "eshop", "Paid Shopping", id="e-before-shop-still-shop"),
        pytest.param("google", "cpc", "bookshop", "Paid Search", id="other-letter-before-shop"),
        pytest.param("facebook", "email", None, "Organic Social", id="social-source-before-email"),
        pytest.param("tiktok", "video", None, "Organic Social", id="social-before-video"),
        pytest.param("youtube", "organic", None, "Organic Video", id="video-before-search"),
        pytest.param("google", "referral", None, "Organic Search", id="search-source-before-referral"),
        pytest.param("partner", "affiliate-cpc", None, "Paid Other", id="cp-anywhere-is-paid"),
        pytest.param("partner", "social", "shopping", "Organic Shopping", id="shopping-before-social"),
    ],
)
def test_default_channel(source, medium, campaign, expected):
    assert default_channel(source, medium, campaign) == expected
    assert expected in CHANNELS


GOOGLE = Referrer("google.com", "https://www.google.com/", "search", "google")
FACEBOOK = Referrer("l.facebook.com", "https://l.facebook.com/", "social", "facebook")
BLOG = Referrer("blog.example.org", "https://blog.example.org/post", "other", None)


@pytest.mark.parametrize(
    ("campaign", "referrer", "expected", "channel"),
    [
        pytest.param(Campaign(source="google", medium="cpc", click_ids=(("gclid", "abc123"),)), None,
                     ("google", "cpc"), "Paid Search", id="utms-win"),
        pytest.param(Campaign(source="newsletter"), GOOGLE, ("newsletter", "(not set)"), "Unassigned",
                     id="utm-source-only"),
        pytest.param(Campaign(medium="email"), None, ("(not set)", "email"), "Email", id="utm-medium-only"),
        pytest.param(Campaign(click_ids=(("gclid", "abc"),)), None, ("google", "cpc"), "Paid Search", id="gclid"),
        pytest.param(Campaign(click_ids=(("gbraid", "a"),)), None, ("google", "cpc"), "Paid Search", id="gbraid"),
        pytest.param(Campaign(click_ids=(("wbraid", "a"),)), None, ("google", "cpc"), "Paid Search", id="wbraid"),
        pytest.param(Campaign(click_ids=(("msclkid", "a"),)), None, ("bing", "cpc"), "Paid Search", id="msclkid"),
        pytest.param(Campaign(click_ids=(("dclid", "a"),)), None, ("dfa", "cpm"), "Display", id="dclid"),
        pytest.param(Campaign(click_ids=(("ttclid", "a"),)), None, ("tiktok", "cpc"), "Paid Social", id="ttclid"),
        pytest.param(Campaign(click_ids=(("li_fat_id", "a"),)), None, ("linkedin", "cpc"), "Paid Social",
                     id="li_fat_id"),
        pytest.param(Campaign(click_ids=(("twclid", "a"),)), None, ("x", "cpc"), "Paid Social", id="twclid"),
        pytest.param(Campaign(click_ids=(("ScCid", "a"),)), None, ("snapchat", "cpc"), "Paid Social", id="ScCid"),
        pytest.param(Campaign(click_ids=(("epik", "a"),)), None, ("pinterest", "cpc"), "Paid Social", id="epik"),
        pytest.param(Campaign(click_ids=(("rdt_cid", "a"),)), None, ("reddit", "cpc"), "Paid Social", id="rdt_cid"),
        pytest.param(Campaign(click_ids=(("fbclid", "a"),)), None, ("facebook", "social"), "Organic Social",
                     id="fbclid-alone-not-paid"),
        pytest.param(Campaign(click_ids=(("fbclid", "a"),)), FACEBOOK, ("l.facebook.com", "referral"),
                     "Organic Social", id="fbclid-with-referrer"),
        pytest.param(Campaign(click_ids=(("fbclid", "a"), ("msclkid", "b"))), None, ("bing", "cpc"), "Paid Search",
                     id="paid-click-id-beats-fbclid"),
        pytest.param(Campaign(click_ids=(("gclid", "a"), ("msclkid", "b"))), None, ("google", "cpc"), "Paid Search",
                     id="gclid-first"),
        pytest.param(Campaign(click_ids=(("gclid", "a"),)), FACEBOOK, ("google", "cpc"), "Paid Search",
                     id="click-id-beats-referrer"),
        pytest.param(Campaign(), GOOGLE, ("google", "organic"), "Organic Search", id="search-referrer"),
        pytest.param(Campaign(), FACEBOOK, ("l.facebook.com", "referral"), "Organic Social", id="social-referrer"),
        pytest.param(Campaign(), BLOG, ("blog.example.org", "referral"), "Referral", id="other-referrer"),
        pytest.param(Campaign(campaign="summer"), None, ("(direct)", "(none)"), "Direct", id="campaign-only"),
        pytest.param(Campaign(), None, ("(direct)", "(none)"), "Direct", id="direct"),
    ],
)
def test_derive_source_medium(campaign, referrer, expected, channel):
    source, medium = derive_source_medium(campaign, referrer)
    assert (source, medium) == expected
    assert default_channel(source, medium, campaign.campaign) == channel
