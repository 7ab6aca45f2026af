"""Client addresses as the login defences see them: canonical form, and what counts as one client."""
from __future__ import annotations

import ipaddress

# An IPv6 client is given a /64 (RFC 6177) and may use any address in it: the per-address
# defences count the /64 as one client.
IPV6_CLIENT_PREFIX = 64


def client_ip(ip: str | None) -> str | None:
    """The address in canonical form (IPv4-mapped IPv6 as IPv4, no zone), or None if unparsable."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(str(ip).strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def address_group(ip: str | None) -> str | None:
    """What per-address defences count as one client: an IPv4 address, or an IPv6 /64."""
    address = client_ip(ip)
    if address is None or ":" not in address:
        return address
    return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
