import pytest
from multidict import CIMultiDict

from halo_proxy.tracking.geo import geo_from_headers
from halo_proxy.tracking.models import Geo


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {"x-vercel-ip-country": "CZ", "x-vercel-ip-country-region": "10", "x-vercel-ip-city": "Praha"},
            Geo("CZ", "10", "Praha"),
            id="vercel",
        ),
        pytest.param(
            {"X-Vercel-IP-Country": "DE", "X-Vercel-IP-Country-Region": "BY", "X-Vercel-IP-City": "M%C3%BCnchen"},
            Geo("DE", "BY", "München"),
            id="vercel-percent-encoded-city",
        ),
        pytest.param(
            {"x-vercel-ip-country": "US", "x-vercel-ip-city": "San%20Francisco"},
            Geo("US", None, "San Francisco"),
            id="vercel-no-region",
        ),
        pytest.param(
            {"CF-IPCountry": "gb", "cf-region-code": "ENG", "cf-region": "England", "cf-ipcity": "London"},
            Geo("GB", "ENG", "London"),
            id="cloudflare-code-preferred",
        ),
        pytest.param({"cf-ipcountry": "US", "cf-region": "Texas"}, Geo("US", "Texas", None), id="cloudflare-name"),
        pytest.param({"cf-ipcountry": "XX"}, Geo(), id="cloudflare-unknown"),
        pytest.param({"cf-ipcountry": "T1"}, Geo(), id="cloudflare-tor"),
        pytest.param(
            {"cf-ipcountry": "T1", "x-vercel-ip-country": "NL"},
            Geo("NL"),
            id="cloudflare-tor-falls-through",
        ),
        pytest.param(
            {
                "CloudFront-Viewer-Country": "US",
                "CloudFront-Viewer-Country-Name": "United States",
                "CloudFront-Viewer-Country-Region": "MI",
                "CloudFront-Viewer-City": "Ann Arbor",
            },
            Geo("US", "MI", "Ann Arbor"),
            id="cloudfront",
        ),
        pytest.param(
            {"Fastly-Geo-Country": "fr", "Fastly-Geo-Region": "IDF", "Fastly-Geo-City": "paris"},
            Geo("FR", "IDF", "paris"),
            id="fastly",
        ),
        pytest.param(
            {
                "X-Akamai-Edgescape": "georegion=246,country_code=US,region_code=CA,city=SANFRANCISCO,dma=807,"
                "pmsa=7360,areacode=415,county=SANFRANCISCO,fips=06075,lat=37.7795,long=-122.4195,timezone=PST,"
                "zip=94102-94105+94107-94112,continent=NA,throughput=vhigh,asnum=7922"
            },
            Geo("US", "CA", "SANFRANCISCO"),
            id="akamai",
        ),
        pytest.param({"X-Geo-Country": "SK", "X-Geo-City": "Bratislava"}, Geo("SK", None, "Bratislava"), id="generic"),
        pytest.param(
            {"cf-ipcountry": "CZ", "cf-ipcity": "Brno", "x-vercel-ip-country": "US", "x-vercel-ip-city": "Ashburn"},
            Geo("CZ", None, "Brno"),
            id="cloudflare-before-vercel-never-mixed",
        ),
        pytest.param({"cf-ipcountry": "USA"}, Geo(), id="three-letters"),
        pytest.param({"cf-ipcountry": "1A"}, Geo(), id="digit"),
        pytest.param({"cf-ipcountry": "ČZ"}, Geo(), id="non-ascii"),
        pytest.param(
            {"cf-ipcountry": "CZ", "cf-ipcity": "x" * 500 + "\x00"}, Geo("CZ", None, "x" * 100), id="city-capped"
        ),
        pytest.param({"x-vercel-ip-city": "%E0%A4%A"}, Geo(None, None, "%E0%A4%A"), id="bad-percent-kept-literal"),
        pytest.param({"x-akamai-edgescape": "garbage,,=,"}, Geo(), id="akamai-garbage"),
        pytest.param({}, Geo(), id="none"),
    ],
)
def test_geo_from_headers(headers, expected):
    assert geo_from_headers(CIMultiDict(headers)) == expected


def test_restricting_edges_ignores_other_headers():
    headers = CIMultiDict({"cf-ipcountry": "RU", "x-vercel-ip-country": "CZ"})
    assert geo_from_headers(headers, edges=("vercel",)) == Geo("CZ")
    assert geo_from_headers(headers, edges=("fastly",)) == Geo()
