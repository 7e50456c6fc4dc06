"""IP addresses: the type Vigil's models hold them as, and which addresses are outside.

``ipaddress`` reads an address octet by octet in Python, and pydantic's address types call it for every
value they validate: an alert, its summary in each incident event and the events' consumers would parse
the same few addresses again and again. ``IPAddress`` validates as pydantic's types do (an address object,
its text, or the integer) and publishes the JSON schema they do; a text met before is not parsed again.

Private, shared, loopback and link-local addresses are inside; the rest are outside.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

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


Address = IPv4Address | IPv6Address
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
        return unmapped(parse_address(value))
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


# ---- the models' type ----------------------------------------------------------------------------

# What ipaddress reads as an IPv4 address: four decimal octets, none above 255, no leading zero.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


@functools.lru_cache(maxsize=65_536)
def parse_address(text: str) -> Address:
    """The address the text is, as ``ipaddress.ip_address`` reads it; ValueError if it is none."""
    if _DOTTED_QUAD.fullmatch(text):
        # The commonest: an IPv4 address as ipaddress writes it, read in C rather than octet by octet.
        return IPv4Address(socket.inet_aton(text))
    return ipaddress.ip_address(text)


def _validate(value: Any) -> Address:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    try:
        if isinstance(value, str):
            return parse_address(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return ipaddress.ip_address(value)
    except ValueError:
        pass
    raise PydanticCustomError("ip_any_address", "value is not a valid IPv4 or IPv6 address")


def _schema(*formats: str) -> WithJsonSchema:
    options = [{"type": "string", "format": f} for f in formats]
    return WithJsonSchema(options[0] if len(options) == 1 else {"anyOf": options})


_VALIDATOR = PlainValidator(_validate)
_SERIALIZER = PlainSerializer(str, when_used="json")

# An IPv4 or IPv6 address, published as either (``anyOf`` the two formats), as a union of the two types is.
IPAddress = Annotated[Address, _VALIDATOR, _SERIALIZER, _schema("ipv4", "ipv6")]
# The same, published as pydantic's ``IPvAnyAddress`` is (one string of format ``ipvanyaddress``).
IPAnyAddress = Annotated[Address, _VALIDATOR, _SERIALIZER, _schema("ipvanyaddress")]
