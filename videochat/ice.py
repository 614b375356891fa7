"""Which local addresses the server offers as ICE host candidates.

aioice gathers on every interface and never offers 127.0.0.1 (RFC 8445). A fixed list fixes
both: multi-NIC servers stop gathering over slow interfaces (streamlit-webrtc #1976), and
loopback calls (tests, one-machine demos) become possible with `127.0.0.1`.
Patched once, process-wide, at aioice's `get_host_addresses` (aioice 0.13.0).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

import aioice.ice

logger = logging.getLogger(__name__)

_original = aioice.ice.get_host_addresses
_restricted: tuple[str, ...] = ()


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer only these addresses (empty: aioice's own discovery)."""
    global _restricted
    _restricted = tuple(str(ipaddress.ip_address(a)) for a in addresses)
    if not _restricted:
        aioice.ice.get_host_addresses = _original
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        out = []
        for addr in _restricted:
            version = ipaddress.ip_address(addr).version
            if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
                out.append(addr)
        return out

    aioice.ice.get_host_addresses = get_host_addresses
    logger.info("ICE host candidates restricted to %s", ", ".join(_restricted))


def restricted_addresses() -> tuple[str, ...]:
    return _restricted
