"""Which addresses are outside: private, shared, loopback and link-local ones are inside."""

from __future__ import annotations

import functools
import ipaddress

# Not `is_global`: that also excludes the documentation ranges (203.0.113.0/24, …) that examples and
# exercises use as attackers; what is never external is a private, shared, loopback or link-local one.
_INTERNAL = tuple(
    ipaddress.ip_network(n)
    for n in [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Answers kept per address: the same few addresses come back in alert after alert (an analysis asks
# some 37 times), and parsing each and testing it against every network is work done again and again.
# Bounded, as any value may be asked about.
CACHED_ADDRESSES = 4096


def unmapped(address: Address) -> Address:
    """An IPv4 address written as IPv6 (``::ffff:10.0.0.5``, as dual-stack listeners log it) as itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _address(value: str) -> Address | None:
    try:
        return unmapped(ipaddress.ip_address(value))
    except ValueError:
        return None


@functools.lru_cache(maxsize=CACHED_ADDRESSES)
def _place(value: str) -> bool | None:
    """True for an address outside, False for one inside, None for no address or a multicast or unspecified one."""
    address = _address(value)
    if address is None or address.is_multicast or address.is_unspecified:
        return None
    return not any(address.version == n.version and address in n for n in _INTERNAL)


def is_external(value: str) -> bool:
    """An address outside the organisation's networks (not a name, not multicast or unspecified)."""
    return _place(value) is True


def is_internal(value: str) -> bool:
    """An address inside the organisation's networks (not a name, not multicast or unspecified)."""
    return _place(value) is False
