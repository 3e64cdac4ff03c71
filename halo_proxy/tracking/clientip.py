"""The client's IP address behind trusted reverse proxies, from the socket peer and X-Forwarded-For."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (or bare addresses) as networks; raises ValueError on a bad entry (a configuration error)."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def parse_ip(value: str | None) -> IPAddress | None:
    """An address from `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`, with
    IPv4-mapped IPv6 reduced to IPv4. None for anything else (`unknown`, obfuscated ids, hostnames)."""
    if not value:
        return None
    value = value.strip().strip('"')
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in trusted)


def client_ip(peer: str | None, xff: str | None, trusted: tuple[IPNetwork, ...]) -> str | None:
    """The client address, as a canonical string.

    A peer outside `trusted` is the client, and X-Forwarded-For is ignored (anyone can send it). Behind a trusted
    peer, X-Forwarded-For is walked from the right past trusted hops; the first untrusted entry is the client, and
    when every entry is trusted the leftmost one is. An entry that is not an IP address ends the walk with None:
    the hop that wrote it is trusted, but what it vouched for is unusable, and the proxy's own address would be wrong.
    """
    address = parse_ip(peer)
    if address is None:
        return None
    if not trusted or not _trusted(address, trusted):
        return str(address)
    if not xff or not xff.strip():
        return str(address)
    for entry in reversed(xff.split(",")):
        hop = parse_ip(entry)
        if hop is None:
            return None
        address = hop
        if not _trusted(hop, trusted):
            break
    return str(address)
