"""aioice 0.13.0: which local addresses the server offers, STUN retries, a connection's sockets.

Pinned by tests/compat/test_private_names.py.

Which local addresses the server offers as ICE host candidates:

aioice gathers on every interface and never offers 127.0.0.1 (RFC 8445). A fixed list fixes
both: multi-NIC servers stop gathering over slow interfaces (streamlit-webrtc #1976), and
loopback calls (tests, one-machine demos) become possible with `127.0.0.1`.
Patched once, process-wide, at aioice's `get_host_addresses` (aioice 0.13.0).

`cap_stun_retransmissions` changes how often aioice repeats an unanswered STUN request. aioice
doubles the interval (0.5, 1, 2, 4, 8, 16 s): a connection being rebuilt during an outage then
retries its connectivity checks 8-16 s apart, and after the path returns it can sit idle for
seconds before the next check. Capping the interval (same ~31 s total) makes a rebuilt leg
connect within about a second of the path coming back. The doubling lives in the private
`Transaction.__retry` (and `__tries_max`, `__timeout_delay`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

import aioice.ice
import aioice.stun

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


_original_retry = aioice.stun.Transaction._Transaction__retry  # type: ignore[attr-defined]
_original_init = aioice.stun.Transaction.__init__
_TOTAL_S = sum(aioice.stun.RETRY_RTO * 2**i for i in range(aioice.stun.RETRY_MAX))


def cap_stun_retransmissions(cap_s: float | None = 1.0) -> None:
    """Repeat unanswered STUN requests at most `cap_s` apart (None: aioice's own doubling)."""
    if cap_s is None:
        aioice.stun.Transaction._Transaction__retry = _original_retry  # type: ignore[attr-defined]
        aioice.stun.Transaction.__init__ = _original_init  # type: ignore[method-assign]
        return
    cap = float(cap_s)

    def init(self: aioice.stun.Transaction, *args: object, **kwargs: object) -> None:
        _original_init(self, *args, **kwargs)  # type: ignore[arg-type]
        if self._Transaction__tries_max == 1 + aioice.stun.RETRY_MAX:  # type: ignore[attr-defined]
            # Keep the overall time aioice gives a request, spent in shorter steps.
            self._Transaction__tries_max = 1 + max(  # type: ignore[attr-defined]
                aioice.stun.RETRY_MAX, int(_TOTAL_S / cap))
        self._Transaction__timeout_delay = min(  # type: ignore[attr-defined]
            self._Transaction__timeout_delay, cap)  # type: ignore[attr-defined]

    def retry(self: aioice.stun.Transaction) -> None:
        _original_retry(self)
        self._Transaction__timeout_delay = min(  # type: ignore[attr-defined]
            self._Transaction__timeout_delay, cap)  # type: ignore[attr-defined]

    aioice.stun.Transaction.__init__ = init  # type: ignore[method-assign]
    aioice.stun.Transaction._Transaction__retry = retry  # type: ignore[attr-defined]


def connection_protocols(connection: Any) -> list[Any]:
    """The `StunProtocol` of every local candidate of an aioice `Connection` (its datagrams,
    STUN included: the blackout seam of videochat/faults/injector.py)."""
    return list(getattr(connection, "_protocols", []))
