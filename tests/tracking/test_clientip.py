import pytest

from halo_proxy.tracking.clientip import client_ip, parse_ip, parse_networks

TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1", "fd00::/8", "2001:db8:ed9e::/48"])


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        pytest.param("203.0.113.7", None, TRUSTED, "203.0.113.7", id="direct-no-xff"),
        pytest.param("203.0.113.7", "1.2.3.4", TRUSTED, "203.0.113.7", id="untrusted-peer-ignores-xff"),
        pytest.param("203.0.113.7", "1.2.3.4", (), "203.0.113.7", id="no-trusted-proxies"),
        pytest.param("10.0.0.2", "198.51.100.9", TRUSTED, "198.51.100.9", id="one-trusted-hop"),
        pytest.param("10.0.0.2", "198.51.100.9, 10.0.0.5", TRUSTED, "198.51.100.9", id="two-trusted-hops"),
        pytest.param("10.0.0.2", "6.6.6.6, 198.51.100.9, 10.0.0.5", TRUSTED, "198.51.100.9",
                     id="spoofed-leftmost-ignored"),
        pytest.param("10.0.0.2", "10.1.1.1, 10.0.0.5", TRUSTED, "10.1.1.1", id="all-trusted-leftmost"),
        pytest.param("10.0.0.2", "", TRUSTED, "10.0.0.2", id="trusted-peer-empty-xff"),
        pytest.param("10.0.0.2", "198.51.100.9:51234", TRUSTED, "198.51.100.9", id="ipv4-with-port"),
        pytest.param("10.0.0.2", "[2001:db8::17]:4711", TRUSTED, "2001:db8::17", id="ipv6-bracketed-port"),
        pytest.param("10.0.0.2", "2001:DB8::17", TRUSTED, "2001:db8::17", id="ipv6-canonical"),
        pytest.param("fd00::1", "2001:db8:cafe::1, 2001:db8:ed9e::9", TRUSTED, "2001:db8:cafe::1", id="ipv6-chain"),
        pytest.param("::ffff:10.0.0.2", "198.51.100.9", TRUSTED, "198.51.100.9", id="ipv4-mapped-peer"),
        pytest.param("10.0.0.2", "::ffff:198.51.100.9", TRUSTED, "198.51.100.9", id="ipv4-mapped-entry"),
        pytest.param("10.0.0.2", "unknown", TRUSTED, None, id="unknown-entry"),
        pytest.param("10.0.0.2", "198.51.100.9, _hidden", TRUSTED, None, id="obfuscated-entry-stops-walk"),
        pytest.param("10.0.0.2", "garbage, 198.51.100.9", TRUSTED, "198.51.100.9", id="garbage-left-of-client"),
        pytest.param("10.0.0.2", "198.51.100.9,,10.0.0.5", TRUSTED, None, id="empty-entry"),
        pytest.param("10.0.0.2", "example.com", TRUSTED, None, id="hostname-entry"),
        pytest.param(None, "198.51.100.9", TRUSTED, None, id="no-peer"),
        pytest.param("not-an-ip", None, TRUSTED, None, id="bad-peer"),
        pytest.param("127.0.0.1:8080", "198.51.100.9", TRUSTED, "198.51.100.9", id="peer-with-port"),
    ],
)
def test_client_ip(peer, xff, trusted, expected):
    assert client_ip(peer, xff, trusted) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ('"[2001:db8::1]:443"', "2001:db8::1"),
        ("[2001:db8::1", None),
        ("1.2.3.4:80:90", None),
        ("999.1.1.1", None),
        ("", None),
    ],
)
def test_parse_ip(value, expected):
    found = parse_ip(value)
    assert (str(found) if found else None) == expected


def test_parse_networks_rejects_garbage():
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/8", "nope"])
