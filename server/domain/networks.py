"""Address allowlists: the networks a key may be used from.

IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) and networks are treated
as the IPv4 they carry: a dual-stack proxy reports IPv4 clients that way, and
an allowlist of IPv4 networks must still match them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED_PREFIX = 96


def parse_client_ip(text: str) -> Address:
    """The address in ``text``, IPv4-mapped IPv6 as IPv4. Raises
    ``ValueError`` when it is not an IPv4 or IPv6 address."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_address(text: str) -> bool:
    """Whether ``parse_client_ip`` takes ``text``."""
    try:
        parse_client_ip(text)
    except ValueError:
        return False
    return True


def parse_network(text: str) -> Network:
    """The network in ``text`` (``10.0.0.0/8``, ``2001:db8::/32``, or one
    address), IPv4-mapped IPv6 as IPv4. Raises ``ValueError`` when it is not
    a network or has bits set past its prefix."""
    network = ipaddress.ip_network(text, strict=True)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= _MAPPED_PREFIX:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED_PREFIX))
    return network


class NetworkSet:
    """A key's allowlist, parsed once and asked on every check."""

    __slots__ = ("_networks",)

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(parse_network(cidr) for cidr in cidrs)

    def __contains__(self, address: Address | None) -> bool:
        if address is None:
            return False
        # Comparing across versions is False, never an error.
        return any(address in network for network in self._networks)
